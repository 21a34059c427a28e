"""The store contract, split by who uses it.

One backend class implements all of it (``SQLiteStore``, ``PostgresStore``); each
part of the service is typed against the narrowest part it needs, so the receiver
cannot claim, the dispatcher cannot purge, and a new backend knows what it owes::

    Ingest      the receiver: put, quarantine, ready         (ack only after commit)
    Queue       the dispatcher: claim, extend, finish, wait  (leases, tokens, retries)
    Operations  operator commands: requeue, discard, read, quarantine, prune, stats
    Metrics     /metrics and reconcile: gauges, delivery_metrics
    SinkCursors the warehouse loader: one cursor (and lease) per sink
    Watch       the dashboard and the alerts: traffic per minute, counts, alert state,
                the operators' actions, the dashboard sessions ended by a logout
    Store       all of the above, plus lifecycle (open, close, migrate)

Every backend passes the same contract suite (``tests/store/``).  The policies'
ledger (``Ledger``) lives in the same store: ``store.ledger()``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..events import Event
from ._model import (
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

if TYPE_CHECKING:
    from ._ledger import Ledger

__all__ = ["Ingest", "Metrics", "Operations", "Queue", "SinkCursors", "Store", "Versioned", "Watch"]


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
        """Forget finished events received before the cutoff (ends their dedupe window);
        returns how many.  An event a registered sink has not loaded yet (its ``seq`` is
        past that sink's cursor) is kept whatever its age: a sink that is down for a
        week loses nothing.  ``SinkCursors.forget_sink`` drops a sink no longer wanted,
        and with it what it held back.  The traffic of minutes before the cutoff
        (``Watch.record_traffic``) goes too, and so do the operator actions taken before
        it (``Watch.record_operator_action``): their details may name a person (a
        filter on an email address), and the cutoff is how long the operator chose to
        keep what the store holds about people.  So do the ended dashboard sessions
        whose ``until`` is before it (``Watch.revoke_session``: their cookies have
        expired by then)."""
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


class SinkCursors(Protocol):
    """What the warehouse loader needs: per sink, how far it has loaded (a ``seq``), who
    may move that on (a lease), and how it has been failing.

    One loader at a time writes a sink: it takes the lease (``lease_sink``) and renews
    it while it works; the cursor then moves only by compare-and-set on ``seq``
    (``advance_sink``), so a loader that lost its lease, or whose sink an operator
    rewound meanwhile, cannot move it.  Times are the caller's clock (unix seconds).
    """

    async def register_sink(self, name: str, url: str, *, now: float) -> SinkState:
        """The cursor of sink ``name``, created at ``seq`` 0 (nothing loaded) when it is
        new; ``url`` (display form, without credentials) replaces the one recorded."""
        ...

    async def lease_sink(self, name: str, owner: str, *, now: float, until: float) -> bool:
        """Take or renew the lease on sink ``name`` for ``owner`` until ``until``.
        Succeeds when the sink has no owner, ``owner`` holds it already, or the lease
        has run out (``lease_until <= now``); False otherwise, and for an unknown sink."""
        ...

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
        """Move the cursor from ``from_seq`` to ``to_seq`` after a successful load, if
        ``owner`` is the lease's owner and the cursor still is at ``from_seq``; False
        (and nothing changed) otherwise, e.g. when ``rewind_sink`` came in between.

        Owner means the one recorded: a lease that ran out with nobody taking it over
        still lets its owner advance (another loader would have had to take the lease
        first).  A success clears the error and the failure count, sets ``updated_at``
        to ``now`` and records ``last_received_at`` (None keeps the previous one)."""
        ...

    async def sink_failed(self, name: str, owner: str, error: str, *, now: float) -> None:
        """Record a failed load: ``error`` (at most 1000 characters kept), ``error_at``,
        one more consecutive failure.  Ignored while another owner holds the lease."""
        ...

    async def rewind_sink(self, name: str, seq: int, *, now: float) -> bool:
        """Set the cursor of sink ``name`` to ``seq`` (``sinks replay``): the loader
        loads again every event after it.  False when the sink is unknown.  A load in
        flight then cannot advance (see ``advance_sink``).  Events ``prune`` already
        removed cannot be loaded again."""
        ...

    async def forget_sink(self, name: str) -> bool:
        """Drop the cursor of sink ``name`` (``prune`` no longer keeps events for it);
        False when it was unknown."""
        ...

    async def sink_states(self) -> list[SinkState]:
        """Every sink's cursor, by name."""
        ...

    async def sink_backlog(self, seq: int, *, limit: int = 1_000_000) -> tuple[int, float | None]:
        """How many stored events come after ``seq`` (counting at most ``limit``), and
        the ``received_at`` of the first of them (None when there is none): a sink at
        ``seq`` is that many rows and ``now - received_at`` seconds behind."""
        ...

    async def seq_before(self, received_at: float) -> int:
        """The cursor that makes a sink load again every event received at or after
        ``received_at`` (``sinks replay --since``): the largest ``seq`` of an event
        received before it (0 when none), lowered below any event received since that
        carries a smaller ``seq`` (arrival and ``seq`` order can disagree after a
        ``store copy`` or across receivers' clocks)."""
        ...


class Watch(Protocol):
    """What the dashboard and the alerts read and keep, shared by every process on
    the store: pages of events, newest first; what the receivers answered, minute by
    minute; how many events of each kind arrived lately; where each alert rule stands;
    what operators did to events by hand; which dashboard sessions a logout ended."""

    async def browse(
        self, where: EventFilter, *, before_seq: int | None = None, limit: int = 50
    ) -> list[StoredEvent]:
        """Matching events newest first (``seq`` descending), those below ``before_seq``
        when given: the dashboard's pages, each the cursor of the next.  ``where.limit``
        and ``where.after_seq`` apply as in ``iter_events``; ``limit`` caps the page."""
        ...

    async def record_traffic(self, process: str, minutes: Sequence[TrafficMinute]) -> None:
        """Set what receiver ``process`` answered in each of ``minutes`` (replacing what
        it recorded for those minutes before: a receiver writes its running totals of
        the current minute again and again, and a retried write changes nothing)."""
        ...

    async def traffic(self, *, since: float) -> list[TrafficMinute]:
        """The minutes starting at or after ``since``, summed over every receiver
        process, oldest first; minutes nobody recorded are absent."""
        ...

    async def kind_counts(self, *, since: float) -> dict[tuple[str, str], int]:
        """How many stored events of each ``(object_type, metric)`` were received at
        or after ``since`` (backfilled stand-ins left out)."""
        ...

    async def last_received_at(self) -> float | None:
        """When the newest stored event was received (backfilled ones left out); None
        when the store holds none."""
        ...

    async def alert_states(self) -> list[AlertState]:
        """Every alert rule's recorded state, by rule."""
        ...

    async def swap_alert(self, state: AlertState, *, expected: int | None) -> bool:
        """Record ``state`` for ``state.rule`` with version ``expected + 1``, if the
        recorded state still has version ``expected`` (``None``: if none is recorded,
        and it is stored with version 1).  False, and nothing changed, otherwise: another
        process changed it first."""
        ...

    async def record_operator_action(self, action: OperatorAction) -> None:
        """Keep ``action`` (a retry, discard or re-ingest done by hand) for every
        process's ``operator_actions``.  Its ``detail`` is kept to 1000 characters, and
        a NUL (or a lone surrogate) in its text is spelled out.  Raises
        ``StoreUnavailable`` when the store cannot take it (or is open read-only)."""
        ...

    async def operator_actions(self, *, limit: int = 100) -> list[OperatorAction]:
        """The ``limit`` most recent operator actions, newest first (by ``at``; of two
        at one time, the one recorded last first); an empty list on a store whose schema
        predates them (a read-only look at an older store)."""
        ...

    async def revoke_session(self, sid: str, *, until: float) -> None:
        """End dashboard session ``sid`` (a logout) for every process on the store:
        ``session_revoked`` says so until ``prune`` passes ``until`` (the session
        cookie's expiry, after which no process accepts it anyway).  Ending one twice
        keeps the later ``until``.  Raises ``StoreUnavailable`` when the store cannot
        take it (or is open read-only)."""
        ...

    async def session_revoked(self, sid: str) -> bool:
        """Whether ``revoke_session`` ended ``sid``: one primary-key lookup, made for
        every dashboard request with a session cookie.  False on a store whose schema
        predates them (a read-only look at an older store)."""
        ...


class Store(Ingest, Queue, Operations, Metrics, SinkCursors, Watch, Protocol):
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
