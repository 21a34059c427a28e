"""What to send: a rule's recorded state and its new finding -> a transition, or none.

::

    (no state) or resolved --firing-->  firing     send FIRING
    firing --firing, cooldown passed--> firing     send a repeat
    firing --firing, a higher level-->  firing     send FIRING at once (warning -> critical)
    firing --not firing-------------->  resolved   send RESOLVED
    anything else                                  nothing (nothing written either)

A figure read before the recorded state last changed (``Finding.read_at``: an alerter
reuses its email rates for a few minutes) never turns it over: another process
changed it on a newer figure.  Without this, two processes whose cached rates sit on
either side of a threshold would each win the compare-and-set in turn, and send
FIRING and RESOLVED alternately.

The state lives in the store (``Watch.swap_alert``), so it survives restarts and is
shared by every process: each computes the same transition from the same state, and
the compare-and-set on ``version`` lets exactly one record it, and only that one
sends.  It is recorded *before* sending: a crash (or a notifier failing) between the
two loses that one message, never sends it twice.

``value`` is the figure of the last message (not of every evaluation: only a
transition writes), which is how a rise from warning to critical is told apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..store import AlertState
from ._rules import CRITICAL, Finding

__all__ = ["FIRING", "RESOLVED", "Transition", "decide"]

FIRING = "firing"
RESOLVED = "resolved"


@dataclass(frozen=True)
class Transition:
    """Record ``state`` if the recorded one still has version ``expected``, then send
    a ``status`` message (``repeat``: the alert was firing already)."""

    finding: Finding
    status: str
    repeat: bool
    state: AlertState
    expected: int | None
    #: When the alert started firing (``now`` for a new one).
    since: float


def decide(
    finding: Finding, state: AlertState | None, *, now: float, cooldown: float
) -> Transition | None:
    """The transition ``finding`` makes from ``state`` (the recorded one, None if the
    rule has none) at ``now``; None when nothing is to be sent."""
    if (
        state is not None
        and finding.read_at is not None
        and finding.read_at < state.changed_at
        and finding.firing != state.firing
    ):
        return None  # judged on a figure older than the change recorded
    expected = state.version if state is not None else None
    version = (expected or 0) + 1
    was_firing = state is not None and state.firing

    def record(status: str, *, firing: bool, changed_at: float, repeat: bool) -> Transition:
        new = AlertState(finding.rule, firing, finding.value, changed_at, now, version)
        since = state.changed_at if state is not None and state.firing else now
        return Transition(finding, status, repeat, new, expected, since)

    if finding.firing and not was_firing:
        return record(FIRING, firing=True, changed_at=now, repeat=False)
    if not finding.firing:
        if was_firing:
            return record(RESOLVED, firing=False, changed_at=now, repeat=False)
        return None
    assert state is not None
    escalated = (
        finding.level == CRITICAL and state.value is not None and state.value < finding.threshold
    )
    last = state.notified_at if state.notified_at is not None else state.changed_at
    if escalated or now - last >= cooldown:
        return record(FIRING, firing=True, changed_at=state.changed_at, repeat=not escalated)
    return None
