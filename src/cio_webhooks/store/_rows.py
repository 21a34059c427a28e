"""What the backends share below their SQL: the row layouts they select, and how those
rows become the contract's results.  Each backend keeps its own queries (placeholders,
locking); the meaning of a row is defined here once."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from ..handlers import parse_pattern
from ._model import EventFilter, Gauges, Job, JobState, Quarantined, StoredEvent, StoreStats, Wanted

__all__ = [
    "CLAIM_COLUMNS",
    "CLAIM_SCAN",
    "DUE",
    "EVENT_COLUMNS",
    "QUARANTINE_COLUMNS",
    "gauges",
    "jobs",
    "pages",
    "quarantined",
    "split_claim",
    "store_stats",
    "stored_event",
    "where_clause",
]

#: Due events one claim looks at when it may skip those no handler wants: bounds the
#: time one claim holds its transaction.
CLAIM_SCAN = 1000
#: The events a claim may take.
DUE = "state IN ('pending', 'retrying')"
#: The columns ``stored_event`` reads, in its order.
EVENT_COLUMNS = (
    "seq, event_id, object_type, metric, occurred_at, received_at, state, attempts,"
    " next_attempt_at, last_error, body, backfilled"
)
#: The columns ``quarantined`` reads, in its order.
QUARANTINE_COLUMNS = "id, received_at, event_id, reason, body"
#: The columns ``split_claim`` and ``jobs`` read, in their order.
CLAIM_COLUMNS = (
    "seq, event_id, object_type, metric, received_at, attempts, backfilled, claim_token IS NOT NULL"
)


def stored_event(row: Sequence[Any]) -> StoredEvent:
    """A row of ``EVENT_COLUMNS``."""
    return StoredEvent(
        seq=row[0],
        event_id=row[1],
        object_type=row[2],
        metric=row[3],
        occurred_at=row[4],
        received_at=row[5],
        state=JobState(row[6]),
        attempts=row[7],
        next_attempt_at=row[8],
        last_error=row[9],
        body=bytes(row[10]),
        backfilled=bool(row[11]),
    )


def quarantined(row: Sequence[Any]) -> Quarantined:
    """A row of ``QUARANTINE_COLUMNS``."""
    return Quarantined(
        id=row[0], received_at=row[1], event_id=row[2], reason=row[3], body=bytes(row[4])
    )


async def pages(
    where: EventFilter,
    batch: int,
    page: Callable[[EventFilter, int], Awaitable[Sequence[Sequence[Any]]]],
) -> AsyncIterator[StoredEvent]:
    """``iter_events`` over ``page(filter, size)``: the backend's rows of
    ``EVENT_COLUMNS`` matching ``filter`` (its ``limit`` unset), in ``seq`` order, at
    most ``size`` of them."""
    after = where.after_seq
    remaining = where.limit
    while remaining is None or remaining > 0:
        size = batch if remaining is None else min(batch, remaining)
        rows = await page(dataclasses.replace(where, after_seq=after, limit=None), size)
        for row in rows:
            yield stored_event(row)
        if len(rows) < size:
            return
        after = rows[-1][0]
        if remaining is not None:
            remaining -= len(rows)


def gauges(
    *, backlog: int, oldest: float | None, dead: int, quarantined: int, now: float
) -> Gauges:
    """``Gauges`` from its counts and the ``received_at`` of the oldest due event."""
    return Gauges(
        backlog=backlog,
        dead_letters=dead,
        quarantined=quarantined,
        oldest_backlog_age_seconds=max(0.0, now - oldest) if oldest is not None else 0.0,
    )


def store_stats(
    states: Iterable[tuple[str, int]],
    kinds: Iterable[tuple[str, str, int]],
    *,
    quarantined: int,
    oldest: float | None,
) -> StoreStats:
    """``StoreStats`` from ``(state, count)`` and ``(object_type, metric, count)`` rows."""
    counts = dict(states)
    return StoreStats(
        events=sum(counts.values()),
        states={s.value: counts.get(s.value, 0) for s in JobState},
        kinds={f"{o}.{m}": n for o, m, n in kinds},
        quarantined=quarantined,
        oldest_unfinished_received_at=oldest,
    )


def split_claim(
    rows: Iterable[Sequence[Any]], wanted: Wanted | None, limit: int
) -> tuple[list[Sequence[Any]], list[int]]:
    """Due rows of ``CLAIM_COLUMNS`` -> (up to ``limit`` rows to claim, the ``seq`` of
    those no handler wants, to record done in the same transaction)."""
    claimed: list[Sequence[Any]] = []
    unwanted: list[int] = []
    for row in rows:
        if wanted is not None and not wanted(row[2], row[3], bool(row[6])):
            unwanted.append(row[0])
        elif len(claimed) < limit:
            claimed.append(row)
    return claimed, unwanted


def jobs(
    claimed: Sequence[Sequence[Any]],
    *,
    bodies: Mapping[int, bytes],
    succeeded: Iterable[tuple[int, str]],
    token: str,
) -> list[Job]:
    """The ``Job``s of claimed rows (``CLAIM_COLUMNS``, read before the claim counted
    its attempt), in ``seq`` order; ``succeeded``: their ``(seq, handler)`` runs that
    are ok."""
    done: dict[int, set[str]] = {}
    for seq, handler in succeeded:
        done.setdefault(seq, set()).add(handler)
    return [
        Job(
            seq=r[0],
            event_id=r[1],
            object_type=r[2],
            metric=r[3],
            body=bytes(bodies[r[0]]),
            received_at=r[4],
            attempts=r[5] + 1,  # the claim is the attempt
            token=token,
            succeeded=frozenset(done.get(r[0], ())),
            backfilled=bool(r[6]),
            interrupted=bool(r[7]),
        )
        for r in sorted(claimed, key=lambda r: int(r[0]))
    ]


def where_clause(where: EventFilter, mark: str) -> tuple[str, list[Any]]:
    """The SQL condition and parameters selecting ``where`` (not its ``limit``);
    ``mark`` is the backend's placeholder (``?`` or ``%s``)."""
    clauses: list[str] = [f"seq > {mark}"]
    params: list[Any] = [where.after_seq]
    if where.since is not None:
        clauses.append(f"received_at >= {mark}")
        params.append(where.since)
    if where.until is not None:
        clauses.append(f"received_at < {mark}")
        params.append(where.until)
    if where.states:
        clauses.append(f"state IN ({', '.join(mark for _ in where.states)})")
        params.extend(s.value for s in where.states)
    if where.event_ids:
        clauses.append(f"event_id IN ({', '.join(mark for _ in where.event_ids)})")
        params.extend(where.event_ids)
    if where.kinds:
        alternatives = []
        for pattern in where.kinds:
            obj, metric = parse_pattern(pattern)
            parts = []
            if obj is not None:
                parts.append(f"object_type = {mark}")
                params.append(obj)
            if metric is not None:
                parts.append(f"metric = {mark}")
                params.append(metric)
            alternatives.append(" AND ".join(parts) or "1 = 1")
        clauses.append("(" + " OR ".join(f"({a})" for a in alternatives) + ")")
    return " AND ".join(clauses), params
