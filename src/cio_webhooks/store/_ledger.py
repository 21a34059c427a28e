"""The policies' ledger: what the store owes the policies so that every (event, rule)
calls Customer.io's Track API at most once, across duplicates, retries, replays,
restarts and any number of workers on any number of hosts.

It holds the decisions (the idempotency record, with reservations while a call is
in flight), the threshold hits, and the audit rows.  Every ``reserve`` is one
serialisable decision: two callers never both get ``Verdict.ACT`` for one
(event, rule, dry_run), nor for two threshold windows that share a hit.

What does not depend on the backend lives here, once: which decision states settle
an (event, rule), when an in-flight reservation may be taken over
(``LedgerBookkeeping``, with the process-local record of the calls this ledger is
making and of the outcomes it could not write), and which threshold window a hit
completes (``window_start``).  A backend only supplies the serialised transaction
around them.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

__all__ = [
    "AUDIT_COLUMNS",
    "IN_FLIGHT_LEASE",
    "LEDGER_TABLES",
    "SETTLED_STATES",
    "ActionInFlight",
    "AuditRow",
    "Ledger",
    "LedgerBookkeeping",
    "Reservation",
    "Standing",
    "Verdict",
    "Window",
    "owner_alive",
    "window_start",
]

#: How long an in-flight call of another live process is waited for before this one
#: takes it over: longer than a whole Track call with its retries (``POLICY_HTTP``)
#: plus the dispatcher's handler timeout.
IN_FLIGHT_LEASE = 120.0

#: Seconds between the tries to write the outcome of a call Customer.io took, when
#: writing it fails (a busy or briefly unreachable store): about 2.6 s in all, well
#: inside a policy handler's timeout.
OUTCOME_RETRY_PAUSES = (0.1, 0.5, 2.0)

#: The columns of an audit row, in the order ``recent`` and
#: ``cio-webhooks actions list`` give them.
AUDIT_COLUMNS = (
    "id",
    "created_at",
    "event_id",
    "rule",
    "person",
    "action",
    "request",
    "status",
    "detail",
    "dry_run",
)


#: The ledger's tables and their columns, as ``export_rows`` gives them.
LEDGER_TABLES: dict[str, tuple[str, ...]] = {
    "decisions": (
        "rule",
        "event_id",
        "dry_run",
        "person",
        "window_start",
        "state",
        "owner",
        "lease_until",
        "attempts",
        "updated_at",
    ),
    "hits": ("rule", "person", "event_id", "occurred_at", "dry_run"),
    "actions": AUDIT_COLUMNS,
}


#: Decision states that settle an (event, rule): live, and in dry-run.  A dry-run
#: decision does not settle a live run: switching dry-run off and replaying acts for real.
SETTLED_STATES: dict[bool, tuple[str, ...]] = {
    False: ("ok", "skipped"),
    True: ("ok", "skipped", "dry_run"),
}


class ActionInFlight(Exception):
    """Another caller is carrying out this (event, rule) right now; try again later."""


class Verdict(enum.Enum):
    """What ``Ledger.reserve`` decided."""

    ACT = "act"  #: reserved for this caller: make the call, then ``finish``
    SETTLED = "settled"  #: already done (or skipped for good): nothing to do
    NOT_DUE = "not_due"  #: a threshold hit that completes no window: nothing to do


@dataclass(frozen=True)
class Reservation:
    """An (event, rule) reserved by one ledger for one call."""

    rule: str
    event_id: str
    dry_run: bool


@dataclass(frozen=True)
class Window:
    """A threshold: act on the ``count``-th hit of a person within ``within`` seconds."""

    count: int
    within: float


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    created_at: float
    event_id: str
    rule: str
    person: str | None
    action: str
    request: str  # JSON: what was (or would be) sent, never credentials
    status: str  # ok | failed | dry_run | skipped
    detail: str | None
    dry_run: bool


def new_owner() -> str:
    """A name for this process and one of its roles, ``host:pid:token``: unique across
    hosts and restarts, and ``owner_alive`` can tell whether it still runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def owner_alive(owner: str) -> bool:
    """Could the process named by ``owner`` (``host:pid:token``) still be calling?"""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return True  # another machine: only its lease tells
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but not ours to signal
        return True
    return True


def window_start(
    hits: Iterable[float], taken: Iterable[float], *, at: float, count: int, within: float
) -> float | None:
    """The start of the window the hit at ``at`` completes, or None.

    ``hits`` are the times of the person's hits for the rule (this one included), at
    least those in ``(at - within, at + within)``; ``taken`` the starts of the windows
    acted on before, at least those in ``(at - 2 * within, at + within)``.

    A window is ``[start, start + within)``, starts at a hit, holds this hit and at
    least ``count`` hits, and overlaps no window acted on before (so it shares no hit
    with one).  The earliest such start wins."""
    times = sorted(t for t in hits if at - within < t < at + within)
    starts = list(taken)
    for start in times:
        if start > at:
            break
        if any(abs(start - other) < within for other in starts):
            continue
        if sum(1 for t in times if start <= t < start + within) >= count:
            return start
    return None


class Standing(enum.Enum):
    """Where an (event, rule) stands before ``reserve`` decides (``LedgerBookkeeping.standing``)."""

    SETTLED = "settled"  #: done, or skipped for good
    TAKE_OVER = "take_over"  #: a decision of this dry-run-ness exists and may be reserved
    NEW = "new"  #: no decision yet: a threshold weighs the hit first


Unwritten = TypeVar("Unwritten")


class LedgerBookkeeping(Generic[Unwritten]):
    """What a ledger instance knows that its tables do not: who it is (``owner``,
    ``host:pid:token``), which of its reservations it is still calling for, and which
    calls went through whose outcome it could not write (``Unwritten``: whatever the
    backend needs to write it later).  Backends subclass it and keep their SQL.

    ``reserve`` and ``finish`` are here, once: the person's key, the outcome not
    written yet, and the release.  A backend supplies ``_write`` (run an ``Unwritten``
    in one transaction), ``_reserve`` (the decision, serialised) and ``_settle`` (the
    ``Unwritten`` that settles a reservation and appends its audit row)."""

    def __init__(self) -> None:
        self.owner = new_owner()
        self._calling: set[Reservation] = set()  # reserved by this instance, call running
        # Calls made whose outcome could not be written: the next reserve records them
        # instead of calling again.
        self._unrecorded: dict[Reservation, Unwritten] = {}

    def standing(
        self,
        key: Reservation,
        rows: Sequence[tuple[str, str | None, float | None, Any]],
        *,
        now: float,
    ) -> Standing:
        """Judge the decisions on ``key``'s (rule, event): ``rows`` of ``(state, owner,
        lease_until, dry_run)`` of this dry-run-ness and, for a dry run, the live one.

        Raises ``ActionInFlight`` while a live caller holds it: another process whose
        lease runs (and, on this host, whose process still runs), or this instance
        while its call has not been released."""
        if any(row[0] in SETTLED_STATES[key.dry_run] for row in rows):
            return Standing.SETTLED
        mine = [row for row in rows if bool(row[3]) == key.dry_run]
        if not mine:
            return Standing.NEW
        state, owner, lease_until, _ = mine[0]
        if state == "in_flight":
            expired = lease_until is None or lease_until <= now
            if owner == self.owner:  # not calling any more: the call was cancelled
                abandoned = key not in self._calling or expired
            else:
                abandoned = expired or owner is None or not owner_alive(owner)
            if not abandoned:
                raise ActionInFlight(f"{key.rule} for {key.event_id} is being carried out")
        return Standing.TAKE_OVER

    def calling(self, key: Reservation) -> None:
        """Note that this instance reserved ``key`` and is about to call."""
        self._calling.add(key)

    def unrecorded(self, key: Reservation) -> Unwritten | None:
        """The outcome of a call on ``key`` that went through but was not written."""
        return self._unrecorded.get(key)

    def recorded(self, key: Reservation) -> None:
        """The outcome returned by ``unrecorded`` is written now."""
        self._unrecorded.pop(key, None)

    def not_recorded(self, key: Reservation, status: str, write: Unwritten) -> None:
        """Writing the outcome ``status`` of ``key`` failed: when Customer.io took the
        call (``ok``), a retry must record it with ``write``, not call again."""
        if status == "ok":
            self._unrecorded[key] = write

    def release(self, *, rule: str, event_id: str, dry_run: bool) -> None:
        """Forget that this ledger is calling: a reservation left ``in_flight`` (the
        call was cancelled) is then taken over by the next attempt."""
        self._calling.discard(Reservation(rule, event_id, dry_run))

    async def reserve(
        self,
        *,
        rule: str,
        event_id: str,
        person: str | None,
        dry_run: bool,
        now: float,
        threshold: Window | None = None,
        occurred_at: float | None = None,
    ) -> Verdict:
        """See ``Ledger.reserve``."""
        key = Reservation(rule, event_id, dry_run)
        unrecorded = self.unrecorded(key)
        if unrecorded is not None:  # made, but its outcome was not written: write it now
            await self._write(unrecorded)
            self.recorded(key)
            return Verdict.SETTLED
        return await self._reserve(
            key, person=person_key(person), now=now, threshold=threshold, occurred_at=occurred_at
        )

    async def finish(
        self,
        *,
        rule: str,
        event_id: str,
        person: str | None,
        action: str,
        request: Mapping[str, Any],
        status: str,
        detail: str | None,
        dry_run: bool,
        at: float,
    ) -> None:
        """See ``Ledger.finish``; ``request`` is stored as JSON."""
        key = Reservation(rule, event_id, dry_run)
        audit = (
            at,
            event_id,
            rule,
            person_key(person),
            action,
            json.dumps(request, default=str),
            status,
            detail,
            dry_run,
        )
        write = self._settle(key, status=status, at=at, audit=audit)
        # Customer.io took an ``ok`` call: its outcome is worth a few seconds' wait.  The
        # record kept by ``not_recorded`` lives in this process only; a retry of the
        # event that lands on another worker would call again once the lease ends.
        pauses = OUTCOME_RETRY_PAUSES if status == "ok" else ()
        for pause in (*pauses, None):
            try:
                await self._write(write)
                break
            except Exception:
                if pause is None:
                    self.not_recorded(key, status, write)
                    raise
            await asyncio.sleep(pause)
        self.release(rule=rule, event_id=event_id, dry_run=dry_run)

    async def _write(self, write: Unwritten) -> None:
        """Run ``write`` in one transaction."""
        raise NotImplementedError

    async def _reserve(
        self,
        key: Reservation,
        *,
        person: str | None,
        now: float,
        threshold: Window | None,
        occurred_at: float | None,
    ) -> Verdict:
        """``reserve`` in one serialised transaction (``person`` is ``person_key``'s)."""
        raise NotImplementedError

    def _settle(
        self, key: Reservation, *, status: str, at: float, audit: tuple[Any, ...]
    ) -> Unwritten:
        """What settles ``key`` as ``status`` (if this ledger still holds it) and appends
        ``audit`` (the ``actions`` row without its id), in one transaction."""
        raise NotImplementedError


#: Longest person id (UTF-8 bytes) kept as it is: PostgreSQL cannot index much more.
MAX_PERSON_BYTES = 1024


def person_key(person: str | None) -> str | None:
    """``person`` as the ledger keeps it: as it is, unless a database could not hold or
    index it (PostgreSQL) (a NUL, a lone surrogate, more than ``MAX_PERSON_BYTES``): then
    ``sha256:<hex>`` of it, so that thresholds still count each person apart."""
    if person is None:
        return None
    raw = person.encode("utf-8", "surrogatepass")
    if "\x00" in person or len(raw) > MAX_PERSON_BYTES or not _encodable(person):
        return f"sha256:{hashlib.sha256(raw).hexdigest()}"
    return person


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Ledger(Protocol):
    async def reserve(
        self,
        *,
        rule: str,
        event_id: str,
        person: str | None,
        dry_run: bool,
        now: float,
        threshold: Window | None = None,
        occurred_at: float | None = None,
    ) -> Verdict:
        """Decide, atomically, whether this caller carries out ``rule`` for ``event_id``.

        ``ACT`` reserves it (state ``in_flight``, owned by this ledger): make the call,
        then ``finish``.  A failed call, or one left in flight by a dead process (or
        one whose lease ran out), is reserved again.  Raises ``ActionInFlight`` while
        another live caller holds it.  With a ``threshold`` (and a person), the event
        is first recorded as a hit at ``occurred_at``, once: only the hit that
        completes a window acts, and a hit seen before never decides again."""
        ...

    async def finish(
        self,
        *,
        rule: str,
        event_id: str,
        person: str | None,
        action: str,
        request: Mapping[str, Any],
        status: str,
        detail: str | None,
        dry_run: bool,
        at: float,
    ) -> None:
        """Settle a reservation of this ledger (``ok``, ``failed``, ``skipped``,
        ``dry_run``) and append its audit row, in one transaction.  When the write
        fails after an ``ok`` call, the next ``reserve`` of it records the outcome
        instead of calling again."""
        ...

    def release(self, *, rule: str, event_id: str, dry_run: bool) -> None:
        """Forget that this ledger is calling: a reservation left ``in_flight`` (the
        call was cancelled) is then taken over by the next attempt."""
        ...

    async def decision(self, rule: str, event_id: str, *, dry_run: bool = False) -> str | None:
        """The state of the decision on (``event_id``, ``rule``), or None."""
        ...

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
        ...

    def export_rows(self, table: str) -> AsyncIterator[tuple[Any, ...]]:
        """``store copy``: every row of ``table`` (one of ``LEDGER_TABLES``), columns in
        the order of ``LEDGER_TABLES[table]``."""
        ...

    async def import_rows(self, table: str, rows: Sequence[tuple[Any, ...]]) -> int:
        """``store copy``: add rows exported from another ledger (the ``actions`` ids
        are renumbered); rows whose key is already here are skipped."""
        ...

    async def close(self) -> None: ...
