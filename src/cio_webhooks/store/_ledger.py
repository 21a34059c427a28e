"""The policies' ledger: what the store owes the policies so that every (event, rule)
calls Customer.io's Track API at most once, across duplicates, retries, replays,
restarts and any number of workers on any number of hosts.

It holds the decisions (the idempotency record, with reservations while a call is
in flight), the threshold hits, and the audit rows.  Every ``reserve`` is one
serialisable decision: two callers never both get ``Verdict.ACT`` for one
(event, rule, dry_run), nor for two threshold windows that share a hit.
"""

from __future__ import annotations

import enum
import os
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "AUDIT_COLUMNS",
    "IN_FLIGHT_LEASE",
    "LEDGER_TABLES",
    "ActionInFlight",
    "AuditRow",
    "Ledger",
    "Reservation",
    "Verdict",
    "Window",
    "owner_alive",
]

#: How long an in-flight call of another live process is waited for before this one
#: takes it over: longer than a whole Track call with its retries (``POLICY_HTTP``)
#: plus the dispatcher's handler timeout.
IN_FLIGHT_LEASE = 120.0

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
        self, *, limit: int = 100, event_id: str | None = None, status: str | None = None
    ) -> list[AuditRow]:
        """The newest audit rows first, optionally only those of one event or status."""
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
