"""``PostgresLedger``: the policies' ledger of a PostgreSQL store, in the store's schema.

The tables (``decisions``, ``hits``, ``actions``) are made by the store's migration
``0002_ledger.sql``; this module only reads and writes them, so a ledger never
creates anything, read-only or not.

Serialisation.  Every ``reserve`` is one READ COMMITTED transaction that first takes
transaction-scoped advisory locks (``pg_advisory_xact_lock``), released by its
COMMIT or ROLLBACK, and only then reads:

- always the *event lock*, keyed on (schema, rule, event_id): two workers deciding
  one (event, rule) queue up, and the second one reads the first one's committed
  decision (READ COMMITTED takes a fresh snapshot per statement, after the lock);
- for a threshold hit that has no decision yet, then the *person lock*, keyed on
  (schema, rule, person): recording the hit, counting the person's hits and choosing
  the window are one critical section, so two windows acted on never share a hit,
  whichever hosts the hits arrive on.

Locks are taken in that order only (event, then person) and each transaction holds
at most one of each, so two reserves never wait on each other in a cycle.  The keys
are the two-``int4`` form: the first int names the lock kind (``hashtext`` of a
constant), the second is ``hashtext`` of the key.  A hash collision only makes two
unrelated decisions wait for each other; it never lets two through.  This was chosen
over SERIALIZABLE with retries: the decision has side effects outside the database
(the Track call that follows an ACT), contention is per person, and a lock that
waits is simpler to reason about than a retry loop that must not double-count hits.

``finish``, ``decision``, ``recent`` and the export take no lock: a decision row is
only changed by the ledger that holds it in flight (``owner``) or by a reserve under
its event lock.

Errors of the database or the connection pool are raised as ``StoreUnavailable``
(the dispatcher retries the handler later).  A ``read_only`` ledger runs every
transaction READ ONLY, so PostgreSQL itself refuses its writes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from psycopg import AsyncCursor, sql
from psycopg.rows import TupleRow, tuple_row
from psycopg_pool import AsyncConnectionPool

from ..._exceptions import StoreUnavailable
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
    window_start,
)

__all__ = ["PostgresLedger"]

T = TypeVar("T")
Transaction = Callable[[AsyncCursor[TupleRow]], Awaitable[T]]

#: The advisory lock kinds (first key of ``pg_advisory_xact_lock(int4, int4)``).
_EVENT_LOCK = "cio_webhooks.ledger.event"
_PERSON_LOCK = "cio_webhooks.ledger.person"

#: Columns holding a boolean: other backends export them as 0/1.
_BOOLEAN_COLUMNS = {"dry_run"}


class PostgresLedger(LedgerBookkeeping[Transaction[None]]):
    """The decisions, threshold hits and audit rows of one store, shared by every
    worker on every host that uses the store.  See the module docstring for how a
    reserve is serialised.

    ``pool`` is the store's; ``schema`` names the schema holding the tables (every
    statement names it, whatever the connections' ``search_path``)."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        schema: str,
        *,
        read_only: bool = False,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.schema = schema
        self.read_only = read_only  # for commands that only look: every transaction READ ONLY
        self._q = {name: sql.Identifier(schema, name) for name in LEDGER_TABLES}

    def _sql(self, text: str) -> sql.Composed:
        """``text`` with ``{decisions}``, ``{hits}`` and ``{actions}`` qualified by the schema."""
        return sql.SQL(text).format(**self._q)

    async def _transaction(self, fn: Transaction[T]) -> T:
        """Run ``fn(cursor)`` in one transaction on a pooled connection; commit when it
        returns, roll back when it raises.  Database errors become ``StoreUnavailable``;
        anything else (``ActionInFlight``) passes unchanged."""
        try:
            async with self.pool.connection() as conn, conn.transaction():
                cur = conn.cursor(row_factory=tuple_row)
                if self.read_only:
                    await cur.execute("SET TRANSACTION READ ONLY")
                return await fn(cur)
        except psycopg.Error as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: psycopg.Error) -> Exception:
        """``StoreUnavailable`` when the store failed; ``ValueError`` when PostgreSQL
        refused a value (a NUL in a person id, one too long to index): the policy's
        retries then say what is wrong instead of blaming a healthy store."""
        text = f"ledger in schema {self.schema}: {type(exc).__name__}: {exc}"
        if isinstance(exc, psycopg.errors.DataError | psycopg.errors.ProgramLimitExceeded):
            return ValueError(f"{text} (a value PostgreSQL cannot hold)")
        return StoreUnavailable(text)

    async def _lock(self, cur: AsyncCursor[TupleRow], kind: str, *key: str) -> None:
        """Take the advisory lock ``kind`` on ``key`` until this transaction ends."""
        await cur.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s))",
            (kind, "\x1f".join((self.schema, *key))),
        )

    async def _write(self, write: Transaction[None]) -> None:
        await self._transaction(write)

    async def _reserve(
        self,
        key: Reservation,
        *,
        person: str | None,
        now: float,
        threshold: Window | None,
        occurred_at: float | None,
    ) -> Verdict:
        """Decide, atomically, whether this caller carries out ``key`` (see
        ``Ledger.reserve``)."""
        rule, event_id, dry_run = key.rule, key.event_id, key.dry_run

        async def run(cur: AsyncCursor[TupleRow]) -> Verdict:
            await self._lock(cur, _EVENT_LOCK, rule, event_id)
            await cur.execute(
                self._sql(
                    "SELECT state, owner, lease_until, dry_run FROM {decisions}"
                    " WHERE rule = %s AND event_id = %s AND (dry_run = %s OR NOT dry_run)"
                ),
                (rule, event_id, dry_run),
            )
            standing = self.standing(key, await cur.fetchall(), now=now)
            if standing is Standing.SETTLED:
                return Verdict.SETTLED
            start: float | None = None
            if standing is Standing.NEW and threshold is not None and person is not None:
                assert occurred_at is not None
                start = await self._weigh_hit(
                    cur, key, person=person, at=occurred_at, threshold=threshold
                )
                if start is None:
                    return Verdict.NOT_DUE
            await cur.execute(
                self._sql(
                    "INSERT INTO {decisions} AS d (rule, event_id, dry_run, person, window_start,"
                    " state, owner, lease_until, attempts, updated_at)"
                    " VALUES (%s, %s, %s, %s, %s, 'in_flight', %s, %s, 1, %s)"
                    " ON CONFLICT (rule, event_id, dry_run) DO UPDATE SET state = 'in_flight',"
                    " owner = excluded.owner, lease_until = excluded.lease_until,"
                    " attempts = d.attempts + 1, updated_at = excluded.updated_at"
                ),
                (rule, event_id, dry_run, person, start, self.owner, now + IN_FLIGHT_LEASE, now),
            )
            self.calling(key)
            return Verdict.ACT

        return await self._transaction(run)

    async def _weigh_hit(
        self,
        cur: AsyncCursor[TupleRow],
        key: Reservation,
        *,
        person: str,
        at: float,
        threshold: Window,
    ) -> float | None:
        """Record ``key``'s event as a hit of ``person`` at ``at``, under the person lock;
        the start of the window it completes, or None (also when it was recorded before:
        a hit seen before never decides again)."""
        await self._lock(cur, _PERSON_LOCK, key.rule, person)
        await cur.execute(
            self._sql(
                "INSERT INTO {hits} (rule, person, event_id, occurred_at, dry_run)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
            ),
            (key.rule, person, key.event_id, at, key.dry_run),
        )
        if cur.rowcount == 0:
            return None
        within = threshold.within
        await cur.execute(
            self._sql(
                "SELECT occurred_at FROM {hits} WHERE rule = %s AND person = %s AND dry_run = %s"
                " AND occurred_at > %s AND occurred_at < %s"
            ),
            (key.rule, person, key.dry_run, at - within, at + within),
        )
        hits = [float(row[0]) for row in await cur.fetchall()]
        await cur.execute(
            self._sql(
                "SELECT window_start FROM {decisions} WHERE rule = %s AND person = %s"
                " AND dry_run = %s AND window_start > %s AND window_start < %s"
            ),
            (key.rule, person, key.dry_run, at - 2 * within, at + within),
        )
        taken = [float(row[0]) for row in await cur.fetchall()]
        return window_start(hits, taken, at=at, count=threshold.count, within=within)

    def _settle(
        self, key: Reservation, *, status: str, at: float, audit: tuple[Any, ...]
    ) -> Transaction[None]:
        async def run(cur: AsyncCursor[TupleRow]) -> None:
            await cur.execute(
                self._sql(
                    "UPDATE {decisions} SET state = %s, owner = NULL, lease_until = NULL,"
                    " updated_at = %s"
                    " WHERE rule = %s AND event_id = %s AND dry_run = %s AND owner = %s"
                ),
                (status, at, key.rule, key.event_id, key.dry_run, self.owner),
            )
            await cur.execute(
                self._sql(
                    "INSERT INTO {actions} (created_at, event_id, rule, person, action, request,"
                    " status, detail, dry_run) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                ),
                audit,
            )

        return run

    async def decision(self, rule: str, event_id: str, *, dry_run: bool = False) -> str | None:
        """The state of the decision on (``event_id``, ``rule``), or None when there is none."""

        async def run(cur: AsyncCursor[TupleRow]) -> TupleRow | None:
            await cur.execute(
                self._sql(
                    "SELECT state FROM {decisions}"
                    " WHERE rule = %s AND event_id = %s AND dry_run = %s"
                ),
                (rule, event_id, dry_run),
            )
            return await cur.fetchone()

        row = await self._transaction(run)
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
        conditions: list[sql.Composable] = []
        params: list[Any] = []
        for column, value in (("event_id", event_id), ("status", status)):
            if value is not None:
                conditions.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
                params.append(value)
        if since is not None:
            conditions.append(sql.SQL("created_at >= %s"))
            params.append(since)
        query = sql.SQL("SELECT {columns} FROM {actions} {where} ORDER BY id DESC LIMIT %s").format(
            columns=sql.SQL(", ").join(map(sql.Identifier, AUDIT_COLUMNS)),
            actions=self._q["actions"],
            where=sql.SQL("WHERE ") + sql.SQL(" AND ").join(conditions)
            if conditions
            else sql.SQL(""),
        )

        async def run(cur: AsyncCursor[TupleRow]) -> list[TupleRow]:
            await cur.execute(query, [*params, limit])
            return await cur.fetchall()

        rows = await self._transaction(run)
        return [AuditRow(**dict(zip(AUDIT_COLUMNS, row, strict=True))) for row in rows]

    async def export_rows(self, table: str) -> AsyncIterator[tuple[Any, ...]]:
        columns = LEDGER_TABLES[table]
        order = ("id",) if table == "actions" else ("rule", "event_id", "dry_run")
        query = sql.SQL("SELECT {columns} FROM {table} ORDER BY {order}").format(
            columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
            table=self._q[table],
            order=sql.SQL(", ").join(map(sql.Identifier, order)),
        )
        try:
            async with self.pool.connection() as conn, conn.transaction():
                cur = conn.cursor(row_factory=tuple_row)
                if self.read_only:
                    await cur.execute("SET TRANSACTION READ ONLY")
                async for row in cur.stream(query):
                    yield tuple(row)
        except psycopg.Error as exc:
            raise self._translate(exc) from exc

    async def import_rows(self, table: str, rows: Sequence[tuple[Any, ...]]) -> int:
        columns = list(LEDGER_TABLES[table])
        if table == "actions":  # renumbered: the id is this ledger's
            columns = columns[1:]
            rows = [row[1:] for row in rows]
        booleans = [i for i, column in enumerate(columns) if column in _BOOLEAN_COLUMNS]
        values = [
            tuple(bool(v) if i in booleans and v is not None else v for i, v in enumerate(row))
            for row in rows
        ]
        query = sql.SQL(
            "INSERT INTO {table} ({columns}) VALUES ({values}) ON CONFLICT DO NOTHING"
        ).format(
            table=self._q[table],
            columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
            values=sql.SQL(", ").join(sql.Placeholder() * len(columns)),
        )

        async def run(cur: AsyncCursor[TupleRow]) -> int:
            if not values:
                return 0
            await cur.executemany(query, values)
            return cur.rowcount  # the sum over the rows: skipped ones count 0

        return await self._transaction(run)

    async def close(self) -> None:
        """Nothing to close: the pool belongs to the store, which closes it."""
