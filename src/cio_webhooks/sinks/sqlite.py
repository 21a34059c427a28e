"""The embedded warehouse: a SQLite file with one normalised ``events`` row per event."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from .._exceptions import StoreUnavailable
from ..events import NORMALISED_FIELDS, Event, iso, normalise

__all__ = ["SQLiteWarehouse"]

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
    "CREATE INDEX IF NOT EXISTS events_occurred ON events (occurred_at);\n"
    "CREATE INDEX IF NOT EXISTS events_delivery ON events (delivery_id);\n"
    "CREATE TABLE IF NOT EXISTS loader_state (id INTEGER PRIMARY KEY CHECK (id = 1),"
    " inbox_seq INTEGER NOT NULL);\n"
)
_INSERT = (
    f"INSERT INTO events ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
    " ON CONFLICT (event_id) DO NOTHING"
)


class SQLiteWarehouse:
    """Normalised events in SQLite.  ``received_at``/``loaded_at`` give the ingest lag."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # rebuildable from the inbox
            conn.execute("PRAGMA busy_timeout=10000")
            conn.executescript(SCHEMA)
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

    async def write(self, events: Sequence[Event], *, cursor: int, loaded_at: float) -> None:
        loaded = iso(loaded_at)
        rows = []
        for event in events:
            row = normalise(event)
            rows.append([*(row[c] for c in NORMALISED_FIELDS), loaded])

        def run() -> None:
            with self._lock:
                conn = self._connect()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(_INSERT, rows)
                    conn.execute(
                        "INSERT INTO loader_state (id, inbox_seq) VALUES (1, ?)"
                        " ON CONFLICT (id) DO UPDATE SET inbox_seq = excluded.inbox_seq",
                        (cursor,),
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise

        await self._call(run)

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
