"""The embedded warehouse: a SQLite file with the ``events`` and ``deliveries`` tables
and the per-channel views (``sqlite:///path/warehouse.db``, the default sink).

Rows come from the loader (``_loader``) like every sink's; times are ISO-8601 text
(which SQLite's date functions read), booleans 0/1.  A write is one transaction:
events upserted by ``event_id``, then the batch's deliveries merged with the rows
already held (read, ``merge_delivery``, replace).

The warehouse keeps every event for good, long after the inbox has pruned it, so it
is the record of what was received: ``delivery_metrics`` answers "did we ever get
this (delivery, metric)?" for ``reconcile``.  A real event that arrives after
``reconcile --backfill`` stored a stand-in for the same (delivery, metric) gets its
own row: both are kept, told apart by ``backfilled``, and the reports count the pair
once, from the real event (see ``reports``).  ``deliveries`` shows the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .._exceptions import SinkError, StoreUnavailable
from ..store.sqlite import connect_readonly
from ._contract import Batch
from ._rows import (
    CHANNEL_VIEWS,
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    KEEP_ALL,
    Column,
    DeliveryRow,
    Privacy,
    merge_delivery,
)
from ._url import SinkURL

__all__ = ["SQLiteWarehouse", "from_url"]

T = TypeVar("T")

#: Rows one write takes, and seconds between writes while events keep coming.  At the
#: full ingest rate 0.1 s gave both more requests/s and a third of the lag of 0.5 s
#: (docs/benchmarks.md, issue 8): smaller batches hold the receiver up for less.
BATCH_SIZE = 5000
INTERVAL = 0.1


def _sql_type(column: Column) -> str:
    return "INTEGER" if column.kind == "bool" else "TEXT"


def _table(name: str, columns: Sequence[Column]) -> str:
    key = columns[0].name
    body = ", ".join(
        f"{c.name} TEXT PRIMARY KEY" if c.name == key else f"{c.name} {_sql_type(c)}"
        for c in columns
    )
    return f"CREATE TABLE IF NOT EXISTS {name} ({body})"


def _upsert(name: str, columns: Sequence[Column]) -> str:
    names = [c.name for c in columns]
    updates = ", ".join(f"{n} = excluded.{n}" for n in names[1:])
    return (
        f"INSERT INTO {name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        f" ON CONFLICT ({names[0]}) DO UPDATE SET {updates}"
    )


class SQLiteWarehouse:
    """The warehouse file ``path``: a ``Sink``, and a reader for ``reconcile``.

    ``prefix`` goes before every table and view name.  ``reader`` opens an existing
    file for lookups only (``delivery_metrics``)."""

    def __init__(
        self,
        path: str | Path,
        *,
        name: str = "sqlite",
        privacy: Privacy = KEEP_ALL,
        prefix: str = "",
        batch_size: int = BATCH_SIZE,
        interval: float = INTERVAL,
    ) -> None:
        self.path = Path(path)
        self.name = name
        self.url = f"sqlite://{self.path}" if self.path.is_absolute() else f"sqlite:{self.path}"
        self.privacy = privacy
        self.prefix = prefix
        self.batch_size = batch_size
        self.interval = interval
        self.read_only = False
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._events = f"{prefix}events"
        self._deliveries = f"{prefix}deliveries"
        self._insert_events = _upsert(self._events, EVENT_COLUMNS)
        self._insert_deliveries = _upsert(self._deliveries, DELIVERY_COLUMNS)

    @classmethod
    def reader(cls, path: str | Path) -> SQLiteWarehouse:
        """The existing warehouse ``path``, opened read-only: nothing is created, upgraded
        or written, and a missing file is ``StoreUnavailable`` on first use."""
        warehouse = cls(path)
        warehouse.read_only = True
        return warehouse

    def _schema(self, conn: sqlite3.Connection) -> None:
        conn.execute(_table(self._events, EVENT_COLUMNS))
        # A warehouse made by an older version gains the columns added since.
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({self._events})")}
        for column in EVENT_COLUMNS:
            if column.name not in present:
                conn.execute(
                    f"ALTER TABLE {self._events} ADD COLUMN {column.name} {_sql_type(column)}"
                )
        conn.execute(_table(self._deliveries, DELIVERY_COLUMNS))
        p = self.prefix
        conn.execute(f"CREATE INDEX IF NOT EXISTS {p}events_occurred ON {p}events (occurred_at)")
        conn.execute(f"CREATE INDEX IF NOT EXISTS {p}events_delivery ON {p}events (delivery_id)")
        for view, object_type in CHANNEL_VIEWS.items():
            conn.execute(
                f"CREATE VIEW IF NOT EXISTS {p}{view} AS SELECT * FROM {p}events"
                f" WHERE object_type = '{object_type}'"
            )
        # The cursor lives in the store now; the old loader's table is left alone.

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None and self.read_only:
            # Creates no file, not even a -wal or -shm beside it (see connect_readonly).
            self._conn = connect_readonly(self.path)
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")  # rebuildable from the store
                conn.execute("PRAGMA busy_timeout=10000")
                conn.execute("BEGIN IMMEDIATE")
                self._schema(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    async def open(self) -> None:
        await self._call(lambda: self._connect() and None, sink=True)

    async def write(self, batch: Batch) -> None:
        def run() -> None:
            with self._lock:
                conn = self._connect()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(self._insert_events, batch.events)  # bools bind as 0/1
                    held = self._held_deliveries(conn, [d[0] for d in batch.deliveries])
                    merged = [
                        merge_delivery(held[d[0]], d) if d[0] in held else d
                        for d in batch.deliveries
                    ]
                    conn.executemany(self._insert_deliveries, merged)
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise

        await self._call(run, sink=True)

    def _held_deliveries(
        self, conn: sqlite3.Connection, ids: Sequence[str]
    ) -> dict[str, DeliveryRow]:
        held: dict[str, DeliveryRow] = {}
        names = ", ".join(c.name for c in DELIVERY_COLUMNS)
        # In slices: SQLite caps the number of parameters of one statement.
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            for row in conn.execute(
                f"SELECT {names} FROM {self._deliveries}"
                f" WHERE delivery_id IN ({','.join('?' * len(part))})",
                part,
            ):
                held[row[0]] = tuple(row)
        return held

    async def rows(self, table: str = "events") -> list[tuple[Any, ...]]:
        """Every row of ``events`` or ``deliveries``, in its columns' order (tests,
        small exports)."""
        columns = EVENT_COLUMNS if table == "events" else DELIVERY_COLUMNS
        names = ", ".join(c.name for c in columns)

        def run() -> list[tuple[Any, ...]]:
            with self._lock:
                return [
                    tuple(r)
                    for r in self._connect().execute(
                        f"SELECT {names} FROM {self.prefix}{table} ORDER BY 1"
                    )
                ]

        return await self._call(run)

    async def delivery_metrics(self, delivery_ids: Collection[str]) -> set[tuple[str, str]]:
        """``(delivery_id, metric)`` of every row, real or backfilled, for these deliveries
        (none while the warehouse has never been loaded)."""
        ids = list(dict.fromkeys(delivery_ids))

        def run() -> set[tuple[str, str]]:
            found: set[tuple[str, str]] = set()
            with self._lock:
                conn = self._connect()
                # `serve --no-dispatch` leaves an empty file until a worker loads it.
                if not conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                    (self._events,),
                ).fetchone():
                    return found
                for start in range(0, len(ids), 500):
                    part = ids[start : start + 500]
                    found.update(
                        (str(delivery), str(metric))
                        for delivery, metric in conn.execute(
                            f"SELECT DISTINCT delivery_id, metric FROM {self._events}"
                            f" WHERE delivery_id IN ({','.join('?' * len(part))})",
                            part,
                        )
                    )
            return found

        return await self._call(run)

    async def _call(self, fn: Callable[[], T], *, sink: bool = False) -> T:
        try:
            return await asyncio.to_thread(fn)
        except sqlite3.Error as exc:
            error = SinkError if sink else StoreUnavailable
            raise error(f"warehouse {self.path}: {exc}") from exc
        except OSError as exc:  # the directory cannot be made
            raise SinkError(f"warehouse {self.path}: {exc}") from exc

    async def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def from_url(url: SinkURL) -> SQLiteWarehouse:
    return SQLiteWarehouse(url.path, name=url.name, privacy=url.privacy, prefix=url.table_prefix)
