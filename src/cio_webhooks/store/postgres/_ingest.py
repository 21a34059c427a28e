"""Group commit for PostgreSQL: concurrent puts share one transaction and one round trip.

``put`` queues its event and awaits a future.  A writer task drains the queue and
writes the whole batch with ONE ``INSERT ... SELECT FROM unnest(...) ON CONFLICT
(event_id) DO NOTHING RETURNING event_id``, notifies the workers in the same
transaction, commits, and only then settles the futures: an event is acked only
after the COMMIT that holds it (``synchronous_commit`` stays on).

A value PostgreSQL refuses (text with a NUL character, an integer past 64 bits)
must fail its own put, never the batch: when the batch statement fails for such a
reason, the batch is written again one event at a time, each in a savepoint, and
the refused event's put raises ``ValueError`` (the receiver quarantines the body).
A failure of the store itself (connection lost, server down) fails every put of the
batch with ``StoreUnavailable`` (the receiver answers 503).

Every transaction that draws ``seq``s takes ``SEQ_LOCK`` first and keeps it until it
commits, so ``seq`` order is commit order: a reader never sees a ``seq`` while a
lower one may still commit (the cursor rule of ``Operations.iter_events``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import psycopg
import psycopg.errors
from psycopg_pool import AsyncConnectionPool

from ..._exceptions import StoreUnavailable
from ...events import Event
from .._model import PutResult

__all__ = [
    "SEQ_LOCK",
    "GroupWriter",
    "PutRow",
    "delivery_key",
    "insert_rows",
    "put_row",
    "unavailable",
]

log = logging.getLogger("cio_webhooks.store")

#: The advisory lock held, until commit, by every transaction that adds events.
SEQ_LOCK = 0x63696F5F73657121  # "cio_seq!"

#: How many puts one group commit carries at most.
MAX_BATCH = 512

#: Seconds a put may wait, queued and then committing, before it fails with
#: ``StoreUnavailable``; a group commit that takes longer is given up as well.
#: Customer.io waits 4 s for an answer and treats no answer as a failed delivery that
#: stalls the stream for an hour; a 503 in time makes it keep the event and retry.
#: (A commit cut off here may still have happened: the retry is then a DUPLICATE.)
PUT_DEADLINE = 2.5

_INSERT = """
INSERT INTO events (event_id, object_type, metric, occurred_at, received_at, body,
                    next_attempt_at, updated_at, state, backfilled, delivery_id)
SELECT e, o, m, t, r, b, r, r, s, f, d
FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[], %s::float8[], %s::bytea[],
            %s::text[], %s::bool[], %s::text[]) AS u(e, o, m, t, r, b, s, f, d)
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""


class PutRow(NamedTuple):
    """The columns ``put`` writes for one event, in ``_INSERT``'s order (a tuple: built
    for every request, and its columns are the batch's arrays as they are)."""

    event_id: str
    object_type: str
    metric: str
    occurred_at: int | None
    received_at: float
    body: bytes
    state: str
    backfilled: bool
    delivery_id: str | None


def put_row(event: Event, state: str) -> PutRow:
    return PutRow(
        event_id=event.event_id,
        object_type=event.object_type,
        metric=event.metric,
        occurred_at=event.timestamp,
        received_at=event.received_at if event.received_at is not None else 0.0,
        body=event.raw,
        state=state,
        backfilled=event.backfilled,
        delivery_id=delivery_key(event.data.delivery_id),
    )


def delivery_key(delivery_id: str | None) -> str | None:
    """The ``delivery_id`` column of an event: its ``data.delivery_id``, or NULL when
    PostgreSQL text cannot hold it (a NUL).  The column only finds an event's delivery
    for ``reconcile`` (which no id with a NUL matches); the body keeps the value, and an
    odd field in ``data`` must not keep an event from its handlers."""
    return None if delivery_id is None or "\x00" in delivery_id else delivery_id


def unavailable(exc: BaseException, doing: str) -> StoreUnavailable | None:
    """``StoreUnavailable`` when ``exc`` says the store itself failed (not one value)."""
    if isinstance(exc, psycopg.errors.ProgramLimitExceeded):
        return None  # one value too big for PostgreSQL (an index entry, say): not a 503
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError):
        return StoreUnavailable(f"{doing} failed: {type(exc).__name__}: {exc}")
    from psycopg_pool import PoolClosed, PoolTimeout

    if isinstance(exc, PoolTimeout | PoolClosed):
        return StoreUnavailable(f"{doing} failed: no connection to PostgreSQL ({exc})")
    return None


async def insert_rows(conn: psycopg.AsyncConnection[Any], rows: Sequence[PutRow]) -> set[str]:
    """Insert ``rows`` (distinct event_ids) in one statement; the event_ids stored.
    The caller's transaction must hold ``SEQ_LOCK``."""
    cur = await conn.execute(_INSERT, _columns(rows), binary=True)
    return {event_id for (event_id,) in await cur.fetchall()}


def _columns(rows: Iterable[PutRow]) -> list[list[Any]]:
    """``rows`` as the nine arrays ``_INSERT`` unnests (``rows`` is never empty)."""
    return [list(column) for column in zip(*rows, strict=True)]


def _expire(future: asyncio.Future[PutResult]) -> None:
    if not future.done():
        future.set_exception(StoreUnavailable(f"storing events took over {PUT_DEADLINE:g} s"))


@dataclass(slots=True)
class _Put:
    row: PutRow
    future: asyncio.Future[PutResult]


class GroupWriter:
    """The writer tasks of one store: each takes what is queued and commits it at once.

    ``writers`` tasks run, so that one batch fills while another commits.
    ``notify`` is the statement that wakes workers (run when a batch holds a pending
    event)."""

    def __init__(
        self, pool: AsyncConnectionPool[Any], *, notify: psycopg.sql.Composed, writers: int = 2
    ) -> None:
        self._pool = pool
        self._notify = notify
        self._queue: asyncio.Queue[_Put | None] = asyncio.Queue()
        self._count = writers
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self.commits = 0  # transactions committed, for the group-commit measurement
        self.writes = 0  # puts those transactions carried

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"cio-pg-writer-{i}") for i in range(self._count)
        ]

    async def put(self, row: PutRow) -> PutResult:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        if not self._tasks:
            raise StoreUnavailable("the store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PutResult] = loop.create_future()
        self._queue.put_nowait(_Put(row, future))
        # The deadline counts from here, not from when a writer takes the batch: a put
        # queued behind stuck writers would otherwise wait up to twice as long, and
        # psycopg may take seconds to give up a query it was told to cancel.  The timer
        # fails the future at once; the writer then skips it (stored or not, a 503 is
        # safe).  A plain timer: asyncio.timeout cost ~4.6 us per put, this ~1.7.
        timer = loop.call_at(loop.time() + PUT_DEADLINE, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    async def stop(self) -> None:
        """Commit what is queued, then stop the writer tasks."""
        if self._closed:
            return
        self._closed = True
        for _ in self._tasks:
            self._queue.put_nowait(None)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            try:
                async with asyncio.timeout(PUT_DEADLINE):
                    results = await self._commit(batch)
            except TimeoutError as exc:
                error = StoreUnavailable(f"storing events took over {PUT_DEADLINE:g} s")
                error.__cause__ = exc
                results = [error] * len(batch)
            except Exception as exc:
                error = unavailable(exc, "storing events") or StoreUnavailable(
                    f"storing events failed: {type(exc).__name__}: {exc}"
                )
                error.__cause__ = exc
                results = [error] * len(batch)
            for put, result in zip(batch, results, strict=True):
                if put.future.done():  # the request went away; its event is stored all the same
                    continue
                if isinstance(result, BaseException):
                    put.future.set_exception(result)
                else:
                    put.future.set_result(result)
            if stop:
                return

    async def _commit(self, batch: list[_Put]) -> list[PutResult | BaseException]:
        broken: list[bool] = []
        try:
            return await self._commit_on_a_connection(batch, broken)
        except psycopg.OperationalError as exc:
            if not broken:
                raise
            # A pooled connection the server closed (restart, failover, a killed
            # backend) is found out only by using it: drop every such idle one and try
            # once more.  Safe: ON CONFLICT DO NOTHING stores nothing twice (if the lost
            # COMMIT had succeeded, those puts are answered DUPLICATE: acked all the same).
            log.info("event=group_commit_retry size=%d error=%s", len(batch), exc)
            await self._pool.check()
            return await self._commit_on_a_connection(batch, [])

    async def _commit_on_a_connection(
        self, batch: list[_Put], broken: list[bool]
    ) -> list[PutResult | BaseException]:
        """Commit ``batch``; appends to ``broken`` when its connection broke."""
        async with self._pool.connection() as conn:
            try:
                results = await self._together(conn, batch)
            except Exception as exc:
                if conn.broken:
                    broken.append(True)
                if unavailable(exc, "") is not None:
                    raise
                # A value PostgreSQL refused: find whose, one event at a time.
                log.info("event=group_commit_fallback size=%d error=%s", len(batch), exc)
                return await self._one_by_one(conn, batch)
        self.commits += 1
        self.writes += len(batch)
        return results

    async def _together(
        self, conn: psycopg.AsyncConnection[Any], batch: list[_Put]
    ) -> list[PutResult | BaseException]:
        first: dict[str, PutRow] = {}
        for put in batch:
            first.setdefault(put.row.event_id, put.row)
        # Pipelined: BEGIN, lock, INSERT, NOTIFY and COMMIT go in one round trip.  The
        # NOTIFY is sent when the batch holds a pending event, stored or (rarely, all
        # duplicates) not: a needless wake-up costs a worker one empty claim.
        async with conn.pipeline(), conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", [SEQ_LOCK])
            cur = await conn.execute(_INSERT, _columns(first.values()), binary=True)
            if any(row.state == "pending" for row in first.values()):
                await conn.execute(self._notify)
        stored = {event_id for (event_id,) in await cur.fetchall()}
        results: list[PutResult | BaseException] = []
        for put in batch:
            # Of two puts of one event_id in a batch, the first is the one inserted.
            if put.row.event_id in stored and first[put.row.event_id] is put.row:
                results.append(PutResult.STORED)
            else:
                results.append(PutResult.DUPLICATE)
        return results

    async def _one_by_one(
        self, conn: psycopg.AsyncConnection[Any], batch: list[_Put]
    ) -> list[PutResult | BaseException]:
        results: list[PutResult | BaseException] = []
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", [SEQ_LOCK])
            wake = False
            for put in batch:
                try:
                    async with conn.transaction():  # a savepoint: undoes this event alone
                        stored = await insert_rows(conn, [put.row])
                except Exception as exc:
                    if unavailable(exc, "") is not None:
                        raise
                    error = ValueError(f"PostgreSQL cannot store this event: {exc}")
                    error.__cause__ = exc
                    results.append(error)
                    continue
                results.append(PutResult.STORED if stored else PutResult.DUPLICATE)
                wake = wake or (bool(stored) and put.row.state == "pending")
            if wake:
                await conn.execute(self._notify)
        self.commits += 1
        self.writes += len(batch)
        return results


async def close_quietly(conn: psycopg.AsyncConnection[Any] | None) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):
            await conn.close()
