"""What the backends share below their SQL: the row layouts they select, and how those
rows become the contract's results.  Each backend keeps its own queries (placeholders,
locking); the meaning of a row is defined here once."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from ..handlers import parse_pattern
from ._model import (
    TRAFFIC_COUNTS,
    AlertState,
    EventFilter,
    Gauges,
    Job,
    JobState,
    OperatorAction,
    Quarantined,
    SinkState,
    StoredEvent,
    StoreStats,
    TrafficMinute,
    Wanted,
)

__all__ = [
    "ALERT_COLUMNS",
    "CLAIM_COLUMNS",
    "CLAIM_SCAN",
    "DUE",
    "EVENT_COLUMNS",
    "LOADED_BY_SINKS",
    "OPERATOR_COLUMNS",
    "OPERATOR_DETAIL_CHARS",
    "QUARANTINE_COLUMNS",
    "SINK_COLUMNS",
    "SINK_ERROR_CHARS",
    "SinkSQL",
    "WatchSQL",
    "ack_text",
    "alert_state",
    "gauges",
    "jobs",
    "needle",
    "operator_action",
    "operator_row",
    "page_size",
    "pages",
    "quarantined",
    "seq_before",
    "sink_error",
    "sink_state",
    "split_claim",
    "store_stats",
    "stored_event",
    "traffic_minutes",
    "traffic_rows",
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


def needle(text: str) -> bytes:
    """What ``EventFilter.text`` looks for in a body lowered by the backend's
    ``contains``: its UTF-8 bytes with ASCII letters lowered (``bytes.lower`` folds
    nothing else), so that both backends compare bytes, whatever a body holds.  A lone
    surrogate (from a form decoded leniently) is its own bytes, not an error."""
    return text.encode("utf-8", "surrogatepass").lower()


def where_clause(where: EventFilter, mark: str, contains: str) -> tuple[str, list[Any]]:
    """The SQL condition and parameters selecting ``where`` (not its ``limit``);
    ``mark`` is the backend's placeholder (``?`` or ``%s``), ``contains`` its condition
    "the raw body, ASCII letters lowered, holds the bytes of the one placeholder"
    (bound to ``needle(where.text)``)."""
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
    if where.text:  # "" is in every body: no condition
        clauses.append(contains)
        params.append(needle(where.text))
    return " AND ".join(clauses), params


def page_size(where: EventFilter, limit: int) -> int:
    """How many events one ``browse`` page holds: ``limit``, and no more than
    ``where.limit`` when that is set."""
    return max(0, limit if where.limit is None else min(limit, where.limit))


#: The longest error text a sink cursor keeps (``sink_failed``).
SINK_ERROR_CHARS = 1000
#: The columns ``sink_state`` reads, in its order.
SINK_COLUMNS = (
    "name, url, seq, updated_at, last_received_at, error, error_at, failures, owner, lease_until"
)


def sink_state(row: Sequence[Any]) -> SinkState:
    """A row of ``SINK_COLUMNS``."""
    return SinkState(
        name=row[0],
        url=row[1],
        seq=int(row[2]),
        updated_at=row[3],
        last_received_at=row[4],
        error=row[5],
        error_at=row[6],
        failures=int(row[7]),
        owner=row[8],
        lease_until=row[9],
    )


def _kept(text: str, chars: int | None = None) -> str:
    """``text`` as both backends can hold it: NULs spelled out (PostgreSQL text cannot
    hold them), a lone surrogate (from an argument or a form decoded leniently) as its
    escape (UTF-8 cannot encode it), at most ``chars`` characters (the last an
    ellipsis when it was cut)."""
    text = text.replace("\x00", "\\x00")
    if any("\ud800" <= c <= "\udfff" for c in text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if chars is None or len(text) <= chars:
        return text
    return text[: chars - 1] + "\u2026"


def sink_error(text: str) -> str:
    """An error as a sink cursor keeps it (``_kept``): at most ``SINK_ERROR_CHARS``
    characters."""
    return _kept(text, SINK_ERROR_CHARS)


def seq_before(before: int | None, first_since: int | None) -> int:
    """``seq_before`` from the largest ``seq`` received before the cutoff and the
    smallest received at or after it (either None when there is none).

    When arrival order and ``seq`` order disagree (clocks of several receivers,
    ``store copy``), an event received after the cutoff may have a lower ``seq`` than
    one received before it: the cursor goes below it too, so a replay from the result
    never misses an event received since the cutoff (it may load a few older ones
    again, which a sink's upsert absorbs)."""
    seq = before or 0
    if first_since is not None:
        seq = min(seq, first_since - 1)
    return seq


class SinkSQL:
    """The sink cursor statements, in a backend's placeholder (``?`` or ``%s``).

    Lease: ``owner`` holds it until ``lease_until`` (exclusive); after that, or with no
    owner, any loader may take it.  The cursor moves only by compare-and-set on
    ``seq`` by the recorded owner (see ``SinkCursors``)."""

    def __init__(self, mark: str) -> None:
        m = mark
        self.register = (
            "INSERT INTO sink_cursors (name, url, seq, failures, registered_at)"
            f" VALUES ({m}, {m}, 0, 0, {m})"
            " ON CONFLICT (name) DO UPDATE SET url = excluded.url"
            f" RETURNING {SINK_COLUMNS}"
        )
        # Params: owner, until, name, owner, now.
        self.lease = (
            f"UPDATE sink_cursors SET owner = {m}, lease_until = {m} WHERE name = {m}"
            f" AND (owner IS NULL OR owner = {m} OR lease_until IS NULL OR lease_until <= {m})"
        )
        # Params: to_seq, now, last_received_at, name, owner, from_seq.
        self.advance = (
            f"UPDATE sink_cursors SET seq = {m}, updated_at = {m},"
            f" last_received_at = coalesce({m}, last_received_at),"
            " error = NULL, error_at = NULL, failures = 0"
            f" WHERE name = {m} AND owner = {m} AND seq = {m}"
        )
        # Params: error, now, name, owner, now.
        self.failed = (
            f"UPDATE sink_cursors SET error = {m}, error_at = {m}, failures = failures + 1"
            f" WHERE name = {m}"
            f" AND (owner IS NULL OR owner = {m} OR lease_until IS NULL OR lease_until <= {m})"
        )
        # Params: seq, now, seq, name.
        self.rewind = (
            f"UPDATE sink_cursors SET seq = {m}, updated_at = {m},"
            f" last_received_at = (SELECT received_at FROM events WHERE events.seq = {m})"
            f" WHERE name = {m}"
        )
        self.forget = f"DELETE FROM sink_cursors WHERE name = {m}"
        self.states = f"SELECT {SINK_COLUMNS} FROM sink_cursors"
        # Params: seq, limit, seq.
        self.backlog = (
            "SELECT (SELECT count(*) FROM"
            f" (SELECT seq FROM events WHERE seq > {m} ORDER BY seq LIMIT {m}) AS behind),"
            f" (SELECT received_at FROM events WHERE seq > {m} ORDER BY seq LIMIT 1)"
        )
        # Params: received_at, received_at.
        self.seq_before = (
            f"SELECT (SELECT max(seq) FROM events WHERE received_at < {m}),"
            f" (SELECT min(seq) FROM events WHERE received_at >= {m})"
        )


#: prune's condition: every registered sink has loaded the event (none is behind it).
LOADED_BY_SINKS = "NOT EXISTS (SELECT 1 FROM sink_cursors WHERE sink_cursors.seq < events.seq)"


#: The columns ``alert_state`` reads, in its order.
ALERT_COLUMNS = "rule, firing, value, changed_at, notified_at, version"


def ack_text(ack: Sequence[int]) -> str:
    """A ``TrafficMinute.ack`` as SQLite keeps it: comma-separated counts ("" for none)."""
    return ",".join(str(int(n)) for n in ack)


def traffic_rows(
    process: str, minutes: Sequence[TrafficMinute], ack: Callable[[Sequence[int]], Any]
) -> list[tuple[Any, ...]]:
    """``WatchSQL.record_traffic``'s parameters, one row per minute; ``ack`` turns the
    latency buckets into the backend's column value (``ack_text``, or a list)."""
    return [
        (m.minute, process, *(getattr(m, name) for name in TRAFFIC_COUNTS), ack(m.ack))
        for m in minutes
    ]


def _ack(value: str | Sequence[int] | None) -> tuple[int, ...]:
    """An ``ack`` column as stored (SQLite's text, PostgreSQL's array)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(int(n) for n in value.split(",")) if value else ()
    return tuple(int(n) for n in value)


def traffic_minutes(rows: Iterable[Sequence[Any]]) -> list[TrafficMinute]:
    """``Watch.traffic`` from rows of ``minute, *TRAFFIC_COUNTS, ack``, one per minute
    and process: summed per minute, oldest first.  Latency buckets add up element by
    element; a process that answered nothing that minute (no buckets) adds zeros."""
    sums: dict[float, list[int]] = {}
    acks: dict[float, list[int]] = {}
    for row in rows:
        minute = float(row[0])
        counts = sums.setdefault(minute, [0] * len(TRAFFIC_COUNTS))
        for i, n in enumerate(row[1 : 1 + len(TRAFFIC_COUNTS)]):
            counts[i] += int(n)
        total = acks.setdefault(minute, [])
        ack = _ack(row[1 + len(TRAFFIC_COUNTS)])
        if len(total) < len(ack):
            total.extend([0] * (len(ack) - len(total)))
        for i, n in enumerate(ack):
            total[i] += n
    return [
        TrafficMinute(
            minute, ack=tuple(acks[minute]), **dict(zip(TRAFFIC_COUNTS, sums[minute], strict=True))
        )
        for minute in sorted(sums)
    ]


#: The longest ``OperatorAction.detail`` the store keeps.
OPERATOR_DETAIL_CHARS = 1000
#: The columns ``operator_action`` reads and ``operator_row`` fills, in their order.
#: "user" is quoted: unquoted, PostgreSQL reads it as ``current_user``.
OPERATOR_COLUMNS = 'at, "user", action, count, detail'


def operator_row(action: OperatorAction) -> tuple[Any, ...]:
    """The values of ``OPERATOR_COLUMNS`` for ``action``, as the store keeps them."""
    return (
        action.at,
        _kept(action.user),
        _kept(action.action),
        action.count,
        _kept(action.detail, OPERATOR_DETAIL_CHARS),
    )


def operator_action(row: Sequence[Any]) -> OperatorAction:
    """A row of ``OPERATOR_COLUMNS``."""
    return OperatorAction(
        at=float(row[0]), user=row[1], action=row[2], count=int(row[3]), detail=row[4]
    )


def alert_state(row: Sequence[Any]) -> AlertState:
    """A row of ``ALERT_COLUMNS``."""
    return AlertState(
        rule=row[0],
        firing=bool(row[1]),
        value=row[2],
        changed_at=row[3],
        notified_at=row[4],
        version=int(row[5]),
    )


class WatchSQL:
    """The ``Watch`` statements, in a backend's placeholder (``?`` or ``%s``); ``ack``
    is the placeholder of a ``traffic.ack`` value (a cast, where one is needed),
    ``contains`` the backend's text condition (see ``where_clause``)."""

    def __init__(self, mark: str, *, ack: str, contains: str) -> None:
        self._mark = m = mark
        self._contains = contains
        columns = ", ".join(TRAFFIC_COUNTS)
        # Params: minute, process, *TRAFFIC_COUNTS, ack.  Replaces: a receiver writes
        # its running totals of a minute again and again.
        self.record_traffic = (
            f"INSERT INTO traffic (minute, process, {columns}, ack)"
            f" VALUES ({m}, {m}, {', '.join(m for _ in TRAFFIC_COUNTS)}, {ack})"
            " ON CONFLICT (minute, process) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in (*TRAFFIC_COUNTS, "ack"))
        )
        # Params: since.  Rows for ``traffic_minutes``.
        self.traffic = (
            f"SELECT minute, {columns}, ack FROM traffic WHERE minute >= {m} ORDER BY minute"
        )
        # Params: received_before.
        self.prune_traffic = f"DELETE FROM traffic WHERE minute < {m}"
        # Params: since.  Reads the received_at index, never all events.
        self.kind_counts = (
            "SELECT object_type, metric, count(*) FROM events"
            f" WHERE received_at >= {m} AND NOT backfilled GROUP BY object_type, metric"
        )
        # Backfilled stand-ins are rare: walking the received_at index down past them
        # is cheap.
        self.last_received_at = (
            "SELECT received_at FROM events WHERE NOT backfilled ORDER BY received_at DESC LIMIT 1"
        )
        self.alert_states = f"SELECT {ALERT_COLUMNS} FROM alert_states ORDER BY rule"
        # Params: rule, firing, value, changed_at, notified_at.  Only the first of
        # several processes inserting a rule's state at once gets a row changed.
        self.insert_alert = (
            f"INSERT INTO alert_states ({ALERT_COLUMNS}) VALUES ({m}, {m}, {m}, {m}, {m}, 1)"
            " ON CONFLICT (rule) DO NOTHING"
        )
        # Params: firing, value, changed_at, notified_at, version, rule, expected.  A
        # compare-and-set in one statement: of two processes swapping from one version,
        # the second finds it changed and updates nothing.
        self.update_alert = (
            f"UPDATE alert_states SET firing = {m}, value = {m}, changed_at = {m},"
            f" notified_at = {m}, version = {m} WHERE rule = {m} AND version = {m}"
        )
        # Params: operator_row(action).
        self.record_operator_action = (
            f"INSERT INTO operator_actions ({OPERATOR_COLUMNS}) VALUES ({m}, {m}, {m}, {m}, {m})"
        )
        # Params: limit.  Newest first; of two at one time, the one recorded last.
        self.operator_actions = (
            f"SELECT {OPERATOR_COLUMNS} FROM operator_actions ORDER BY at DESC, id DESC LIMIT {m}"
        )
        # Params: received_before (prune's cutoff).
        self.prune_operator_actions = f"DELETE FROM operator_actions WHERE at < {m}"
        # Params: sid, until.  A second logout of one session keeps the later until.
        self.revoke_session = (
            f"INSERT INTO ui_revoked_sessions (sid, until) VALUES ({m}, {m})"
            " ON CONFLICT (sid) DO UPDATE SET until = excluded.until"
            " WHERE ui_revoked_sessions.until < excluded.until"
        )
        # Params: sid.  The primary key: one index probe per dashboard request.
        self.session_revoked = f"SELECT 1 FROM ui_revoked_sessions WHERE sid = {m}"
        # Params: received_before (prune's cutoff): sessions whose cookies expired
        # before it are refused by their expiry alone.
        self.prune_revoked_sessions = f"DELETE FROM ui_revoked_sessions WHERE until < {m}"

    def where(self, where: EventFilter) -> tuple[str, list[Any]]:
        """``where_clause`` in this backend's terms."""
        return where_clause(where, self._mark, self._contains)

    def browse(
        self, where: EventFilter, *, before_seq: int | None, limit: int
    ) -> tuple[str, list[Any]]:
        """``Watch.browse``'s query and parameters (rows of ``EVENT_COLUMNS``)."""
        cond, params = self.where(where)
        if before_seq is not None:
            cond += f" AND seq < {self._mark}"
            params.append(before_seq)
        params.append(page_size(where, limit))
        query = (
            f"SELECT {EVENT_COLUMNS} FROM events WHERE {cond} ORDER BY seq DESC LIMIT {self._mark}"
        )
        return query, params
