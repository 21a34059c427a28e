"""``SQLiteStore``: the embedded store, one SQLite file in WAL mode.

Durability and speed come from one rule: a single writer thread owns the only
writing connection.  Every write (an incoming event, a claim, a handler
result) is a small function queued to that thread; the thread drains whatever
is waiting, runs it all in one transaction and commits once (``synchronous=FULL``,
so the commit is on disk), then settles every waiting future.  Many concurrent
requests therefore share one fsync ("group commit"), and a request is answered
only after the commit that holds its event.  Reads use their own connections;
WAL readers never block the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import secrets
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..._exceptions import StoreUnavailable
from ...events import Event
from .._model import (
    AlertState,
    EventFilter,
    Gauges,
    HandlerRun,
    Job,
    OperatorAction,
    Outcome,
    PutResult,
    Quarantined,
    SinkState,
    StoredEvent,
    StoreStats,
    TrafficMinute,
    Wanted,
)
from .._rows import (
    CLAIM_COLUMNS,
    CLAIM_SCAN,
    DUE,
    EVENT_COLUMNS,
    LOADED_BY_SINKS,
    QUARANTINE_COLUMNS,
    SinkSQL,
    WatchSQL,
    ack_text,
    alert_state,
    gauges,
    jobs,
    operator_action,
    operator_row,
    pages,
    quarantined,
    seq_before,
    sink_error,
    sink_state,
    split_claim,
    store_stats,
    stored_event,
    traffic_minutes,
    traffic_rows,
)
from ._files import connect_readonly, readonly_uri
from ._ledger import SQLiteLedger

__all__ = ["LEDGER_FILE", "SQLiteStore", "connect_readonly", "readonly_uri"]

T = TypeVar("T")

#: The policies' ledger of a SQLite store: a second file beside the inbox.
LEDGER_FILE = "actions.db"

#: Warehouse sinks: how far each has loaded, and which loader may move that on.
_SINK_CURSORS = """
CREATE TABLE IF NOT EXISTS sink_cursors (
    name             TEXT PRIMARY KEY, -- the warehouse sink's name
    url              TEXT NOT NULL,    -- its display form, without credentials
    seq              INTEGER NOT NULL, -- the last event loaded into it (0: none yet)
    updated_at       REAL,             -- when seq last moved
    last_received_at REAL,             -- received_at of the last event loaded
    error            TEXT,             -- the last failure since the last success
    error_at         REAL,
    failures         INTEGER NOT NULL, -- consecutive failures
    owner            TEXT,             -- the loader allowed to move seq ...
    lease_until      REAL,             -- ... until then
    registered_at    REAL NOT NULL
);
"""

#: The dashboard and the alerts (``Watch``): what each receiver answered per minute,
#: and where each alert rule stands.
_WATCH = """
CREATE TABLE IF NOT EXISTS traffic (
    minute             REAL NOT NULL,    -- the minute's start, unix seconds
    process            TEXT NOT NULL,    -- the receiver that counted it
    stored             INTEGER NOT NULL,
    duplicate          INTEGER NOT NULL,
    quarantined        INTEGER NOT NULL,
    rejected_signature INTEGER NOT NULL,
    too_large          INTEGER NOT NULL,
    store_unavailable  INTEGER NOT NULL,
    ack                TEXT NOT NULL,    -- answers per latency bucket, comma-separated
    PRIMARY KEY (minute, process)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alert_states (
    rule        TEXT PRIMARY KEY,
    firing      INTEGER NOT NULL,
    value       REAL,
    changed_at  REAL NOT NULL,
    notified_at REAL,
    version     INTEGER NOT NULL -- compare-and-set: changes only from the version read
);
"""

#: What operators did to events by hand (``Watch.record_operator_action``), for every
#: process's dashboard.
_OPERATOR_ACTIONS = """
CREATE TABLE IF NOT EXISTS operator_actions (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     REAL NOT NULL,    -- when, unix seconds
    user   TEXT NOT NULL,    -- who: a dashboard login, or cli:<login name>
    action TEXT NOT NULL,    -- dlq_retry, dlq_discard, quarantine_reingest
    count  INTEGER NOT NULL, -- the events (or bodies) it changed
    detail TEXT NOT NULL     -- which: the filter or the ids
);
CREATE INDEX IF NOT EXISTS operator_actions_at ON operator_actions (at);
"""

#: Dashboard sessions a logout ended (``Watch.revoke_session``), refused by every
#: process on the store until their cookies expire.
_UI_SESSIONS = """
CREATE TABLE IF NOT EXISTS ui_revoked_sessions (
    sid   TEXT PRIMARY KEY, -- the session id inside the signed cookie
    until REAL NOT NULL     -- the cookie's expiry, unix seconds: prune drops it after
) WITHOUT ROWID;
"""

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS events (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL UNIQUE,
    object_type     TEXT NOT NULL,
    metric          TEXT NOT NULL,
    occurred_at     INTEGER,
    received_at     REAL NOT NULL,
    body            BLOB NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT,
    updated_at      REAL NOT NULL,
    backfilled      INTEGER NOT NULL DEFAULT 0,
    claim_token     TEXT -- the dispatcher's claim on the event; NULL when none is held
);
CREATE INDEX IF NOT EXISTS events_due ON events (next_attempt_at)
    WHERE state IN ('pending', 'retrying');
CREATE INDEX IF NOT EXISTS events_received ON events (received_at);
CREATE INDEX IF NOT EXISTS events_dead ON events (seq) WHERE state = 'dead';
CREATE TABLE IF NOT EXISTS handler_runs (
    seq        INTEGER NOT NULL,
    handler    TEXT NOT NULL,
    status     TEXT NOT NULL,
    attempts   INTEGER NOT NULL,
    last_error TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (seq, handler)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantine (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    event_id    TEXT,
    reason      TEXT NOT NULL,
    body        BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS quarantine_event_id ON quarantine (event_id)
    WHERE event_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
    + _SINK_CURSORS
    + _WATCH
    + _OPERATOR_ACTIONS
    + _UI_SESSIONS
    + """PRAGMA user_version = 9;
"""
)
SCHEMA_VERSION = 9
#: What turns a file of version N into N + 1.
MIGRATIONS = {
    1: "ALTER TABLE events ADD COLUMN backfilled INTEGER NOT NULL DEFAULT 0;",
    2: "CREATE INDEX IF NOT EXISTS events_dead ON events (seq) WHERE state = 'dead';",
    # A quarantined event_id is kept once: drop the later copies of Customer.io's retries.
    3: """
DELETE FROM quarantine WHERE event_id IS NOT NULL AND id NOT IN (
    SELECT min(id) FROM quarantine WHERE event_id IS NOT NULL GROUP BY event_id);
CREATE UNIQUE INDEX IF NOT EXISTS quarantine_event_id ON quarantine (event_id)
    WHERE event_id IS NOT NULL;
""",
    # Claim tokens: an outcome is recorded only while its claim holds.
    4: "ALTER TABLE events ADD COLUMN claim_token TEXT;",
    # Warehouse sinks: one cursor per sink.
    5: _SINK_CURSORS,
    # The dashboard and the alerts: traffic per minute, alert states.
    6: _WATCH,
    # Operator actions, shared by every process's dashboard.
    7: _OPERATOR_ACTIONS,
    # Logouts, shared by every process's dashboard.
    8: _UI_SESSIONS,
}


def migrate(conn: sqlite3.Connection) -> None:
    """Create the schema in a new file, or bring an older file up to ``SCHEMA_VERSION``."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        conn.executescript(SCHEMA)
        return
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"schema version {version} is newer than this cio-webhooks ({SCHEMA_VERSION})"
        )
    for step in range(version, SCHEMA_VERSION):
        conn.executescript(MIGRATIONS[step])
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


_INSERT = (
    "INSERT INTO events (event_id, object_type, metric, occurred_at, received_at, body,"
    " next_attempt_at, updated_at, state, backfilled) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (event_id) DO NOTHING"
)


def _put_params(event: Event, state: str) -> tuple[Any, ...]:
    received = event.received_at if event.received_at is not None else 0.0
    return (
        event.event_id,
        event.object_type,
        event.metric,
        event.timestamp,
        received,
        event.raw,
        received,
        received,
        state,
        int(event.backfilled),
    )


@dataclass(slots=True)
class _Write:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    # Run inside a SAVEPOINT, so that its failure does not undo the rest of the batch.
    # A write that is not isolated must be ONE statement: SQLite undoes a failed
    # statement on its own, which isolates it without the cost of a savepoint.
    isolated: bool


_STOP = object()


def _settle(batch: list[_Write], results: list[tuple[bool, Any]]) -> None:
    for write, (ok, value) in zip(batch, results, strict=True):
        if write.future.done():  # the request went away; its event is stored all the same
            continue
        if ok:
            write.future.set_result(value)
        else:
            write.future.set_exception(value)


class _Writer:
    """The thread that owns the writing connection and commits in groups."""

    def __init__(self, path: Path, *, max_batch: int, max_bytes: int | None) -> None:
        self._path = path
        self._max_batch = max_batch
        self._max_bytes = max_bytes
        self._queue: queue.SimpleQueue[_Write | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="cio-inbox-writer", daemon=True)
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self.commits = 0  # transactions committed, for metrics and the group-commit test
        self.writes = 0  # writes those transactions carried

    def start(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: with WAL+NORMAL a committed transaction can roll back after power loss.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        migrate(conn)
        if self._max_bytes is not None:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count={max(1, self._max_bytes // page_size)}")
        self._conn = conn
        self._thread.start()

    def submit(self, fn: Callable[[sqlite3.Connection], T], *, isolated: bool) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(StoreUnavailable("the inbox is closed"))
        else:
            self._queue.put(_Write(fn, future, isolated))
        return future

    def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        if self._conn is not None:
            self._conn.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, _Write)
            batch = [item]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                assert isinstance(nxt, _Write)
                batch.append(nxt)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Write]) -> None:
        conn = self._conn
        assert conn is not None
        results: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for write in batch:
                if not write.isolated:
                    try:
                        results.append((True, write.fn(conn)))
                    except Exception as exc:
                        results.append((False, _write_error(conn, exc)))
                    continue
                conn.execute("SAVEPOINT op")
                try:
                    value = write.fn(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    results.append((False, exc))
                else:
                    results.append((True, value))
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
            self.commits += 1
            self.writes += len(batch)
        except Exception as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            error = StoreUnavailable(f"inbox write failed: {exc}")
            error.__cause__ = exc
            results = [(False, error)] * len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, tuple[list[_Write], list[tuple[bool, Any]]]] = {}
        for write, result in zip(batch, results, strict=True):
            writes, values = by_loop.setdefault(write.future.get_loop(), ([], []))
            writes.append(write)
            values.append(result)
        for loop, (writes, values) in by_loop.items():
            # One wake-up per loop per batch, not one per request.
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(_settle, writes, values)


def _write_error(conn: sqlite3.Connection, exc: Exception) -> Exception:
    """What one failed single-statement write reports; raises if the batch is lost.

    Values SQLite cannot take (an int past 64 bits, text it cannot encode, a
    constraint) fail that statement alone: the error goes to that write's caller.
    A failure of the store itself (disk full, I/O) is StoreUnavailable for it; if
    SQLite rolled the whole transaction back, the batch fails (re-raised).
    """
    if not conn.in_transaction:
        raise exc
    if isinstance(exc, sqlite3.OperationalError):
        error = StoreUnavailable(f"inbox write failed: {exc}")
        error.__cause__ = exc
        return error
    return exc


_SINKS = SinkSQL("?")


def _check_inbox(conn: sqlite3.Connection) -> None:
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    if not {"events", "handler_runs", "quarantine"} <= tables:
        raise sqlite3.DatabaseError("not a cio-webhooks inbox")


#: ``EventFilter.text``: SQLite's built-in lower() folds ASCII letters only and keeps
#: every byte of a BLOB (NULs, invalid UTF-8); instr() on BLOBs compares bytes.
_WATCH_SQL = WatchSQL("?", ack="?", contains="instr(CAST(lower(body) AS BLOB), ?) > 0")


def _where_sql(where: EventFilter) -> tuple[str, list[Any]]:
    return _WATCH_SQL.where(where)


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return bool(
        conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
    )


class SQLiteStore:
    """The embedded ``Inbox``.  ``max_batch`` bounds a group commit; ``max_bytes``
    caps the file size, past which writes fail and the receiver answers 503.

    ``readonly=True`` opens an existing inbox for reading only (the CLI's reports):
    no writer, no migration, no file created or changed (``connect_readonly``);
    ``open`` raises ``StoreUnavailable`` when the file is missing or not an inbox,
    and every write raises ``StoreUnavailable``."""

    #: Other processes cannot wake a worker (SQLite has no notifications), but a
    #: look is one indexed read of a local file: look often.
    idle_poll = 0.25

    def __init__(
        self,
        path: str | Path,
        *,
        max_batch: int = 512,
        max_bytes: int | None = None,
        readonly: bool = False,
        ledger_path: str | Path | None = None,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.ledger_path = Path(ledger_path) if ledger_path else self.path.parent / LEDGER_FILE
        self._ledger: SQLiteLedger | None = None
        self._work = asyncio.Event()  # set when this process stored or requeued work
        self._writer = _Writer(self.path, max_batch=max_batch, max_bytes=max_bytes)
        if readonly:
            self._writer._closed = True  # never started: writes fail as on a closed inbox
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._uri = readonly_uri(self.path) if readonly else ""
        self._opened = False

    @property
    def url(self) -> str:
        return f"sqlite://{self.path.resolve()}"

    def ledger(self) -> SQLiteLedger:
        """The policies' ledger: ``ledger_path`` (``actions.db`` beside the inbox)."""
        if self._ledger is None:
            self._ledger = SQLiteLedger(self.ledger_path, read_only=self.readonly)
        return self._ledger

    @property
    def commit_stats(self) -> tuple[int, int]:
        """``(commits, writes)`` since open: writes / commits is the mean group size."""
        return self._writer.commits, self._writer.writes

    # -- lifecycle ---------------------------------------------------------------------
    async def open(self) -> None:
        if self._opened:
            return
        if self.readonly:
            try:
                await self._read(_check_inbox)
            except StoreUnavailable as exc:
                await self.close()
                raise StoreUnavailable(f"cannot read inbox {self.path}: {exc.__cause__}") from exc
            self._opened = True
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(self._writer.start)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open inbox {self.path}: {exc}") from exc
        self._opened = True

    async def close(self) -> None:
        """Commit everything queued, then stop the writer and close the readers."""
        if self._ledger is not None:
            await self._ledger.close()
        if not self.readonly:
            await asyncio.to_thread(self._writer.stop)
        # The last connection to close removes the -wal and -shm files (and a read-only
        # one the side files it made, see connect_readonly); a reader left open kept them.
        for conn in self._readers:
            conn.close()
        self._readers.clear()
        self._local = threading.local()

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self.readonly:
                conn = connect_readonly(self.path, self._uri)
                self._readers.append(conn)
            else:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA busy_timeout=10000")
                conn.execute("PRAGMA query_only=1")
                self._readers.append(conn)
            self._local.conn = conn
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            try:
                return fn(self._reader())
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"inbox read failed: {exc}") from exc

        return await asyncio.to_thread(run)

    # -- receiver ----------------------------------------------------------------------
    async def ready(self) -> bool:
        def heartbeat(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('heartbeat', strftime('%s','now'))"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            )

        try:
            await self._writer.submit(heartbeat, isolated=True)
        except Exception:
            return False
        return True

    async def put(self, event: Event, *, handled: bool = False) -> PutResult:
        # A backfilled event is recorded, not handled: its actions were taken (or
        # deliberately not taken) when it was missed.
        state = "done" if handled or event.backfilled else "pending"
        params = _put_params(event, state)

        # One statement (see _Write.isolated): a value SQLite cannot take fails this
        # put alone, never the others in its group commit.
        def insert(conn: sqlite3.Connection) -> PutResult:
            stored = conn.execute(_INSERT, params).rowcount == 1
            return PutResult.STORED if stored else PutResult.DUPLICATE

        result = await self._writer.submit(insert, isolated=False)
        if state == "pending" and result is PutResult.STORED:
            self._work.set()
        return result

    async def quarantine(
        self, body: bytes, reason: str, *, received_at: float, event_id: str | None = None
    ) -> int:
        # One statement (see _Write.isolated): a repeated event_id keeps the first copy
        # and returns its id.
        def insert(conn: sqlite3.Connection) -> int:
            (ident,) = conn.execute(
                "INSERT INTO quarantine (received_at, event_id, reason, body) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (event_id) WHERE event_id IS NOT NULL"
                " DO UPDATE SET event_id = excluded.event_id RETURNING id",
                (received_at, event_id, reason, body),
            ).fetchone()
            return int(ident)

        return await self._writer.submit(insert, isolated=False)

    async def release_quarantined(self, ident: int, event: Event) -> PutResult:
        """Store ``event``, read again from quarantined body ``ident``, as a pending
        event (or find it already stored) and drop the quarantined copy, atomically."""

        def release(conn: sqlite3.Connection) -> PutResult:
            stored = conn.execute(_INSERT, _put_params(event, "pending")).rowcount == 1
            conn.execute("DELETE FROM quarantine WHERE id = ?", (ident,))
            return PutResult.STORED if stored else PutResult.DUPLICATE

        result = await self._writer.submit(release, isolated=True)
        self._work.set()
        return result

    async def purge_quarantined(self, *, received_before: float) -> int:
        """Delete quarantined bodies received before the cutoff; returns how many."""

        def purge(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM quarantine WHERE received_at < ?", (received_before,)
            ).rowcount

        return await self._writer.submit(purge, isolated=True)

    # -- dispatcher --------------------------------------------------------------------
    async def claim(
        self,
        *,
        now: float,
        limit: int,
        lease: float,
        wanted: Wanted | None = None,
        interrupted: bool = False,
    ) -> list[Job]:
        token = secrets.token_hex(8)
        scan = limit if wanted is None else max(limit, CLAIM_SCAN)
        held = "IS NOT NULL" if interrupted else "IS NULL"

        def take(conn: sqlite3.Connection) -> list[Job]:
            # One writer, so nothing comes between these reads and the updates below.
            rows = conn.execute(
                f"SELECT {CLAIM_COLUMNS} FROM events WHERE {DUE} AND next_attempt_at <= ?"
                f" AND claim_token {held} ORDER BY next_attempt_at LIMIT ?",
                (now, scan),
            ).fetchall()
            claimed, unwanted = split_claim(rows, wanted, limit)
            if unwanted:
                conn.execute(
                    "UPDATE events SET state = 'done', next_attempt_at = ?, last_error = NULL,"
                    " updated_at = ?, claim_token = NULL"
                    f" WHERE seq IN ({','.join('?' * len(unwanted))})",
                    [now, now, *unwanted],
                )
            if not claimed:
                return []
            seqs = [r[0] for r in claimed]
            marks = ",".join("?" * len(seqs))
            # The claim is the attempt: a handler that kills the process still uses one.
            conn.execute(
                "UPDATE events SET next_attempt_at = ?, attempts = attempts + 1,"
                f" claim_token = ? WHERE seq IN ({marks})",
                [now + lease, token, *seqs],
            )
            bodies = dict(
                conn.execute(f"SELECT seq, body FROM events WHERE seq IN ({marks})", seqs)
            )
            succeeded = conn.execute(
                f"SELECT seq, handler FROM handler_runs WHERE status = 'ok' AND seq IN ({marks})",
                seqs,
            )
            return jobs(claimed, bodies=bodies, succeeded=succeeded, token=token)

        return await self._writer.submit(take, isolated=True)

    async def interrupted_due(self, *, now: float) -> bool:
        def run(c: sqlite3.Connection) -> bool:
            return bool(
                c.execute(
                    f"SELECT EXISTS (SELECT 1 FROM events WHERE {DUE}"
                    " AND next_attempt_at <= ? AND claim_token IS NOT NULL)",
                    (now,),
                ).fetchone()[0]
            )

        return await self._read(run)

    async def extend(self, jobs: Sequence[Job], *, until: float) -> int:
        def run(conn: sqlite3.Connection) -> int:
            return sum(
                conn.execute(
                    "UPDATE events SET next_attempt_at = ? WHERE seq = ? AND claim_token = ?"
                    f" AND {DUE}",
                    (until, job.seq, job.token),
                ).rowcount
                for job in jobs
            )

        return await self._writer.submit(run, isolated=True)

    async def wait_for_work(self, timeout: float) -> None:
        # Work stored by this process wakes at once; other processes' by the timeout
        # (SQLite has no notifications: an idle worker polls, cheaply, an index).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._work.wait(), timeout)
        self._work.clear()

    async def finish(self, outcomes: Sequence[Outcome], *, now: float) -> int:
        def record(conn: sqlite3.Connection) -> int:
            applied = 0
            for o in outcomes:
                held = conn.execute(
                    "UPDATE events SET state = ?, attempts = ?, next_attempt_at = ?,"
                    " last_error = ?, updated_at = ?, claim_token = NULL"
                    " WHERE seq = ? AND claim_token = ?",
                    (
                        o.state.value,
                        o.attempts,
                        o.next_attempt_at,
                        o.last_error,
                        now,
                        o.seq,
                        o.token,
                    ),
                ).rowcount
                if not held:  # replayed, discarded or claimed again meanwhile: that wins
                    continue
                applied += 1
                conn.executemany(
                    "INSERT INTO handler_runs (seq, handler, status, attempts, last_error,"
                    " updated_at) VALUES (?, ?, ?, 1, ?, ?)"
                    " ON CONFLICT (seq, handler) DO UPDATE SET status = excluded.status,"
                    " attempts = handler_runs.attempts + 1, last_error = excluded.last_error,"
                    " updated_at = excluded.updated_at",
                    [
                        (o.seq, r.handler, "ok" if r.ok else "failed", r.error, now)
                        for r in o.results
                    ],
                )
            return applied

        return await self._writer.submit(record, isolated=True)

    # -- operations --------------------------------------------------------------------
    async def requeue(self, where: EventFilter, *, now: float, rerun: str | None = None) -> int:
        sql, params = _where_sql(where)
        seqs: list[int] = await self._read(
            lambda c: [seq for (seq,) in c.execute(f"SELECT seq FROM events WHERE {sql}", params)]
        )

        def requeue_chunk(chunk: list[int]) -> Callable[[sqlite3.Connection], None]:
            marks = ",".join("?" * len(chunk))

            def run(conn: sqlite3.Connection) -> None:
                conn.execute(
                    "UPDATE events SET state = 'pending', attempts = 0, next_attempt_at = ?,"
                    " last_error = NULL, updated_at = ?, claim_token = NULL"
                    f" WHERE seq IN ({marks})",
                    [now, now, *chunk],
                )
                if rerun == "*":
                    conn.execute(f"DELETE FROM handler_runs WHERE seq IN ({marks})", chunk)
                elif rerun is not None:
                    conn.execute(
                        f"DELETE FROM handler_runs WHERE handler = ? AND seq IN ({marks})",
                        [rerun, *chunk],
                    )

            return run

        # One transaction per chunk: replaying a million events must not stall acks.
        for start in range(0, len(seqs), 1000):
            await self._writer.submit(requeue_chunk(seqs[start : start + 1000]), isolated=True)
        if seqs:
            self._work.set()
        return len(seqs)

    async def discard(self, where: EventFilter, *, now: float) -> int:
        sql, params = _where_sql(where)

        def run(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE events SET state = 'discarded', updated_at = ?, claim_token = NULL"
                f" WHERE {sql}",
                [now, *params],
            )
            return cur.rowcount

        return await self._writer.submit(run, isolated=True)

    async def import_events(
        self, events: Sequence[tuple[StoredEvent, Sequence[HandlerRun]]]
    ) -> int:
        def run(conn: sqlite3.Connection) -> int:
            added = 0
            for e, runs in events:
                row = conn.execute(
                    "INSERT INTO events (event_id, object_type, metric, occurred_at,"
                    " received_at, body, state, attempts, next_attempt_at, last_error,"
                    " updated_at, backfilled) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (event_id) DO NOTHING RETURNING seq",
                    (
                        e.event_id,
                        e.object_type,
                        e.metric,
                        e.occurred_at,
                        e.received_at,
                        e.body,
                        e.state.value,
                        e.attempts,
                        e.next_attempt_at,
                        e.last_error,
                        e.received_at,
                        int(e.backfilled),
                    ),
                ).fetchone()
                if row is None:
                    continue
                added += 1
                conn.executemany(
                    "INSERT INTO handler_runs (seq, handler, status, attempts, last_error,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (row[0], r.handler, r.status, r.attempts, r.last_error, r.updated_at)
                        for r in runs
                    ],
                )
            return added

        added = await self._writer.submit(run, isolated=True)
        if added:
            self._work.set()
        return added

    async def import_quarantined(self, items: Sequence[Quarantined]) -> int:
        def run(conn: sqlite3.Connection) -> int:
            return sum(
                conn.execute(
                    "INSERT INTO quarantine (received_at, event_id, reason, body)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (event_id) WHERE event_id IS NOT NULL"
                    " DO NOTHING",
                    (q.received_at, q.event_id, q.reason, q.body),
                ).rowcount
                for q in items
            )

        return await self._writer.submit(run, isolated=True)

    async def prune(self, *, received_before: float, chunk: int = 2000) -> int:
        # In chunks, each its own write, so that a month's worth of deletions never
        # holds the writer (and the requests waiting for their ack) for long.
        def run(conn: sqlite3.Connection) -> int:
            seqs = [
                seq
                for (seq,) in conn.execute(
                    "SELECT seq FROM events WHERE received_at < ?"
                    f" AND state IN ('done', 'discarded') AND {LOADED_BY_SINKS} LIMIT ?",
                    (received_before, chunk),
                )
            ]
            if seqs:
                marks = ",".join("?" * len(seqs))
                conn.execute(f"DELETE FROM handler_runs WHERE seq IN ({marks})", seqs)
                conn.execute(f"DELETE FROM events WHERE seq IN ({marks})", seqs)
            return len(seqs)

        def prune_watch(conn: sqlite3.Connection) -> None:
            conn.execute(_WATCH_SQL.prune_traffic, (received_before,))
            conn.execute(_WATCH_SQL.prune_operator_actions, (received_before,))
            conn.execute(_WATCH_SQL.prune_revoked_sessions, (received_before,))

        total = 0
        while removed := await self._writer.submit(run, isolated=True):
            total += removed
        await self._writer.submit(prune_watch, isolated=True)
        return total

    def iter_events(self, where: EventFilter, *, batch: int = 1000) -> AsyncIterator[StoredEvent]:
        async def page(part: EventFilter, size: int) -> list[Any]:
            sql, params = _where_sql(part)
            query = f"SELECT {EVENT_COLUMNS} FROM events WHERE {sql} ORDER BY seq LIMIT ?"
            return await self._read(lambda c: c.execute(query, [*params, size]).fetchall())

        return pages(where, batch, page)

    async def schema_version(self) -> int:
        """The inbox's ``PRAGMA user_version`` (``SCHEMA_VERSION`` once opened)."""
        version: int = await self._read(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
        return version

    async def get_event(self, event_id: str) -> StoredEvent | None:
        row = await self._read(
            lambda c: c.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE event_id = ?", (event_id,)
            ).fetchone()
        )
        return stored_event(row) if row else None

    async def handler_runs(self, seq: int) -> list[HandlerRun]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT handler, status, attempts, last_error, updated_at FROM handler_runs"
                " WHERE seq = ? ORDER BY handler",
                (seq,),
            ).fetchall()
        )
        return [HandlerRun(*row) for row in rows]

    async def quarantined(
        self, *, limit: int = 100, ident: int | None = None, before_id: int | None = None
    ) -> list[Quarantined]:
        if ident is not None:
            sql, params = "WHERE id = ?", [ident]
        elif before_id is not None:
            sql, params = "WHERE id < ?", [before_id]
        else:
            sql, params = "", []
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT {QUARANTINE_COLUMNS} FROM quarantine {sql} ORDER BY id DESC LIMIT ?",
                [*params, limit],
            ).fetchall()
        )
        return [quarantined(r) for r in rows]

    async def delivery_metrics(self, *, occurred_since: float) -> set[tuple[str, str]]:
        def run(c: sqlite3.Connection) -> set[tuple[str, str]]:
            return {
                (str(delivery), metric)
                for delivery, metric in c.execute(
                    # An event without a usable time (stored with occurred_at NULL) was
                    # still received: judge it by when it arrived, or reconcile would
                    # backfill a second copy of it.
                    "SELECT json_extract(body, '$.data.delivery_id'), metric FROM events"
                    " WHERE coalesce(occurred_at, received_at) >= ?"
                    " AND json_extract(body, '$.data.delivery_id') IS NOT NULL",
                    (occurred_since,),
                )
            }

        return await self._read(run)

    async def gauges(self, *, now: float) -> Gauges:
        def run(c: sqlite3.Connection) -> Gauges:
            # Each of these reads a partial index or a small table, never all events.
            backlog, oldest = c.execute(
                f"SELECT count(*), min(received_at) FROM events WHERE {DUE}"
            ).fetchone()
            dead = c.execute("SELECT count(*) FROM events WHERE state = 'dead'").fetchone()[0]
            held = c.execute("SELECT count(*) FROM quarantine").fetchone()[0]
            return gauges(backlog=backlog, oldest=oldest, dead=dead, quarantined=held, now=now)

        return await self._read(run)

    async def stats(self) -> StoreStats:
        def run(c: sqlite3.Connection) -> StoreStats:
            states = c.execute("SELECT state, count(*) FROM events GROUP BY state")
            kinds = c.execute(
                "SELECT object_type, metric, count(*) FROM events"
                " GROUP BY object_type, metric ORDER BY 3 DESC, 1, 2"
            )
            held = c.execute("SELECT count(*) FROM quarantine").fetchone()[0]
            oldest = c.execute(f"SELECT min(received_at) FROM events WHERE {DUE}").fetchone()[0]
            return store_stats(states, kinds, quarantined=held, oldest=oldest)

        return await self._read(run)

    # -- sink cursors ------------------------------------------------------------------
    async def register_sink(self, name: str, url: str, *, now: float) -> SinkState:
        def run(conn: sqlite3.Connection) -> SinkState:
            return sink_state(conn.execute(_SINKS.register, (name, url, now)).fetchone())

        return await self._writer.submit(run, isolated=True)

    async def lease_sink(self, name: str, owner: str, *, now: float, until: float) -> bool:
        params = (owner, until, name, owner, now)
        return await self._writer.submit(
            lambda c: c.execute(_SINKS.lease, params).rowcount == 1, isolated=True
        )

    async def advance_sink(
        self,
        name: str,
        owner: str,
        *,
        from_seq: int,
        to_seq: int,
        last_received_at: float | None,
        now: float,
    ) -> bool:
        params = (to_seq, now, last_received_at, name, owner, from_seq)
        return await self._writer.submit(
            lambda c: c.execute(_SINKS.advance, params).rowcount == 1, isolated=True
        )

    async def sink_failed(self, name: str, owner: str, error: str, *, now: float) -> None:
        params = (sink_error(error), now, name, owner, now)
        await self._writer.submit(lambda c: c.execute(_SINKS.failed, params), isolated=True)

    async def rewind_sink(self, name: str, seq: int, *, now: float) -> bool:
        params = (seq, now, seq, name)
        return await self._writer.submit(
            lambda c: c.execute(_SINKS.rewind, params).rowcount == 1, isolated=True
        )

    async def forget_sink(self, name: str) -> bool:
        return await self._writer.submit(
            lambda c: c.execute(_SINKS.forget, (name,)).rowcount == 1, isolated=True
        )

    async def sink_states(self) -> list[SinkState]:
        def run(c: sqlite3.Connection) -> list[SinkState]:
            # A read-only look at a file no newer cio-webhooks has opened yet: no table,
            # so no sink.
            if not _has_table(c, "sink_cursors"):
                return []
            return [sink_state(row) for row in c.execute(_SINKS.states)]

        return sorted(await self._read(run), key=lambda s: s.name)

    async def sink_backlog(self, seq: int, *, limit: int = 1_000_000) -> tuple[int, float | None]:
        count, first = await self._read(
            lambda c: c.execute(_SINKS.backlog, (seq, limit, seq)).fetchone()
        )
        return int(count), first

    async def seq_before(self, received_at: float) -> int:
        before, first_since = await self._read(
            lambda c: c.execute(_SINKS.seq_before, (received_at, received_at)).fetchone()
        )
        return seq_before(before, first_since)

    # -- watch -------------------------------------------------------------------------
    # A read-only look at a file no newer cio-webhooks has opened yet has no traffic,
    # alert_states, operator_actions or ui_revoked_sessions table: it reads as none
    # recorded.
    async def browse(
        self, where: EventFilter, *, before_seq: int | None = None, limit: int = 50
    ) -> list[StoredEvent]:
        query, params = _WATCH_SQL.browse(where, before_seq=before_seq, limit=limit)
        rows = await self._read(lambda c: c.execute(query, params).fetchall())
        return [stored_event(row) for row in rows]

    async def record_traffic(self, process: str, minutes: Sequence[TrafficMinute]) -> None:
        rows = traffic_rows(process, minutes, ack_text)
        if rows:
            await self._writer.submit(
                lambda c: c.executemany(_WATCH_SQL.record_traffic, rows), isolated=True
            )

    async def traffic(self, *, since: float) -> list[TrafficMinute]:
        def run(c: sqlite3.Connection) -> list[TrafficMinute]:
            if self.readonly and not _has_table(c, "traffic"):
                return []
            return traffic_minutes(c.execute(_WATCH_SQL.traffic, (since,)))

        return await self._read(run)

    async def kind_counts(self, *, since: float) -> dict[tuple[str, str], int]:
        rows = await self._read(lambda c: c.execute(_WATCH_SQL.kind_counts, (since,)).fetchall())
        return {(o, m): int(n) for o, m, n in rows}

    async def last_received_at(self) -> float | None:
        row = await self._read(lambda c: c.execute(_WATCH_SQL.last_received_at).fetchone())
        return None if row is None else float(row[0])

    async def alert_states(self) -> list[AlertState]:
        def run(c: sqlite3.Connection) -> list[AlertState]:
            if self.readonly and not _has_table(c, "alert_states"):
                return []
            return [alert_state(row) for row in c.execute(_WATCH_SQL.alert_states)]

        return await self._read(run)

    async def swap_alert(self, state: AlertState, *, expected: int | None) -> bool:
        # One statement in a write transaction (BEGIN IMMEDIATE: one writer at a time,
        # whichever process it is in), so the version it compares is the committed one.
        values = (state.firing, state.value, state.changed_at, state.notified_at)
        params: tuple[Any, ...]
        if expected is None:
            query, params = _WATCH_SQL.insert_alert, (state.rule, *values)
        else:
            query, params = _WATCH_SQL.update_alert, (*values, expected + 1, state.rule, expected)
        return await self._writer.submit(
            lambda c: c.execute(query, params).rowcount == 1, isolated=True
        )

    async def record_operator_action(self, action: OperatorAction) -> None:
        row = operator_row(action)
        await self._writer.submit(
            lambda c: c.execute(_WATCH_SQL.record_operator_action, row), isolated=True
        )

    async def operator_actions(self, *, limit: int = 100) -> list[OperatorAction]:
        def run(c: sqlite3.Connection) -> list[OperatorAction]:
            if self.readonly and not _has_table(c, "operator_actions"):
                return []
            return [operator_action(r) for r in c.execute(_WATCH_SQL.operator_actions, (limit,))]

        return await self._read(run)

    async def revoke_session(self, sid: str, *, until: float) -> None:
        await self._writer.submit(
            lambda c: c.execute(_WATCH_SQL.revoke_session, (sid, until)), isolated=True
        )

    async def session_revoked(self, sid: str) -> bool:
        def run(c: sqlite3.Connection) -> bool:
            if self.readonly and not _has_table(c, "ui_revoked_sessions"):
                return False
            return c.execute(_WATCH_SQL.session_revoked, (sid,)).fetchone() is not None

        return await self._read(run)
