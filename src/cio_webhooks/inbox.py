"""The durable inbox: the storage contract between receiver, dispatcher and CLI.

An ``Inbox`` stores each event once (deduplicated by ``event_id``), keeps the
processing state of every event beside it, and hands due events to the
dispatcher as ``Job``s.  The receiver only calls ``put`` and ``quarantine``;
everything else is for the dispatcher, the warehouse loader and the CLI.
``SQLiteInbox`` is the embedded implementation; PostgreSQL or Redis Streams
implement the same ``Protocol`` without touching the receiver or the handlers.

State of an event::

    PENDING --handlers ok--> DONE
       |  \\--a handler failed--> RETRYING --ok--> DONE
       |                            \\--attempts exhausted--> DEAD --dlq retry--> PENDING
       \\------------------------------------------------------> DISCARDED (dlq discard)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from .events import Event

__all__ = [
    "EventFilter",
    "HandlerResult",
    "Inbox",
    "Job",
    "JobState",
    "Outcome",
    "PutResult",
    "Quarantined",
    "StoredEvent",
    "Wanted",
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


class Inbox(Protocol):
    """Durable, deduplicating event store.  Every write is durable when its await returns."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ready(self) -> bool:
        """True if the store accepts a durable write right now."""
        ...

    async def put(self, event: Event, *, handled: bool = False) -> PutResult:
        """Store ``event`` (raw bytes and routing columns) once; raise ``StoreUnavailable``.

        A ``handled`` event (no handler wants it) or a ``backfilled`` one is stored as
        DONE, so the dispatcher never has to touch it."""
        ...

    async def quarantine(
        self, body: bytes, reason: str, *, received_at: float, event_id: str | None = None
    ) -> int:
        """Keep an authentic body that is not a valid event (or not one to process);
        returns its quarantine id.  An ``event_id`` already quarantined is kept once:
        the first copy stays and its id is returned."""
        ...

    async def release_quarantined(self, ident: int, event: Event) -> PutResult:
        """Store ``event``, read again from quarantined body ``ident``, as a pending
        event (deduplicated like ``put``) and drop the quarantined copy, atomically."""
        ...

    async def purge_quarantined(self, *, received_before: float) -> int:
        """Delete quarantined bodies received before the cutoff; returns how many."""
        ...

    async def claim(
        self,
        *,
        now: float,
        limit: int,
        lease: float,
        wanted: Wanted | None = None,
        interrupted: bool = False,
    ) -> list[Job]:
        """Take up to ``limit`` due events, hiding them from other claims for ``lease`` s.

        Each claim counts one attempt and gives the event a new claim token.  With
        ``wanted``, the due events it refuses are recorded done in the same write
        instead of being claimed: they are not returned and do not count toward
        ``limit`` (one claim looks at a bounded number of due events).

        Only events whose last claim ended (or that were never claimed) are taken,
        unless ``interrupted``: then only events whose last claim never finished (its
        process died, or its lease ran out), which the dispatcher runs one at a time."""
        ...

    async def interrupted_due(self, *, now: float) -> bool:
        """True if a due event's last claim never finished (see ``claim``)."""
        ...

    async def finish(self, outcomes: Sequence[Outcome], *, now: float) -> int:
        """Record handler results and each event's next state, for each outcome whose
        claim still holds (the event still carries its token); return how many did.
        An outcome whose claim was replaced (``requeue``, ``discard``, a new claim
        after the lease) is dropped whole, handler results included."""
        ...

    async def requeue(self, where: EventFilter, *, now: float, rerun: str | None = None) -> int:
        """Make matching events due now.  Handlers that succeeded stay done, except
        ``rerun``: a handler name, or ``"*"`` for all of them (replay).  Ends any claim
        on them: an outcome still being computed for one is not recorded."""
        ...

    async def discard(self, where: EventFilter, *, now: float) -> int:
        """Give up on matching events; ends any claim on them, as ``requeue`` does."""
        ...

    def iter_events(self, where: EventFilter, *, batch: int = 1000) -> AsyncIterator[StoredEvent]:
        """Matching events in ``seq`` (arrival) order."""
        ...

    async def get_event(self, event_id: str) -> StoredEvent | None: ...

    async def handler_runs(self, seq: int) -> list[dict[str, Any]]: ...

    async def quarantined(
        self, *, limit: int = 100, ident: int | None = None, before_id: int | None = None
    ) -> list[Quarantined]:
        """Quarantined bodies, newest first: one by ``ident``, or those below ``before_id``."""
        ...

    async def stats(self) -> dict[str, Any]: ...

    async def gauges(self, *, now: float) -> dict[str, float]:
        """Cheap numbers for ``/metrics``: ``backlog`` (pending or retrying),
        ``dead_letters``, ``quarantined``, ``oldest_backlog_age_seconds``."""
        ...

    async def delivery_metrics(self, *, occurred_since: float) -> set[tuple[str, str]]:
        """``(delivery_id, metric)`` of every stored event that occurred since the cutoff
        (one without a usable time: that was received since)."""
        ...

    async def prune(self, *, received_before: float) -> int:
        """Forget finished events received before the cutoff (ends their dedupe window)."""
        ...
