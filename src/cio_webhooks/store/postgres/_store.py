"""``PostgresStore``: the store many receivers and workers share, on PostgreSQL.

Tables live in a schema of their own (``?schema=``, default ``cio_webhooks``),
brought up to date by ``migrate`` (``_migrations``) on ``open``.  Connections come
from a small pool whose sessions use that schema (``search_path``).

- Ingest: puts are group-committed by writer tasks (``_ingest``); a put returns after
  the COMMIT that holds it.
- Queue: a claim takes due events with ``FOR UPDATE SKIP LOCKED`` and gives them a
  new claim token; ``extend`` and ``finish`` only touch events still carrying their
  token.  Idle workers wait on LISTEN/NOTIFY (``_wakeup``).
- Operations and Metrics: plain statements on pooled connections.

``data.delivery_id`` is kept in a column filled at put (from the parsed event) or at
import (from the body), instead of being parsed out of ``body`` by SQL: a body need
not be valid UTF-8, and ``convert_from(body, 'UTF8')::jsonb`` would fail the query.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from ..._exceptions import ConfigError, StoreUnavailable
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
from .._url import StoreURL
from ._ingest import SEQ_LOCK, GroupWriter, delivery_key, insert_rows, put_row, unavailable
from ._migrations import applied_versions, migrate, migrations
from ._wakeup import Listener, channel_for

if TYPE_CHECKING:
    from ._ledger import PostgresLedger

__all__ = ["PostgresStore"]

T = TypeVar("T")
Conn = psycopg.AsyncConnection[Any]

#: Connections of one store's pool: at least, at most.
POOL_SIZE = (1, 8)
#: Seconds to wait for a connection (the server down answers a put with 503 by then).
CONNECT_TIMEOUT = 5.0
#: Rows one requeue or prune transaction changes at most: a replay of a million
#: events must not hold a million row locks in one transaction.
CHUNK = 1000

_SINKS = SinkSQL("%s")
#: ``EventFilter.text``, on bytes whatever a body holds (a body is kept as sent: it may
#: be invalid UTF-8, which convert_from(body, 'UTF8') would fail the whole query on).
#: LATIN1 maps every byte but NUL to one character and back; lower() under the "C"
#: collation folds ASCII letters only.  A NUL (not JSON, so in no body parse_event
#: accepts, but a copied store may hold one) becomes 0xFF on the way, a byte no UTF-8
#: text has: nothing matches across it, as in SQLite.
_CONTAINS = (
    "position(%s::bytea in convert_to(lower(convert_from("
    "CASE WHEN position('\\x00'::bytea in body) = 0 THEN body"
    " ELSE decode(replace(replace(regexp_replace(encode(body, 'hex'), '(..)', '\\1 ', 'g'),"
    " '00 ', 'ff '), ' ', ''), 'hex') END,"
    " 'LATIN1') COLLATE \"C\"), 'LATIN1')) > 0"
)
_WATCH = WatchSQL("%s", ack="%s::integer[]", contains=_CONTAINS)


def _where_sql(where: EventFilter) -> tuple[str, list[Any]]:
    return _WATCH.where(where)


def _run_columns(run: HandlerRun) -> tuple[Any, ...]:
    return (run.handler, run.status, run.attempts, run.last_error, run.updated_at)


def _delivery_id(body: bytes) -> str | None:
    """``data.delivery_id`` of a stored body, if it has one (``import_events``)."""
    try:
        data = json.loads(body.decode("utf-8", "replace")).get("data")
    except (ValueError, AttributeError):
        return None
    value = data.get("delivery_id") if isinstance(data, dict) else None
    return None if value is None or isinstance(value, dict | list) else delivery_key(str(value))


class PostgresStore:
    """The ``Store`` on PostgreSQL (``dsn``: a libpq URL; ``schema``: its tables' schema).

    ``readonly=True`` creates and changes nothing: no schema, no migration; ``open``
    raises ``StoreUnavailable`` when the schema is missing, and writes raise it too.
    """

    #: NOTIFY wakes workers for new work at once; polling only finds retries coming
    #: due, so an idle worker looks every two seconds and costs next to nothing.
    idle_poll = 2.0

    def __init__(self, dsn: str, *, schema: str, readonly: bool = False) -> None:
        self.dsn = dsn
        self.schema = schema
        self.readonly = readonly
        self._ident = sql.Identifier(schema)
        self._channel = channel_for(schema)
        self._notify = sql.SQL("NOTIFY {}").format(sql.Identifier(self._channel))
        self._pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            dsn,
            min_size=POOL_SIZE[0],
            max_size=POOL_SIZE[1],
            open=False,
            timeout=CONNECT_TIMEOUT,
            kwargs={"autocommit": True, "connect_timeout": int(CONNECT_TIMEOUT)},
            configure=self._configure,
            name=f"cio-{schema}",
        )
        self._writer = GroupWriter(self._pool, notify=self._notify)
        self._work = asyncio.Event()
        self._listener = Listener(dsn, self._channel, self._work)
        self._ledger: PostgresLedger | None = None
        self._opened = False
        self._closed = False
        # Whether ui_revoked_sessions exists: always once a writer has migrated; a
        # read-only look at an older schema looks until it appears (no table is
        # dropped), rather than on every dashboard request.
        self._revocations = not readonly

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        return str(StoreURL("postgresql", dsn=self.dsn, schema=self.schema))

    @property
    def commit_stats(self) -> tuple[int, int]:
        """``(commits, puts)`` of the group commits since open: puts / commits is the
        mean group size."""
        return self._writer.commits, self._writer.writes

    async def _configure(self, conn: Conn) -> None:
        await conn.execute(sql.SQL("SET search_path TO {}").format(self._ident))
        if self.readonly:
            await conn.execute("SET default_transaction_read_only = on")

    async def open(self) -> None:
        """Migrate (or, read-only, check) the schema on a connection of its own, whose
        failure says why PostgreSQL is unreachable, then open the pool."""
        if self._opened:
            return
        await self.migrate()
        try:
            await self._pool.open(wait=True, timeout=CONNECT_TIMEOUT)
        except Exception as exc:
            await self._pool.close()
            raise StoreUnavailable(
                f"cannot connect to PostgreSQL at {self._where_it_is()}: {exc}"
            ) from exc
        if not self.readonly:
            self._writer.start()
        self._opened = True

    async def migrate(self) -> list[int]:
        """Bring the schema up to date (see ``_migrations``) on a connection of its own;
        the versions applied.  A read-only store only checks that the schema exists and
        is not newer than this code.  Raises ``StoreUnavailable``, or ``ConfigError``
        for a URL libpq cannot read."""
        known = {m.version for m in migrations()}
        try:
            conninfo_to_dict(self.dsn)
        except psycopg.ProgrammingError as exc:
            # An option libpq does not know (a typo in the URL's query): fix the URL,
            # not "try again when the store is back".
            raise ConfigError(f"store URL {self.url}: {exc}") from None
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT)
            )
        except (psycopg.Error, OSError) as exc:
            # libpq's sentence names host, port, user and database, never the password.
            raise StoreUnavailable(
                f"cannot connect to PostgreSQL at {self._where_it_is()}: {exc}"
            ) from exc
        try:
            async with conn:
                if self.readonly:
                    found = await applied_versions(conn, self.schema)
                    applied: list[int] = []
                else:
                    applied = await migrate(conn, self.schema)
                    found = await applied_versions(conn, self.schema)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot migrate schema {self.schema!r}: {exc}") from exc
        if not found:
            raise StoreUnavailable(f"{self.url} holds no cio-webhooks store")
        if found - known:
            raise StoreUnavailable(
                f"{self.url} has schema version {max(found)}, newer than this cio-webhooks"
                f" ({max(known)})"
            )
        return applied

    async def close(self) -> None:
        """Commit what is queued, then close the listener, the ledger and the pool."""
        if self._closed:
            return
        self._closed = True
        await self._writer.stop()
        await self._listener.stop()
        if self._ledger is not None:
            await self._ledger.close()
        await self._pool.close()

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def ledger(self) -> PostgresLedger:
        """The policies' ledger, in this store's schema and pool."""
        if self._ledger is None:
            from ._ledger import PostgresLedger

            self._ledger = PostgresLedger(self._pool, self.schema, read_only=self.readonly)
        return self._ledger

    def _where_it_is(self) -> str:
        """host:port of the server, for error messages (never the password)."""
        try:
            info = conninfo_to_dict(self.dsn)  # host may be in the query (a socket dir)
        except psycopg.Error:
            info = {}
        host = str(info.get("host") or "localhost")
        port = info.get("port")
        return host if port is None else f"{host}:{port}"

    async def _run(
        self, doing: str, fn: Callable[[Conn], Awaitable[T]], *, idempotent: bool = False
    ) -> T:
        """``fn`` on a pooled connection; a failure of the store is ``StoreUnavailable``.
        An ``idempotent`` ``fn`` (a read) whose connection the server had cut is run
        once more on a fresh one."""
        broken = False
        try:
            try:
                async with self._pool.connection() as conn:
                    try:
                        return await fn(conn)
                    except psycopg.OperationalError:
                        broken = conn.broken
                        raise
            except psycopg.OperationalError:
                if not (idempotent and broken):
                    raise
                await self._pool.check()
                async with self._pool.connection() as conn:
                    return await fn(conn)
        except StoreUnavailable:
            raise
        except Exception as exc:
            error = unavailable(exc, doing)
            if error is None:
                raise
            raise error from exc

    async def _write(self, doing: str, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """``fn`` in one transaction on a pooled connection."""
        if self.readonly:
            raise StoreUnavailable(f"{doing}: the store is open read-only")
        if self._closed:
            raise StoreUnavailable("the store is closed")

        async def in_transaction(conn: Conn) -> T:
            async with conn.transaction():
                return await fn(conn)

        return await self._run(doing, in_transaction)

    async def _rows(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async def run(conn: Conn) -> list[tuple[Any, ...]]:
            cur = await conn.execute(query.encode(), params)
            return await cur.fetchall()

        return await self._run("reading", run, idempotent=True)

    # -- ingest ------------------------------------------------------------------------
    async def ready(self) -> bool:
        if self.readonly or self._closed or not self._opened:
            return False
        try:
            # A standby, and a primary made read-only (default_transaction_read_only,
            # as some failovers and disk-full guards do), both refuse every INSERT.
            rows = await self._rows(
                "SELECT NOT pg_is_in_recovery()"
                " AND current_setting('transaction_read_only') = 'off'"
            )
        except Exception:
            return False
        return bool(rows and rows[0][0])

    async def put(self, event: Event, *, handled: bool = False) -> PutResult:
        """See ``Ingest.put``.  Raises ``ValueError`` for an event PostgreSQL cannot
        hold (text with a NUL character, an integer past 64 bits): its put alone fails."""
        if self.readonly:
            raise StoreUnavailable("storing events: the store is open read-only")
        # A backfilled event is recorded, not handled (see SQLiteStore.put).
        row = put_row(event, "done" if handled or event.backfilled else "pending")
        result = await self._writer.put(row)
        if result is PutResult.STORED and row.state == "pending":
            self._work.set()
        return result

    async def quarantine(
        self, body: bytes, reason: str, *, received_at: float, event_id: str | None = None
    ) -> int:
        # The reason is our own prose: a NUL in it (quoted from a body) is escaped.
        # The event_id is not: one PostgreSQL cannot hold fails (ValueError), and the
        # receiver keeps the body without it.
        reason = reason.replace("\x00", "\\x00")

        async def insert(conn: Conn) -> int:
            cur = await conn.execute(
                "INSERT INTO quarantine (received_at, event_id, reason, body)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (event_id) WHERE event_id IS NOT NULL"
                " DO UPDATE SET event_id = excluded.event_id RETURNING id",
                [received_at, event_id, reason, body],
            )
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])

        return await self._value_write("quarantining", insert)

    async def _value_write(self, doing: str, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """``_write``, translating a value PostgreSQL refuses into ``ValueError``."""
        try:
            return await self._write(doing, fn)
        except (StoreUnavailable, ValueError):
            raise
        except psycopg.Error as exc:
            raise ValueError(f"PostgreSQL cannot store this: {exc}") from exc

    async def release_quarantined(self, ident: int, event: Event) -> PutResult:
        row = put_row(event, "pending")

        async def release(conn: Conn) -> PutResult:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", [SEQ_LOCK])
            stored = await insert_rows(conn, [row])
            await conn.execute("DELETE FROM quarantine WHERE id = %s", [ident])
            await conn.execute(self._notify)
            return PutResult.STORED if stored else PutResult.DUPLICATE

        result = await self._value_write("releasing", release)
        self._work.set()
        return result

    async def purge_quarantined(self, *, received_before: float) -> int:
        async def purge(conn: Conn) -> int:
            cur = await conn.execute(
                "DELETE FROM quarantine WHERE received_at < %s", [received_before]
            )
            return cur.rowcount

        return await self._write("purging quarantine", purge)

    # -- queue -------------------------------------------------------------------------
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

        async def take(conn: Conn) -> list[Job]:
            # SKIP LOCKED: rows another claim is taking are passed over, never shared;
            # FOR UPDATE re-checks the WHERE on the newest row version, so an event
            # another claim took (and committed) meanwhile is not taken again.
            cur = await conn.execute(
                f"SELECT {CLAIM_COLUMNS} FROM events WHERE {DUE} AND next_attempt_at <= %s"
                f" AND claim_token {held} ORDER BY next_attempt_at LIMIT %s"
                " FOR UPDATE SKIP LOCKED",
                [now, scan],
            )
            claimed, unwanted = split_claim(await cur.fetchall(), wanted, limit)
            if unwanted:
                await conn.execute(
                    "UPDATE events SET state = 'done', next_attempt_at = %s, last_error = NULL,"
                    " updated_at = %s, claim_token = NULL WHERE seq = ANY(%s::bigint[])",
                    [now, now, unwanted],
                )
            if not claimed:
                return []
            seqs = [r[0] for r in claimed]
            # The claim is the attempt: a handler that kills the process still uses one.
            cur = await conn.execute(
                "UPDATE events SET next_attempt_at = %s, attempts = attempts + 1,"
                " claim_token = %s WHERE seq = ANY(%s::bigint[]) RETURNING seq, body",
                [now + lease, token, seqs],
            )
            bodies = dict(await cur.fetchall())
            cur = await conn.execute(
                "SELECT seq, handler FROM handler_runs WHERE status = 'ok'"
                " AND seq = ANY(%s::bigint[])",
                [seqs],
            )
            return jobs(claimed, bodies=bodies, succeeded=await cur.fetchall(), token=token)

        return await self._write("claiming", take)

    async def interrupted_due(self, *, now: float) -> bool:
        rows = await self._rows(
            f"SELECT EXISTS (SELECT 1 FROM events WHERE {DUE} AND next_attempt_at <= %s"
            " AND claim_token IS NOT NULL)",
            [now],
        )
        return bool(rows[0][0])

    async def extend(self, jobs: Sequence[Job], *, until: float) -> int:
        if not jobs:
            return 0

        async def run(conn: Conn) -> int:
            cur = await conn.execute(
                "UPDATE events e SET next_attempt_at = %s"
                " FROM unnest(%s::bigint[], %s::text[]) AS j(seq, token)"
                f" WHERE e.seq = j.seq AND e.claim_token = j.token AND e.{DUE}",
                [until, [j.seq for j in jobs], [j.token for j in jobs]],
            )
            return cur.rowcount

        return await self._write("extending claims", run)

    async def wait_for_work(self, timeout: float) -> None:
        # Work stored by this process sets _work at once; other processes' arrives by
        # NOTIFY on the listener's own connection; the timeout is the polling fallback.
        if not self.readonly and not self._closed:
            self._listener.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._work.wait(), timeout)
        self._work.clear()

    async def finish(self, outcomes: Sequence[Outcome], *, now: float) -> int:
        if not outcomes:
            return 0

        async def record(conn: Conn) -> int:
            cur = await conn.execute(
                "UPDATE events e SET state = o.state, attempts = o.attempts,"
                " next_attempt_at = o.next_attempt_at, last_error = o.last_error,"
                " updated_at = %s, claim_token = NULL"
                " FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::float8[], %s::text[],"
                " %s::text[]) AS o(seq, state, attempts, next_attempt_at, last_error, token)"
                " WHERE e.seq = o.seq AND e.claim_token = o.token RETURNING e.seq",
                [
                    now,
                    [o.seq for o in outcomes],
                    [o.state.value for o in outcomes],
                    [o.attempts for o in outcomes],
                    [o.next_attempt_at for o in outcomes],
                    [o.last_error for o in outcomes],
                    [o.token for o in outcomes],
                ],
            )
            # An outcome whose claim was replaced (replayed, discarded or claimed again
            # meanwhile) is dropped whole: that newer decision wins.
            held = {seq for (seq,) in await cur.fetchall()}
            runs = [(o.seq, r) for o in outcomes if o.seq in held for r in o.results]
            if runs:
                await conn.execute(
                    "INSERT INTO handler_runs (seq, handler, status, attempts, last_error,"
                    " updated_at) SELECT s, h, st, 1, err, %s"
                    " FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[])"
                    " AS r(s, h, st, err)"
                    " ON CONFLICT (seq, handler) DO UPDATE SET status = excluded.status,"
                    " attempts = handler_runs.attempts + 1, last_error = excluded.last_error,"
                    " updated_at = excluded.updated_at",
                    [
                        now,
                        [seq for seq, _ in runs],
                        [r.handler for _, r in runs],
                        ["ok" if r.ok else "failed" for _, r in runs],
                        [r.error for _, r in runs],
                    ],
                )
            return len(held)

        return await self._write("recording outcomes", record)

    # -- operations --------------------------------------------------------------------
    async def requeue(self, where: EventFilter, *, now: float, rerun: str | None = None) -> int:
        where_sql, params = _where_sql(where)
        total = 0
        after = 0

        async def chunk(conn: Conn) -> list[int]:
            cur = await conn.execute(
                "UPDATE events SET state = 'pending', attempts = 0, next_attempt_at = %s,"
                " last_error = NULL, updated_at = %s, claim_token = NULL WHERE seq IN ("
                f" SELECT seq FROM events WHERE {where_sql} AND seq > %s ORDER BY seq LIMIT %s"
                " ) RETURNING seq",
                [now, now, *params, after, CHUNK],
            )
            seqs = sorted(seq for (seq,) in await cur.fetchall())
            if seqs and rerun == "*":
                await conn.execute("DELETE FROM handler_runs WHERE seq = ANY(%s::bigint[])", [seqs])
            elif seqs and rerun is not None:
                await conn.execute(
                    "DELETE FROM handler_runs WHERE handler = %s AND seq = ANY(%s::bigint[])",
                    [rerun, seqs],
                )
            if seqs:
                await conn.execute(self._notify)
            return seqs

        # One transaction per chunk: replaying a million events must not stall claims.
        while seqs := await self._write("requeueing", chunk):
            total += len(seqs)
            after = seqs[-1]
        if total:
            self._work.set()
        return total

    async def discard(self, where: EventFilter, *, now: float) -> int:
        where_sql, params = _where_sql(where)

        async def run(conn: Conn) -> int:
            cur = await conn.execute(
                "UPDATE events SET state = 'discarded', updated_at = %s, claim_token = NULL"
                f" WHERE {where_sql}",
                [now, *params],
            )
            return cur.rowcount

        return await self._write("discarding", run)

    async def import_events(
        self, events: Sequence[tuple[StoredEvent, Sequence[HandlerRun]]]
    ) -> int:
        async def run(conn: Conn) -> int:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", [SEQ_LOCK])
            added = 0
            for e, runs in events:
                cur = await self._import_one(conn, e)
                row = await cur.fetchone()
                if row is None:
                    continue
                added += 1
                if runs:
                    async with conn.cursor() as c:
                        await c.executemany(
                            "INSERT INTO handler_runs (seq, handler, status, attempts,"
                            " last_error, updated_at) VALUES (%s, %s, %s, %s, %s, %s)",
                            [(row[0], *_run_columns(r)) for r in runs],
                        )
            if added:
                await conn.execute(self._notify)
            return added

        added = await self._value_write("importing events", run)
        if added:
            self._work.set()
        return added

    async def _import_one(self, conn: Conn, e: StoredEvent) -> psycopg.AsyncCursor[Any]:
        try:
            return await conn.execute(
                "INSERT INTO events (event_id, object_type, metric, occurred_at,"
                " received_at, body, state, attempts, next_attempt_at, last_error,"
                " updated_at, backfilled, delivery_id)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (event_id) DO NOTHING RETURNING seq",
                [
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
                    e.backfilled,
                    _delivery_id(e.body),
                ],
            )
        except psycopg.DataError as exc:
            # The whole copy stops (nothing of this batch is kept): name the event.
            raise ValueError(f"event {e.event_id!r} cannot be stored in PostgreSQL: {exc}") from exc

    async def import_quarantined(self, items: Sequence[Quarantined]) -> int:
        async def run(conn: Conn) -> int:
            added = 0
            for q in items:
                cur = await conn.execute(
                    "INSERT INTO quarantine (received_at, event_id, reason, body)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT (event_id) WHERE event_id IS NOT NULL"
                    " DO NOTHING",
                    [q.received_at, q.event_id, q.reason.replace("\x00", "\\x00"), q.body],
                )
                added += cur.rowcount
            return added

        return await self._value_write("importing quarantine", run)

    async def prune(self, *, received_before: float, chunk: int = 2000) -> int:
        async def run(conn: Conn) -> int:
            cur = await conn.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE received_at < %s"
                f" AND state IN ('done', 'discarded') AND {LOADED_BY_SINKS}"
                " LIMIT %s FOR UPDATE SKIP LOCKED)"
                " RETURNING seq",
                [received_before, chunk],
            )
            seqs = [seq for (seq,) in await cur.fetchall()]
            if seqs:
                await conn.execute("DELETE FROM handler_runs WHERE seq = ANY(%s::bigint[])", [seqs])
            return len(seqs)

        async def prune_watch(conn: Conn) -> None:
            await conn.execute(_WATCH.prune_traffic, [received_before])
            await conn.execute(_WATCH.prune_operator_actions.encode(), [received_before])
            await conn.execute(_WATCH.prune_revoked_sessions.encode(), [received_before])

        # In chunks, each its own transaction (see CHUNK).
        total = 0
        while removed := await self._write("pruning", run):
            total += removed
        await self._write("pruning traffic, operator actions and ended sessions", prune_watch)
        return total

    def iter_events(self, where: EventFilter, *, batch: int = 1000) -> AsyncIterator[StoredEvent]:
        # seq order is commit order (see _ingest.SEQ_LOCK): each page is a prefix.
        async def page(part: EventFilter, size: int) -> list[tuple[Any, ...]]:
            where_sql, params = _where_sql(part)
            return await self._rows(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE {where_sql} ORDER BY seq LIMIT %s",
                [*params, size],
            )

        return pages(where, batch, page)

    async def schema_version(self) -> int:
        """The newest migration applied to the schema (``cio-webhooks migrate``)."""
        rows = await self._rows("SELECT coalesce(max(version), 0) FROM schema_migrations")
        return int(rows[0][0])

    async def get_event(self, event_id: str) -> StoredEvent | None:
        try:
            rows = await self._rows(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE event_id = %s", [event_id]
            )
        except psycopg.DataError:  # an id PostgreSQL text cannot hold is not stored here
            return None
        return stored_event(rows[0]) if rows else None

    async def handler_runs(self, seq: int) -> list[HandlerRun]:
        rows = await self._rows(
            "SELECT handler, status, attempts, last_error, updated_at FROM handler_runs"
            " WHERE seq = %s ORDER BY handler",
            [seq],
        )
        return [HandlerRun(*row) for row in rows]

    async def quarantined(
        self, *, limit: int = 100, ident: int | None = None, before_id: int | None = None
    ) -> list[Quarantined]:
        if ident is not None:
            cond, params = "WHERE id = %s", [ident]
        elif before_id is not None:
            cond, params = "WHERE id < %s", [before_id]
        else:
            cond, params = "", []
        rows = await self._rows(
            f"SELECT {QUARANTINE_COLUMNS} FROM quarantine {cond} ORDER BY id DESC LIMIT %s",
            [*params, limit],
        )
        return [quarantined(r) for r in rows]

    # -- metrics -----------------------------------------------------------------------
    async def delivery_metrics(self, *, occurred_since: float) -> set[tuple[str, str]]:
        # An event without a usable time (occurred_at NULL) was still received: judge
        # it by when it arrived, or reconcile would backfill a second copy of it.
        rows = await self._rows(
            "SELECT DISTINCT delivery_id, metric FROM events"
            " WHERE coalesce(occurred_at, received_at) >= %s AND delivery_id IS NOT NULL",
            [occurred_since],
        )
        return {(str(d), str(m)) for d, m in rows}

    async def gauges(self, *, now: float) -> Gauges:
        rows = await self._rows(
            f"SELECT (SELECT count(*) FROM events WHERE {DUE}),"
            f" (SELECT min(received_at) FROM events WHERE {DUE}),"
            " (SELECT count(*) FROM events WHERE state = 'dead'),"
            " (SELECT count(*) FROM quarantine)"
        )
        backlog, oldest, dead, held = rows[0]
        return gauges(backlog=backlog, oldest=oldest, dead=dead, quarantined=held, now=now)

    async def stats(self) -> StoreStats:
        states = await self._rows("SELECT state, count(*) FROM events GROUP BY state")
        kinds = await self._rows(
            "SELECT object_type, metric, count(*) FROM events"
            " GROUP BY object_type, metric ORDER BY 3 DESC, 1, 2"
        )
        held, oldest = (
            await self._rows(
                "SELECT (SELECT count(*) FROM quarantine),"
                f" (SELECT min(received_at) FROM events WHERE {DUE})"
            )
        )[0]
        return store_stats(states, kinds, quarantined=held, oldest=oldest)

    # -- sink cursors ------------------------------------------------------------------
    async def _changed(self, doing: str, query: str, params: Sequence[Any]) -> bool:
        """Run one sink cursor statement; True when it changed a row."""

        async def run(conn: Conn) -> bool:
            cur = await conn.execute(query.encode(), params)
            return cur.rowcount == 1

        return await self._value_write(doing, run)

    async def register_sink(self, name: str, url: str, *, now: float) -> SinkState:
        async def run(conn: Conn) -> SinkState:
            cur = await conn.execute(_SINKS.register.encode(), [name, url, now])
            row = await cur.fetchone()
            assert row is not None
            return sink_state(row)

        return await self._value_write("registering a sink", run)

    async def lease_sink(self, name: str, owner: str, *, now: float, until: float) -> bool:
        return await self._changed("leasing a sink", _SINKS.lease, [owner, until, name, owner, now])

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
        return await self._changed(
            "advancing a sink",
            _SINKS.advance,
            [to_seq, now, last_received_at, name, owner, from_seq],
        )

    async def sink_failed(self, name: str, owner: str, error: str, *, now: float) -> None:
        await self._changed(
            "recording a sink failure", _SINKS.failed, [sink_error(error), now, name, owner, now]
        )

    async def rewind_sink(self, name: str, seq: int, *, now: float) -> bool:
        return await self._changed("rewinding a sink", _SINKS.rewind, [seq, now, seq, name])

    async def forget_sink(self, name: str) -> bool:
        return await self._changed("forgetting a sink", _SINKS.forget, [name])

    async def sink_states(self) -> list[SinkState]:
        # A read-only look at a schema no newer cio-webhooks has migrated: no table, so
        # no sink.
        [(present,)] = await self._rows("SELECT to_regclass('sink_cursors') IS NOT NULL")
        if not present:
            return []
        rows = await self._rows(_SINKS.states)
        return sorted((sink_state(row) for row in rows), key=lambda s: s.name)

    async def sink_backlog(self, seq: int, *, limit: int = 1_000_000) -> tuple[int, float | None]:
        [(count, first)] = await self._rows(_SINKS.backlog, [seq, limit, seq])
        return int(count), first

    async def seq_before(self, received_at: float) -> int:
        [(before, first_since)] = await self._rows(_SINKS.seq_before, [received_at, received_at])
        return seq_before(before, first_since)

    # -- watch -------------------------------------------------------------------------
    async def _has_table(self, name: str) -> bool:
        [(present,)] = await self._rows("SELECT to_regclass(%s) IS NOT NULL", [name])
        return bool(present)

    async def browse(
        self, where: EventFilter, *, before_seq: int | None = None, limit: int = 50
    ) -> list[StoredEvent]:
        query, params = _WATCH.browse(where, before_seq=before_seq, limit=limit)
        return [stored_event(row) for row in await self._rows(query, params)]

    async def record_traffic(self, process: str, minutes: Sequence[TrafficMinute]) -> None:
        rows = traffic_rows(process, minutes, list)
        if not rows:
            return

        async def run(conn: Conn) -> None:
            async with conn.cursor() as cur:
                await cur.executemany(_WATCH.record_traffic.encode(), rows)

        await self._value_write("recording traffic", run)

    async def traffic(self, *, since: float) -> list[TrafficMinute]:
        # A read-only look at a schema no newer cio-webhooks has migrated: no table,
        # so nothing recorded (alert_states and operator_actions likewise).
        if self.readonly and not await self._has_table("traffic"):
            return []
        return traffic_minutes(await self._rows(_WATCH.traffic, [since]))

    async def kind_counts(self, *, since: float) -> dict[tuple[str, str], int]:
        rows = await self._rows(_WATCH.kind_counts, [since])
        return {(o, m): int(n) for o, m, n in rows}

    async def last_received_at(self) -> float | None:
        rows = await self._rows(_WATCH.last_received_at)
        return float(rows[0][0]) if rows else None

    async def alert_states(self) -> list[AlertState]:
        if self.readonly and not await self._has_table("alert_states"):
            return []
        return [alert_state(row) for row in await self._rows(_WATCH.alert_states)]

    async def swap_alert(self, state: AlertState, *, expected: int | None) -> bool:
        # One statement: PostgreSQL's row lock makes a second UPDATE from the same
        # version wait for the first, then find the version changed (READ COMMITTED
        # re-checks the WHERE on the newest row); a second INSERT finds the conflict.
        values = [state.firing, state.value, state.changed_at, state.notified_at]
        if expected is None:
            return await self._changed(
                "recording an alert", _WATCH.insert_alert, [state.rule, *values]
            )
        return await self._changed(
            "recording an alert",
            _WATCH.update_alert,
            [*values, expected + 1, state.rule, expected],
        )

    async def record_operator_action(self, action: OperatorAction) -> None:
        await self._changed(
            "recording an operator action", _WATCH.record_operator_action, operator_row(action)
        )

    async def operator_actions(self, *, limit: int = 100) -> list[OperatorAction]:
        if self.readonly and not await self._has_table("operator_actions"):
            return []
        return [operator_action(r) for r in await self._rows(_WATCH.operator_actions, [limit])]

    async def revoke_session(self, sid: str, *, until: float) -> None:
        await self._changed("ending a dashboard session", _WATCH.revoke_session, [sid, until])

    async def session_revoked(self, sid: str) -> bool:
        if not self._revocations:
            if not await self._has_table("ui_revoked_sessions"):
                return False
            self._revocations = True
        return bool(await self._rows(_WATCH.session_revoked, [sid]))
