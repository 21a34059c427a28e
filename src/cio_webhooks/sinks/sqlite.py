"""The embedded warehouse: a SQLite file with one normalised ``events`` row per event.

``load`` follows a store in one of two ways, chosen when the warehouse is made
(``SQLiteWarehouse.following`` picks for a store):

- the fast path, ``inbox=`` a SQLite inbox file: one ``INSERT ... SELECT`` over the
  attached file, so the normalisation (``_SELECT``, SQLite's JSON functions) runs
  in C without holding the GIL: the receiver in the same process keeps its CPU.
  ``_SELECT`` must give exactly what ``events.normalise`` gives; a test checks it
  on every sample.
- the generic path, ``source=`` any store (``Operations``, PostgreSQL included):
  it reads ``iter_events`` after its cursor, parses each body in Python and hands
  the events to ``write``.  The contract's ``seq`` cursor never skips an event,
  so resuming after the last ``seq`` seen misses nothing.

``write`` takes already parsed events; it is idempotent and moves the cursor in
the same transaction as the rows.

The warehouse keeps every event for good, long after the inbox has pruned it, so it
is the record of what was received: ``delivery_metrics`` answers "did we ever get
this (delivery, metric)?" for ``reconcile``.  A real event that arrives after
``reconcile --backfill`` stored a stand-in for the same (delivery, metric) gets its
own row: both are kept, told apart by ``backfilled``, and the reports count the
pair once, from the real event (see ``reports``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TypeVar

from .._exceptions import InvalidEvent, StoreUnavailable
from ..events import NORMALISED_FIELDS, Event, iso, normalise, parse_event
from ..store import EventFilter, Operations, Store, parse_store_url
from ..store.sqlite import connect_readonly

__all__ = ["SQLiteWarehouse"]

log = logging.getLogger("cio_webhooks.sinks")

T = TypeVar("T")

_COLUMNS = (*NORMALISED_FIELDS, "loaded_at")
_BOOLEAN = {"prefetched", "proxied", "synthetic", "machine", "backfilled"}
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS events ("
    + ", ".join(
        f"{c} TEXT PRIMARY KEY"
        if c == "event_id"
        else f"{c} INTEGER"
        if c in _BOOLEAN
        else f"{c} TEXT"
        for c in _COLUMNS
    )
    + ");\n"
    "CREATE TABLE IF NOT EXISTS loader_state (id INTEGER PRIMARY KEY CHECK (id = 1),"
    " inbox_seq INTEGER NOT NULL);\n"
)
INDEXES = (
    "CREATE INDEX IF NOT EXISTS events_occurred ON events (occurred_at);\n"
    "CREATE INDEX IF NOT EXISTS events_delivery ON events (delivery_id);\n"
)
_INSERT = (
    f"INSERT INTO events ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
    " ON CONFLICT (event_id) DO NOTHING"
)
_SAVE_CURSOR = (
    "INSERT INTO loader_state (id, inbox_seq) VALUES (1, ?)"
    " ON CONFLICT (id) DO UPDATE SET inbox_seq = excluded.inbox_seq"
)


def _text(path: str) -> str:
    """A JSON id as text: numbers and strings alike, '' as NULL (like ``events._text``)."""
    return f"NULLIF(CAST(json_extract(e.body, '$.{path}') AS TEXT), '')"


def _iso(expr: str) -> str:
    return f"strftime('%Y-%m-%dT%H:%M:%fZ', {expr}, 'unixepoch')"


# Column for column, the SQL twin of events.normalise().
_SELECT = ", ".join(
    [
        "e.event_id",
        "e.object_type",
        "e.metric",
        _iso("e.occurred_at"),
        _iso("e.received_at"),
        f"COALESCE({_text('data.identifiers.id')}, {_text('data.customer_id')})",
        "COALESCE(NULLIF(json_extract(e.body, '$.data.identifiers.email'), ''),"
        " NULLIF(json_extract(e.body, '$.data.email_address'), ''))",
        _text("data.identifiers.cio_id"),
        "json_extract(e.body, '$.data.delivery_id')",
        _text("data.campaign_id"),
        _text("data.action_id"),
        _text("data.broadcast_id"),
        _text("data.newsletter_id"),
        _text("data.transactional_message_id"),
        _text("data.journey_id"),
        "json_extract(e.body, '$.data.recipient')",
        "json_extract(e.body, '$.data.subject')",
        "json_extract(e.body, '$.data.href')",
        _text("data.link_id"),
        "json_extract(e.body, '$.data.failure_message')",
        "json_extract(e.body, '$.data.prefetched')",
        "json_extract(e.body, '$.data.proxied')",
        "json_extract(e.body, '$.data.synthetic')",
        "json_extract(e.body, '$.data.machine')",
        "e.backfilled",
        _iso("?"),  # loaded_at
    ]
)
_LOAD = (
    f"INSERT OR IGNORE INTO events ({', '.join(_COLUMNS)}) SELECT {_SELECT}"
    " FROM inbox.events AS e WHERE e.seq > ? AND e.seq <= ? ORDER BY e.seq"
)


class SQLiteWarehouse:
    """Normalised events in SQLite.  ``received_at``/``loaded_at`` give the ingest lag.

    What ``load`` and ``run`` copy from: ``inbox``, a SQLite inbox file (the fast
    path, attached), else ``source``, any store read through the contract (the
    generic path).  Give ``inbox`` only when it is the file of the store the
    service runs on; ``following`` decides for a store.  ``reader`` makes one for
    lookups only (``delivery_metrics``).

    ``run`` loads every ``poll_interval`` while events trickle in, and every
    ``busy_interval`` once a load finds ``busy_rows`` or more (sustained ingest): a
    load's cost is mostly per transaction (the pages of the warehouse's indexes it
    rewrites, the commit), so under load bigger, rarer batches take about half the CPU
    per row that the receiver in the same process needs, for up to ``busy_interval``
    more lag.  While loads find nothing, it waits longer each time, up to
    ``idle_interval``: the first events after a quiet spell wait at most that long.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        inbox: str | Path | None = None,
        source: Operations | None = None,
        batch_size: int = 5000,
        poll_interval: float = 0.05,
        busy_interval: float = 0.5,
        busy_rows: int = 200,
        idle_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.read_only = False
        self.inbox = Path(inbox) if inbox is not None else None
        self.source = source
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.busy_interval = busy_interval
        self.busy_rows = busy_rows
        self.idle_interval = idle_interval
        self.clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def following(
        cls,
        path: str | Path,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
    ) -> SQLiteWarehouse:
        """A warehouse at ``path`` that loads from ``store``: by attaching its file
        when it is a SQLite store (the fast path), else through the contract."""
        url = parse_store_url(store.url)
        inbox = url.path if url.backend == "sqlite" else None
        return cls(path, inbox=inbox, source=store, clock=clock)

    @classmethod
    def reader(cls, path: str | Path) -> SQLiteWarehouse:
        """The existing warehouse ``path``, opened read-only: nothing is created, upgraded
        or written, and a missing file is ``StoreUnavailable`` on first use."""
        warehouse = cls(path)
        warehouse.read_only = True
        return warehouse

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None and self.read_only:
            # Creates no file, not even a -wal or -shm beside it (see connect_readonly).
            self._conn = connect_readonly(self.path)
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # rebuildable from the inbox
            conn.execute("PRAGMA busy_timeout=10000")
            conn.executescript(SCHEMA)
            # A warehouse made by an older version gains the columns added since.
            present = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
            for column in _COLUMNS:
                if column not in present:
                    kind = "INTEGER" if column in _BOOLEAN else "TEXT"
                    conn.execute(f"ALTER TABLE events ADD COLUMN {column} {kind}")
            conn.executescript(INDEXES)
            if self.inbox is not None:
                conn.execute("ATTACH DATABASE ? AS inbox", (str(self.inbox),))
            self._conn = conn
        return self._conn

    async def cursor(self) -> int:
        def read() -> int:
            with self._lock:
                row = (
                    self._connect()
                    .execute("SELECT inbox_seq FROM loader_state WHERE id = 1")
                    .fetchone()
                )
            return int(row[0]) if row else 0

        return await self._call(read)

    async def load(self) -> int:
        """Copy the next batch from the inbox or the source; return how many events it
        held (bodies skipped as unparseable included: 0 means caught up)."""
        if self.inbox is None:
            if self.source is not None:
                return await self._load_from(self.source)
            raise ValueError("SQLiteWarehouse.load needs an inbox path or a source store")
        loaded_at = self.clock()

        def run() -> int:
            with self._lock:
                conn = self._connect()
                # Deferred, not IMMEDIATE: only the warehouse is written, and an
                # immediate transaction would also lock the attached inbox.
                conn.execute("BEGIN")
                try:
                    row = conn.execute(
                        "SELECT coalesce(max(inbox_seq), 0) FROM loader_state"
                    ).fetchone()
                    cursor = int(row[0])
                    last, count = conn.execute(
                        "SELECT max(seq), count(*) FROM (SELECT seq FROM inbox.events"
                        " WHERE seq > ? ORDER BY seq LIMIT ?)",
                        (cursor, self.batch_size),
                    ).fetchone()
                    if count:
                        conn.execute(_LOAD, (loaded_at, cursor, last))
                        conn.execute(_SAVE_CURSOR, (last,))
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
            return int(count)

        return await self._call(run)

    async def _load_from(self, source: Operations) -> int:
        """The generic path: the next ``batch_size`` events after the cursor, parsed
        here.  A body that no longer parses (stored by an older version with looser
        checks) is skipped with a log line, and the cursor moves past it: the
        loader never stalls on one event."""
        cursor = await self.cursor()
        loaded_at = self.clock()
        events: list[Event] = []
        held = 0
        last = cursor
        where = EventFilter(after_seq=cursor, limit=self.batch_size)
        async for stored in source.iter_events(where, batch=self.batch_size):
            held += 1
            last = stored.seq
            try:
                event = parse_event(
                    stored.body, received_at=stored.received_at, backfilled=stored.backfilled
                )
            except InvalidEvent as exc:
                log.warning(
                    "event=warehouse_skipped seq=%d event_id=%s error=%s",
                    stored.seq,
                    stored.event_id,
                    str(exc),
                )
                continue
            events.append(event)
        if held:
            await self.write(events, cursor=last, loaded_at=loaded_at)
        return held

    async def run(self, stop: asyncio.Event) -> None:
        idle = self.poll_interval
        try:
            while not stop.is_set():
                try:
                    loaded = await self.load()
                except StoreUnavailable as exc:
                    log.error("event=warehouse_error error=%s", str(exc))
                    loaded = 0
                # Nothing new: look again later and later, up to ``idle_interval``, so
                # an idle worker does not query its store 20 times a second.
                idle = min(idle * 2, self.idle_interval) if not loaded else self.poll_interval
                if loaded < self.batch_size:
                    wait = self.busy_interval if loaded >= self.busy_rows else idle
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), wait)
        finally:
            await self.close()

    async def write(self, events: Sequence[Event], *, cursor: int, loaded_at: float) -> None:
        """Write parsed ``events`` idempotently and move the cursor, in one transaction."""
        loaded = iso(loaded_at)
        rows = [[*normalise(event).values(), loaded] for event in events]

        def run() -> None:
            with self._lock:
                conn = self._connect()
                conn.execute("BEGIN")
                try:
                    conn.executemany(_INSERT, rows)
                    conn.execute(_SAVE_CURSOR, (cursor,))
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise

        await self._call(run)

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
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
                ).fetchone():
                    return found
                # In slices: SQLite caps the number of parameters of one statement.
                for start in range(0, len(ids), 500):
                    part = ids[start : start + 500]
                    found.update(
                        (str(delivery), str(metric))
                        for delivery, metric in conn.execute(
                            "SELECT DISTINCT delivery_id, metric FROM events"
                            f" WHERE delivery_id IN ({','.join('?' * len(part))})",
                            part,
                        )
                    )
            return found

        return await self._call(run)

    async def _call(self, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(fn)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"warehouse {self.path}: {exc}") from exc

    async def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
