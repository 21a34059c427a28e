"""What the store holds and hands out: events, jobs, outcomes and the typed results.

State of an event::

    PENDING --handlers ok--> DONE
       |  \\--a handler failed--> RETRYING --ok--> DONE
       |                            \\--attempts exhausted--> DEAD --dlq retry--> PENDING
       \\------------------------------------------------------> DISCARDED (dlq discard)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "ACK_BUCKETS",
    "TRAFFIC_COUNTS",
    "AlertState",
    "EventFilter",
    "Gauges",
    "HandlerResult",
    "HandlerRun",
    "Job",
    "JobState",
    "OperatorAction",
    "Outcome",
    "PutResult",
    "Quarantined",
    "SinkState",
    "StoreStats",
    "StoredEvent",
    "TrafficMinute",
    "Wanted",
    "minute_of",
]

#: Whether some handler wants an event of ``(object_type, metric, backfilled)``.
Wanted = Callable[[str, str, bool], bool]


class JobState(StrEnum):
    PENDING = "pending"
    RETRYING = "retrying"
    DONE = "done"
    DEAD = "dead"
    DISCARDED = "discarded"


class PutResult(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Job:
    """A stored event claimed for dispatch.

    ``attempts`` counts this claim: a claim is an attempt, so an event whose handler
    kills the process still runs out of attempts.  ``token`` identifies the claim;
    ``finish`` records an outcome only while the event still carries it.
    ``interrupted`` says the previous claim ended without an outcome (the process
    stopped, or its lease expired).  ``succeeded`` names handlers that already ran ok.
    """

    seq: int
    event_id: str
    object_type: str
    metric: str
    body: bytes
    received_at: float
    attempts: int
    token: str
    succeeded: frozenset[str] = frozenset()
    backfilled: bool = False
    interrupted: bool = False


@dataclass(frozen=True, slots=True)
class HandlerResult:
    handler: str
    error: str | None = None  # None means the handler succeeded
    #: Seconds the failed call's server asked to wait (``Retry-After``), if it said.
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the dispatcher decided for one job after running its handlers."""

    seq: int
    state: JobState
    attempts: int
    next_attempt_at: float
    last_error: str | None
    token: str  # the claim's (``Job.token``): no longer held, the outcome is dropped
    results: tuple[HandlerResult, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    event_id: str
    object_type: str
    metric: str
    occurred_at: int | None
    received_at: float
    state: JobState
    attempts: int
    next_attempt_at: float
    last_error: str | None
    body: bytes = field(repr=False)
    backfilled: bool = False


@dataclass(frozen=True, slots=True)
class Quarantined:
    id: int
    received_at: float
    event_id: str | None
    reason: str
    body: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Selects stored events.  Empty fields select everything.

    ``kinds`` are routing patterns (``email.bounced``, ``email.*``, ``*.bounced``,
    or a bare metric such as ``bounced``).
    """

    since: float | None = None
    until: float | None = None
    kinds: tuple[str, ...] = ()
    states: tuple[JobState, ...] = ()
    event_ids: tuple[str, ...] = ()
    after_seq: int = 0
    limit: int | None = None
    #: Only events whose raw body contains this text (ASCII letters in any case).
    text: str | None = None


@dataclass(frozen=True, slots=True)
class HandlerRun:
    """How one handler fared with one event."""

    handler: str
    status: str  # ok | failed
    attempts: int
    last_error: str | None
    updated_at: float


@dataclass(frozen=True, slots=True)
class Gauges:
    """Cheap numbers for ``/metrics``; each reads an index or a small table."""

    backlog: int  # pending or retrying
    dead_letters: int
    quarantined: int
    oldest_backlog_age_seconds: float


@dataclass(frozen=True, slots=True)
class StoreStats:
    """What ``cio-webhooks stats`` shows."""

    events: int
    states: dict[str, int]  # every JobState, zero included
    kinds: dict[str, int]  # "object_type.metric" -> count, most first
    quarantined: int
    oldest_unfinished_received_at: float | None


@dataclass(frozen=True, slots=True)
class SinkState:
    """Where one warehouse sink's loader stands (``SinkCursors``).

    ``seq`` is the last event loaded into the sink (0: nothing yet); the loader
    takes the events after it, in ``seq`` order.  ``updated_at`` is when the cursor
    last moved (None: never), ``last_received_at`` the ``received_at`` of the last
    event loaded.  ``error``, ``error_at`` and ``failures`` describe the failures
    since the last successful load (None, None, 0 after one).  ``owner`` and
    ``lease_until`` name the loader allowed to advance the cursor and until when.
    """

    name: str
    url: str  # display form, without credentials
    seq: int
    updated_at: float | None
    last_received_at: float | None
    error: str | None
    error_at: float | None
    failures: int
    owner: str | None
    lease_until: float | None


#: Upper bounds (seconds) of the ack-latency buckets a ``TrafficMinute`` counts in;
#: the last bucket (past 4 s, Customer.io's timeout) has no bound.
ACK_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True, slots=True)
class TrafficMinute:
    """What the receivers answered during one minute (``Watch.traffic``).

    ``minute`` is the minute's start (unix seconds, a multiple of 60).  The counts
    are requests by outcome (``app.Counters``' names); ``ack`` counts the answered
    requests per latency bucket: ``ack[i]`` took at most ``ACK_BUCKETS[i]`` seconds
    (and more than the bucket before), ``ack[-1]`` longer than 4 s.  It has
    ``len(ACK_BUCKETS) + 1`` entries, or none when nothing was answered.
    """

    minute: float
    stored: int = 0
    duplicate: int = 0
    quarantined: int = 0
    rejected_signature: int = 0
    too_large: int = 0
    store_unavailable: int = 0
    ack: tuple[int, ...] = ()


def minute_of(ts: float) -> float:
    """The start of the minute ``ts`` (unix seconds) falls in: a ``TrafficMinute``'s key."""
    return math.floor(ts / 60.0) * 60.0


#: The outcome counts of a ``TrafficMinute`` (a subset of ``app.Counters``), in order:
#: the store's ``traffic`` columns and what a ``TrafficMeter`` reads.
TRAFFIC_COUNTS: tuple[str, ...] = (
    "stored",
    "duplicate",
    "quarantined",
    "rejected_signature",
    "too_large",
    "store_unavailable",
)


@dataclass(frozen=True, slots=True)
class AlertState:
    """Where one alert rule stands, shared by every process on the store.

    ``firing`` since ``changed_at`` (or resolved since then); ``value`` is the figure
    of the last message sent about it (a rise from warning to critical is told by it);
    ``notified_at`` when that message was sent (None: never).
    ``version`` counts the changes: ``Watch.swap_alert`` only replaces the state it
    was given, so of several workers deciding the same change one wins, and sends.
    """

    rule: str
    firing: bool
    value: float | None
    changed_at: float
    notified_at: float | None
    version: int = 0


@dataclass(frozen=True, slots=True)
class OperatorAction:
    """One thing an operator did to events by hand (``Watch.record_operator_action``):
    a retry, discard or re-ingest from the dashboard or the CLI, kept in the store so
    that every process's dashboard lists it, after restarts too.

    ``user`` says who: the dashboard's login (``admin``, ``token``, ``local``) or
    ``cli:<login name>``; ``action`` what (``dlq_retry``, ``dlq_discard``,
    ``quarantine_reingest``); ``count`` the events (or bodies) it changed; ``detail``
    which ones: the filter or the ids, as the operator would read it (the store keeps
    its first 1000 characters).
    """

    at: float
    user: str
    action: str
    count: int
    detail: str = ""
