"""The store contract, split by who uses it.

One backend class implements all of it (``SQLiteStore``, ``PostgresStore``); each
part of the service is typed against the narrowest part it needs, so the receiver
cannot claim, the dispatcher cannot purge, and a new backend knows what it owes::

    Ingest      the receiver: put, quarantine, ready         (ack only after commit)
    Queue       the dispatcher: claim, extend, finish, wait  (leases, tokens, retries)
    Operations  operator commands: requeue, discard, read, quarantine, prune, stats
    Metrics     /metrics and reconcile: gauges, delivery_metrics
    Store       all of the above, plus lifecycle (open, close, migrate)

Every backend passes the same contract suite (``tests/store/``).  The policies'
ledger (``Ledger``) lives in the same store: ``store.ledger()``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..events import Event
from ._model import (
    EventFilter,
    Gauges,
    HandlerRun,
    Job,
    Outcome,
    PutResult,
    Quarantined,
    StoredEvent,
    StoreStats,
    Wanted,
)

if TYPE_CHECKING:
    from ._ledger import Ledger

__all__ = ["Ingest", "Metrics", "Operations", "Queue", "Store", "Versioned"]


class Ingest(Protocol):
    """What the receiver needs.  Every write is durable when its await returns."""

    async def ready(self) -> bool:
        """True if the store accepts a durable write right now."""
        ...

    async def put(self, event: Event, *, handled: bool = False) -> PutResult:
        """Store ``event`` (raw bytes and routing columns) once; raise ``StoreUnavailable``
        when the store cannot take the write (the receiver answers 503).  A value this
        backend cannot hold (PostgreSQL: a NUL character in text; any: an integer past
        64 bits) fails this put alone with another error (``ValueError``,
        ``OverflowError``): the receiver keeps the body in quarantine instead.

        A ``handled`` event (no handler wants it) or a ``backfilled`` one is stored as
        DONE, so the dispatcher never has to touch it.  Storing a pending event wakes
        the workers waiting in ``Queue.wait_for_work`` (in this process or, where the
        backend can, in others)."""
        ...

    async def quarantine(
        self, body: bytes, reason: str, *, received_at: float, event_id: str | None = None
    ) -> int:
        """Keep an authentic body that is not a valid event (or not one to process);
        returns its quarantine id.  An ``event_id`` already quarantined is kept once:
        the first copy stays and its id is returned."""
        ...


class Queue(Protocol):
    """What the dispatcher needs: claims with leases and tokens, outcomes, wake-ups."""

    #: The longest an idle worker waits without news before it looks for due work
    #: itself: how late an event nothing announced (a retry coming due, or one stored
    #: by a process this backend cannot wake) may be picked up.
    idle_poll: float

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
        process died, or its lease ran out), which the dispatcher runs one at a time.
        Two concurrent claims (other processes, other hosts) never take one event."""
        ...

    async def interrupted_due(self, *, now: float) -> bool:
        """True if a due event's last claim never finished (see ``claim``)."""
        ...

    async def extend(self, jobs: Sequence[Job], *, until: float) -> int:
        """Heartbeat: push the lease of each job whose claim still holds to ``until``;
        return how many still held."""
        ...

    async def finish(self, outcomes: Sequence[Outcome], *, now: float) -> int:
        """Record handler results and each event's next state, for each outcome whose
        claim still holds (the event still carries its token); return how many did.
        An outcome whose claim was replaced (``requeue``, ``discard``, a new claim
        after the lease) is dropped whole, handler results included."""
        ...

    async def wait_for_work(self, timeout: float) -> None:
        """Return when new work may be due (an event was put, requeued or released)
        or after ``timeout`` s, whichever is first.  Costs no CPU while waiting."""
        ...


class Operations(Protocol):
    """What operator commands need (CLI, dashboard)."""

    async def release_quarantined(self, ident: int, event: Event) -> PutResult:
        """Store ``event``, read again from quarantined body ``ident``, as a pending
        event (deduplicated like ``put``) and drop the quarantined copy, atomically."""
        ...

    async def purge_quarantined(self, *, received_before: float) -> int:
        """Delete quarantined bodies received before the cutoff; returns how many."""
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
        """Matching events in ``seq`` (arrival) order.

        A cursor on ``seq`` never skips an event: what it returns is a prefix that no
        later commit can add to (a backend whose concurrent writers may commit a lower
        ``seq`` after a higher one holds the higher one back until the lower commits),
        so a loader that resumes with ``after_seq`` = the last ``seq`` it saw misses
        nothing."""
        ...

    async def get_event(self, event_id: str) -> StoredEvent | None: ...

    async def handler_runs(self, seq: int) -> list[HandlerRun]:
        """The handlers that ran on event ``seq``, by name."""
        ...

    async def quarantined(
        self, *, limit: int = 100, ident: int | None = None, before_id: int | None = None
    ) -> list[Quarantined]:
        """Quarantined bodies, newest first: one by ``ident``, or those below ``before_id``."""
        ...

    async def prune(self, *, received_before: float) -> int:
        """Forget finished events received before the cutoff (ends their dedupe window)."""
        ...

    async def stats(self) -> StoreStats: ...

    async def import_events(
        self, events: Sequence[tuple[StoredEvent, Sequence[HandlerRun]]]
    ) -> int:
        """``store copy``: add events read from another store with their state,
        attempts, times and handler runs as they are (a claim held is not copied:
        such an event is due again).  New ``seq``s keep the given order; an
        ``event_id`` already here is skipped.  Returns how many were added."""
        ...

    async def import_quarantined(self, items: Sequence[Quarantined]) -> int:
        """``store copy``: add quarantined bodies (new ids, same order); an
        ``event_id`` already quarantined here is skipped.  Returns how many were added."""
        ...


class Metrics(Protocol):
    async def gauges(self, *, now: float) -> Gauges: ...

    async def delivery_metrics(self, *, occurred_since: float) -> set[tuple[str, str]]:
        """``(delivery_id, metric)`` of every stored event that occurred since the cutoff
        (one without a usable time: that was received since)."""
        ...


class Store(Ingest, Queue, Operations, Metrics, Protocol):
    """A whole backend.  ``url`` names it without credentials (safe to log)."""

    @property
    def url(self) -> str: ...

    async def open(self) -> None:
        """Connect, and bring the schema up to date (safe when several processes open
        one store at once).  Raises ``StoreUnavailable``."""
        ...

    async def close(self) -> None:
        """Commit what is queued, then release every connection."""
        ...

    def ledger(self) -> Ledger:
        """The policies' ledger kept in this store."""
        ...


@runtime_checkable
class Versioned(Protocol):
    """A store that says which version of its schema it holds (``cio-webhooks migrate``
    reports it).  Optional: a backend without it is reported without a version."""

    async def schema_version(self) -> int:
        """The schema version the open store is at (after ``open`` migrated it)."""
        ...
