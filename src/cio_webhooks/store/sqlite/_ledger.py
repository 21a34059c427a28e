"""``SQLiteLedger``: the policies' ledger of a SQLite store, in its own file.

The ledger is a second SQLite file beside the inbox (``actions.db``), never the
inbox file itself: a second writer there would slow ingest.  Several processes
may share it; every decision is one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from .._ledger import (
    AUDIT_COLUMNS,
    IN_FLIGHT_LEASE,
    LEDGER_TABLES,
    AuditRow,
    LedgerBookkeeping,
    Reservation,
    Standing,
    Verdict,
    Window,
    person_key,
    window_start,
)
from ._files import connect_readonly

__all__ = ["SCHEMA_VERSION", "SQLiteLedger"]

#: The schema version this code writes (``PRAGMA user_version``); 0 is the first
#: release's layout (``rule_hits``, no decisions), migrated on open; 1 kept every
#: person id as it was, 2 keeps it as ``person_key`` does.
SCHEMA_VERSION = 2

ACTIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS actions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    event_id   TEXT NOT NULL,
    rule       TEXT NOT NULL,
    person     TEXT,
    action     TEXT NOT NULL,
    request    TEXT NOT NULL,     -- JSON: what was (or would be) sent, never credentials
    status     TEXT NOT NULL,     -- ok | failed | dry_run | skipped
    detail     TEXT,
    dry_run    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS actions_event ON actions (event_id, rule);
CREATE INDEX IF NOT EXISTS actions_person ON actions (rule, person, created_at);
CREATE TABLE IF NOT EXISTS hits (
    rule        TEXT NOT NULL,
    person      TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    occurred_at REAL NOT NULL,    -- the event's own time, not when it was received
    dry_run     INTEGER NOT NULL,
    PRIMARY KEY (rule, event_id, dry_run)
);
CREATE INDEX IF NOT EXISTS hits_person ON hits (rule, person, dry_run, occurred_at);
CREATE TABLE IF NOT EXISTS decisions (
    rule         TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    dry_run      INTEGER NOT NULL,
    person       TEXT,
    window_start REAL,            -- threshold rules: the window [start, start + within) acted on
    state        TEXT NOT NULL,   -- in_flight | ok | failed | skipped | dry_run
    owner        TEXT,            -- host:pid:token of the caller while in_flight
    lease_until  REAL,            -- while in_flight: another owner may take over after it
    attempts     INTEGER NOT NULL DEFAULT 0,
    updated_at   REAL NOT NULL,
    PRIMARY KEY (rule, event_id, dry_run)
);
CREATE INDEX IF NOT EXISTS decisions_window ON decisions (rule, person, dry_run, window_start);
"""

_MIGRATE_FROM_0 = """
INSERT OR IGNORE INTO hits (rule, person, event_id, occurred_at, dry_run)
    SELECT rule, person, event_id, occurred_at, 0 FROM rule_hits;
INSERT OR IGNORE INTO decisions (rule, event_id, dry_run, person, window_start, state, updated_at)
    SELECT a.rule, a.event_id, a.dry_run, max(a.person),
           (SELECT h.occurred_at FROM rule_hits h
            WHERE h.rule = a.rule AND h.event_id = a.event_id),
           CASE WHEN a.dry_run = 1 THEN 'dry_run'
                WHEN sum(a.status = 'ok') > 0 THEN 'ok'
                WHEN sum(a.status = 'skipped') > 0 THEN 'skipped'
                ELSE 'failed' END,
           max(a.created_at)
    FROM actions a GROUP BY a.rule, a.event_id, a.dry_run;
DROP TABLE rule_hits;
"""

#: Version 1 kept a person id with a NUL or of more than ``MAX_PERSON_BYTES`` as it
#: was; ``reserve`` now looks it up as ``person_key`` gives it.  Rewritten, the
#: person's earlier hits and windows still count, and a window acted on is not acted
#: on again after the upgrade.
_MIGRATE_FROM_1 = """
UPDATE hits SET person = cio_person_key(person) WHERE person IS NOT cio_person_key(person);
UPDATE decisions SET person = cio_person_key(person) WHERE person IS NOT cio_person_key(person);
UPDATE actions SET person = cio_person_key(person) WHERE person IS NOT cio_person_key(person);
"""


def _statements(script: str) -> list[str]:
    """The statements of an SQL script, to run inside one transaction
    (``executescript`` would commit first)."""
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements


def _wal(conn: sqlite3.Connection, *, tries: int = 200) -> None:
    """Switch the file to WAL.  The switch answers "locked" at once, without waiting
    for ``busy_timeout``, while another process (a second worker starting on a new
    file) holds it; wait a moment and try again."""
    for _ in range(tries - 1):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            time.sleep(0.05)
    conn.execute("PRAGMA journal_mode=WAL")


def _window_start(
    c: sqlite3.Connection,
    *,
    rule: str,
    person: str,
    dry_run: bool,
    at: float,
    count: int,
    within: float,
) -> float | None:
    """The start of the window this hit (at ``at``) completes, or None (``window_start``)."""
    hits = c.execute(
        "SELECT occurred_at FROM hits WHERE rule = ? AND person = ? AND dry_run = ?"
        " AND occurred_at > ? AND occurred_at < ?",
        (rule, person, int(dry_run), at - within, at + within),
    )
    taken = c.execute(
        "SELECT window_start FROM decisions WHERE rule = ? AND person = ? AND dry_run = ?"
        " AND window_start > ? AND window_start < ?",
        (rule, person, int(dry_run), at - 2 * within, at + within),
    )
    return window_start(
        [float(row[0]) for row in hits],
        [float(row[0]) for row in taken],
        at=at,
        count=count,
        within=within,
    )


class SQLiteLedger(LedgerBookkeeping[Callable[[sqlite3.Connection], None]]):
    """The audit table, the decisions (idempotency record) and the threshold hits,
    in one SQLite file that several processes may share.

    Every decision is one ``BEGIN IMMEDIATE`` transaction, so two callers (coroutines
    of one process, or several processes on one file) never both reserve an (event,
    rule) or a threshold window.  Within a process every statement runs in a worker
    thread under one lock; ``synchronous=FULL``.
    """

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        self.read_only = read_only  # for commands that only look: never creates or migrates
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None and self.read_only:
            # Neither mode=ro's -shm left behind nor a migration: see connect_readonly.
            self._conn = connect_readonly(self.path)
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=10000")
            _wal(conn)
            conn.execute("PRAGMA synchronous=FULL")
            self._migrate(conn)
            self._conn = conn
        return self._conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")  # two processes opening a new file: one migrates
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                old = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'rule_hits'"
                ).fetchone()
                for statement in _statements(ACTIONS_SCHEMA):
                    conn.execute(statement)
                if old:
                    for statement in _statements(_MIGRATE_FROM_0):
                        conn.execute(statement)
                conn.create_function("cio_person_key", 1, person_key, deterministic=True)
                for statement in _statements(_MIGRATE_FROM_1):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            return fn(self._db())

    def _transaction(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    async def call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(connection)`` in a worker thread; return its result."""
        return await asyncio.to_thread(self._run, fn)

    async def _write(self, write: Callable[[sqlite3.Connection], None]) -> None:
        await asyncio.to_thread(self._transaction, write)

    async def _reserve(
        self,
        key: Reservation,
        *,
        person: str | None,
        now: float,
        threshold: Window | None,
        occurred_at: float | None,
    ) -> Verdict:
        rule, event_id, dry_run = key.rule, key.event_id, key.dry_run

        def run(c: sqlite3.Connection) -> Verdict:
            rows = c.execute(
                "SELECT state, owner, lease_until, dry_run FROM decisions"
                " WHERE rule = ? AND event_id = ? AND dry_run IN (?, 0) ORDER BY dry_run = ? DESC",
                (rule, event_id, int(dry_run), int(dry_run)),
            ).fetchall()
            standing = self.standing(key, rows, now=now)
            if standing is Standing.SETTLED:
                return Verdict.SETTLED
            if standing is Standing.NEW and threshold is not None and person is not None:
                assert occurred_at is not None
                added = c.execute(
                    "INSERT OR IGNORE INTO hits VALUES (?, ?, ?, ?, ?)",
                    (rule, person, event_id, occurred_at, int(dry_run)),
                ).rowcount
                if not added:
                    return Verdict.NOT_DUE  # this hit was weighed when first seen
                start = _window_start(
                    c,
                    rule=rule,
                    person=person,
                    dry_run=dry_run,
                    at=occurred_at,
                    count=threshold.count,
                    within=threshold.within,
                )
                if start is None:
                    return Verdict.NOT_DUE
                c.execute(
                    "INSERT INTO decisions (rule, event_id, dry_run, person, window_start, state,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, 'in_flight', ?)",
                    (rule, event_id, int(dry_run), person, start, now),
                )
            elif standing is Standing.NEW:
                c.execute(
                    "INSERT INTO decisions (rule, event_id, dry_run, person, state, updated_at)"
                    " VALUES (?, ?, ?, ?, 'in_flight', ?)",
                    (rule, event_id, int(dry_run), person, now),
                )
            c.execute(
                "UPDATE decisions SET state = 'in_flight', owner = ?, lease_until = ?,"
                " attempts = attempts + 1, updated_at = ?"
                " WHERE rule = ? AND event_id = ? AND dry_run = ?",
                (self.owner, now + IN_FLIGHT_LEASE, now, rule, event_id, int(dry_run)),
            )
            self.calling(key)
            return Verdict.ACT

        verdict: Verdict = await asyncio.to_thread(self._transaction, run)
        return verdict

    def _settle(
        self, key: Reservation, *, status: str, at: float, audit: tuple[Any, ...]
    ) -> Callable[[sqlite3.Connection], None]:
        def run(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE decisions SET state = ?, owner = NULL, lease_until = NULL, updated_at = ?"
                " WHERE rule = ? AND event_id = ? AND dry_run = ? AND owner = ?",
                (status, at, key.rule, key.event_id, int(key.dry_run), self.owner),
            )
            c.execute(
                "INSERT INTO actions (created_at, event_id, rule, person, action, request, status,"
                " detail, dry_run) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*audit[:-1], int(audit[-1])),
            )

        return run

    async def decision(self, rule: str, event_id: str, *, dry_run: bool = False) -> str | None:
        """The state of the decision on (``event_id``, ``rule``), or None when there is none."""
        row = await self.call(
            lambda c: c.execute(
                "SELECT state FROM decisions WHERE rule = ? AND event_id = ? AND dry_run = ?",
                (rule, event_id, int(dry_run)),
            ).fetchone()
        )
        return None if row is None else str(row[0])

    async def recent(
        self,
        *,
        limit: int = 100,
        event_id: str | None = None,
        status: str | None = None,
        since: float | None = None,
    ) -> list[AuditRow]:
        """The newest audit rows first, optionally only those of one event or status,
        or written at or after ``since``."""
        conditions: list[str] = []
        params: list[Any] = []
        for column, value in (("event_id", event_id), ("status", status)):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            conditions.append("created_at >= ?")
            params.append(since)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = await self.call(
            lambda c: c.execute(
                f"SELECT {', '.join(AUDIT_COLUMNS)} FROM actions {where} ORDER BY id DESC LIMIT ?",
                [*params, limit],
            ).fetchall()
        )
        return [
            AuditRow(**dict(zip(AUDIT_COLUMNS, row, strict=True)) | {"dry_run": bool(row[-1])})
            for row in rows
        ]

    async def export_rows(self, table: str) -> AsyncIterator[tuple[Any, ...]]:
        columns = LEDGER_TABLES[table]
        rows: list[tuple[Any, ...]] = await self.call(
            lambda c: c.execute(
                f"SELECT {', '.join(columns)} FROM {table} ORDER BY rowid"
            ).fetchall()
        )
        for row in rows:
            yield tuple(row)

    async def import_rows(self, table: str, rows: Sequence[tuple[Any, ...]]) -> int:
        columns = list(LEDGER_TABLES[table])
        if table == "actions":  # renumbered: the id is this ledger's
            columns = columns[1:]
            rows = [row[1:] for row in rows]
        sql = (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
            " ON CONFLICT DO NOTHING"
        )

        def run(c: sqlite3.Connection) -> int:
            return sum(c.execute(sql, row).rowcount for row in rows)

        added: int = await asyncio.to_thread(self._transaction, run)
        return added

    async def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
