"""Which transition a finding makes from the recorded state: fire once, repeat after
the cooldown (not before), rise from warning to critical at once, resolve once."""

from __future__ import annotations

from cio_webhooks.alerts import CRITICAL, FIRING, RESOLVED, WARNING, Finding, decide
from cio_webhooks.store import AlertState

NOW = 1_700_000_000.0
HOUR = 3600.0


def finding(
    firing: bool, value: float = 3.0, level: str = WARNING, threshold: float = 1
) -> Finding:
    return Finding("dead_letters", firing, value, threshold, "text", "/ui", level)


def test_fires_once_then_waits_for_the_cooldown_then_repeats() -> None:
    first = decide(finding(True), None, now=NOW, cooldown=HOUR)
    assert first is not None
    assert (first.status, first.repeat, first.expected) == (FIRING, False, None)
    assert first.state == AlertState("dead_letters", True, 3.0, NOW, NOW, 1)
    state = first.state
    assert decide(finding(True), state, now=NOW + HOUR - 1, cooldown=HOUR) is None
    again = decide(finding(True, 4.0), state, now=NOW + HOUR, cooldown=HOUR)
    assert again is not None
    assert (again.status, again.repeat, again.expected, again.since) == (FIRING, True, 1, NOW)
    assert again.state == AlertState("dead_letters", True, 4.0, NOW, NOW + HOUR, 2)


def test_resolves_once() -> None:
    firing = AlertState("dead_letters", True, 3.0, NOW, NOW, 4)
    done = decide(finding(False, 0.0), firing, now=NOW + 60, cooldown=HOUR)
    assert done is not None
    assert (done.status, done.expected, done.since) == (RESOLVED, 4, NOW)
    assert done.state == AlertState("dead_letters", False, 0.0, NOW + 60, NOW + 60, 5)
    assert decide(finding(False, 0.0), done.state, now=NOW + 120, cooldown=HOUR) is None
    assert decide(finding(False, 0.0), None, now=NOW, cooldown=HOUR) is None


def test_a_rise_to_critical_is_sent_at_once_a_fall_waits() -> None:
    warned = AlertState("dead_letters", True, 0.0015, NOW, NOW, 1)
    worse = finding(True, 0.004, CRITICAL, threshold=0.003)
    rise = decide(worse, warned, now=NOW + 60, cooldown=HOUR)
    assert rise is not None
    assert rise.status == FIRING
    assert not rise.repeat
    assert rise.state.changed_at == NOW  # firing since the first message
    # critical told: critical again, or back to warning, waits for the cooldown
    assert decide(worse, rise.state, now=NOW + 120, cooldown=HOUR) is None
    back = finding(True, 0.0015, WARNING, threshold=0.001)
    assert decide(back, rise.state, now=NOW + 120, cooldown=HOUR) is None


def test_fires_again_after_resolving() -> None:
    resolved = AlertState("dead_letters", False, 0.0, NOW, NOW, 2)
    again = decide(finding(True), resolved, now=NOW + 1, cooldown=HOUR)
    assert again is not None
    assert again.status == FIRING
    assert not again.repeat
    assert again.expected == 2
    assert again.state.version == 3


def test_a_figure_read_before_the_recorded_change_does_not_turn_it_over() -> None:
    # Another process fired at NOW on fresh rates; ours were read a minute earlier.
    fired = AlertState("complaint_rate", True, 0.004, NOW, NOW, 1)
    stale = Finding("complaint_rate", False, 0.0009, 0.001, "t", "/ui", read_at=NOW - 60)
    assert decide(stale, fired, now=NOW + 30, cooldown=HOUR) is None
    fresh = Finding("complaint_rate", False, 0.0009, 0.001, "t", "/ui", read_at=NOW + 30)
    resolved = decide(fresh, fired, now=NOW + 30, cooldown=HOUR)
    assert resolved is not None
    assert resolved.status == RESOLVED
