"""What the backends share below their SQL: the row layouts they select, and how those
rows become the contract's results.  Each backend keeps its own queries (placeholders,
locking); the meaning of a row is defined here once."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..handlers import parse_pattern
from ._model import EventFilter, Job, JobState, StoredEvent, Wanted

__all__ = [
    "CLAIM_COLUMNS",
    "CLAIM_SCAN",
    "DUE",
    "EVENT_COLUMNS",
    "jobs",
    "split_claim",
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
    succeeded: Mapping[int, set[str]],
    token: str,
) -> list[Job]:
    """The ``Job``s of claimed rows (``CLAIM_COLUMNS``, read before the claim counted
    its attempt), in ``seq`` order."""
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
            succeeded=frozenset(succeeded.get(r[0], ())),
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
