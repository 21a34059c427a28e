"""Judging the rules: pure functions from the figures of one moment to ``Finding``\\ s.

``evaluate(snapshot, config)`` says, for every enabled rule that can be judged now,
whether it fires, the figure, the threshold, a sentence and the dashboard page to
open.  No IO: the figures were read before (``read_snapshot``), the decision what to
send comes after (``decide``).  A rule is left out (no finding, its state unchanged)
when it cannot be judged: ``no_events`` outside its hours, a figure the store could
not give.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..settings import UI_PATH
from ._config import (
    AlertConfig,
    BacklogAge,
    BounceRate,
    ComplaintRate,
    DeadLetters,
    NoEvents,
    RuleConfig,
    SignatureFailures,
    SinkLag,
    TrackFailures,
)

__all__ = ["Finding", "Ratio", "Snapshot", "evaluate", "judge", "span"]

WARNING = "warning"
CRITICAL = "critical"

#: The dashboard pages a message links to (paths; ``AlertConfig.link`` makes URLs).
OVERVIEW = UI_PATH
DEAD_LETTERS_PAGE = f"{UI_PATH}/dead-letters"
DELIVERABILITY_PAGE = f"{UI_PATH}/deliverability"
POLICIES_PAGE = f"{UI_PATH}/policies"


@dataclass(frozen=True)
class Ratio:
    """``part`` of ``whole`` in a rolling window (e.g. spammed of delivered); ``rate``
    is as the dashboard shows it (``vitals``), None when ``whole`` is 0."""

    part: int
    whole: int
    rate: float | None
    #: When the counts were read (an alerter reuses them for a few minutes).
    read_at: float | None = None


@dataclass(frozen=True)
class Snapshot:
    """The figures the rules judge, all read at ``now`` (unix seconds) from the
    dashboard's definitions (``vitals``).  None: the store could not say (the rules on
    it are left out this time).

    ``rejected_signatures`` counts 401s within ``signature_failures.within``;
    ``complaints`` is spammed of delivered over ``complaint_rate.window``, ``bounces``
    bounced of sent over ``bounce_rate.window``; ``track_failures`` counts failed
    Track calls within ``track_failures.within``; ``sink_lags`` maps each sink's name
    to its lag in seconds."""

    now: float
    last_received_at: float | None = None
    rejected_signatures: int | None = None
    dead_letters: int | None = None
    oldest_backlog_age: float | None = None
    sink_lags: Mapping[str, float] | None = None
    complaints: Ratio | None = None
    bounces: Ratio | None = None
    track_failures: int | None = None


@dataclass(frozen=True)
class Finding:
    """One rule's verdict.  ``value`` is the figure judged (seconds, a count or a
    fraction), ``threshold`` the limit it is judged against (for a rule with levels:
    the highest level crossed, else the lowest); ``text`` says both in words; ``page``
    is the dashboard path that shows it (``/ui/deliverability``)."""

    rule: str
    firing: bool
    value: float
    threshold: float
    text: str
    page: str
    level: str = WARNING
    #: When the figure was read, if before the check (None: at the check's ``now``).
    read_at: float | None = None


def span(seconds: float) -> str:
    """``seconds`` in words: ``45 s``, ``12 min``, ``2 h 5 min``, ``3 d 4 h``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h} h" + (f" {m} min" if m else "")
    d, h = divmod(s // 3600, 24)
    return f"{d} d" + (f" {h} h" if h else "")


def _percent(rate: float) -> str:
    return f"{rate * 100:.2f}".rstrip("0").rstrip(".") + "%"


def _no_events(rule: NoEvents, s: Snapshot) -> Finding | None:
    if s.last_received_at is None or not rule.hours.contains(s.now):
        return None  # nothing received yet, or outside the hours watched: not judged
    since = s.now - s.last_received_at
    # Silence counts from when the hours opened: a quiet night is not an outage at 08:00.
    quiet = s.now - max(s.last_received_at, rule.hours.opened_at(s.now))
    firing = quiet >= rule.silence
    hours = "" if rule.hours.all_day else f" during {rule.hours} {rule.hours.timezone}"
    text = (
        f"no event received for {span(since)} (limit {span(rule.silence)}{hours})"
        if firing
        else f"events are arriving: the last one {span(since)} ago"
    )
    return Finding(rule.name, firing, since, rule.silence, text, OVERVIEW, CRITICAL)


def _signature_failures(rule: SignatureFailures, s: Snapshot) -> Finding | None:
    if s.rejected_signatures is None:
        return None
    n = s.rejected_signatures
    firing = n >= rule.count
    text = f"{n} request(s) refused for a bad signature (401) in {span(rule.within)}" + (
        f" (limit {rule.count}): a wrong or rotated signing key? Customer.io pauses a"
        " webhook it cannot deliver to"
        if firing
        else f" (limit {rule.count})"
    )
    return Finding(rule.name, firing, n, rule.count, text, OVERVIEW, CRITICAL)


def _dead_letters(rule: DeadLetters, s: Snapshot) -> Finding | None:
    if s.dead_letters is None:
        return None
    n = s.dead_letters
    text = f"{n} dead letter(s): events whose handlers gave up (limit {rule.count})"
    return Finding(rule.name, n >= rule.count, n, rule.count, text, DEAD_LETTERS_PAGE)


def _backlog_age(rule: BacklogAge, s: Snapshot) -> Finding | None:
    if s.oldest_backlog_age is None:
        return None
    age = s.oldest_backlog_age
    text = (
        f"the oldest event waiting for its handlers has waited {span(age)}"
        f" (limit {span(rule.limit)})"
    )
    return Finding(rule.name, age > rule.limit, age, rule.limit, text, OVERVIEW)


def _sink_lag(rule: SinkLag, s: Snapshot) -> Finding | None:
    if s.sink_lags is None:
        return None
    if not s.sink_lags:
        return Finding(rule.name, False, 0.0, rule.limit, "no sink", OVERVIEW)
    name, lag = max(s.sink_lags.items(), key=lambda item: (item[1], item[0]))
    text = f"sink {name} is {span(lag)} behind the store (limit {span(rule.limit)})"
    return Finding(rule.name, lag > rule.limit, lag, rule.limit, text, OVERVIEW)


def _ratio_finding(
    rule: RuleConfig,
    ratio: Ratio | None,
    *,
    what: str,
    of: str,
    window: float,
    min_volume: int,
    levels: list[tuple[str, float]],  # (level, threshold), lowest first
) -> Finding | None:
    if ratio is None:
        return None
    page = DELIVERABILITY_PAGE
    lowest = levels[0][1]
    if ratio.rate is None or ratio.whole < min_volume:
        text = (
            f"{what}: {ratio.part} of {ratio.whole} {of} in {span(window)}, under the"
            f" minimum volume of {min_volume}"
        )
        return Finding(
            rule.name, False, ratio.rate or 0.0, lowest, text, page, read_at=ratio.read_at
        )
    crossed = [(level, limit) for level, limit in levels if ratio.rate >= limit]
    level, limit = crossed[-1] if crossed else levels[0]
    limits = ", ".join(f"{name} {_percent(t)}" for name, t in levels)
    text = (
        f"{what} {_percent(ratio.rate)} ({ratio.part} of {ratio.whole} {of} in"
        f" {span(window)}; {limits})"
    )
    return Finding(
        rule.name, bool(crossed), ratio.rate, limit, text, page, level, read_at=ratio.read_at
    )


def _complaint_rate(rule: ComplaintRate, s: Snapshot) -> Finding | None:
    return _ratio_finding(
        rule,
        s.complaints,
        what="spam complaint rate",
        of="delivered",
        window=rule.window,
        min_volume=rule.min_volume,
        levels=[(WARNING, rule.warning), (CRITICAL, rule.critical)],
    )


def _bounce_rate(rule: BounceRate, s: Snapshot) -> Finding | None:
    return _ratio_finding(
        rule,
        s.bounces,
        what="bounce rate",
        of="sent",
        window=rule.window,
        min_volume=rule.min_volume,
        levels=[(WARNING, rule.limit)],
    )


def _track_failures(rule: TrackFailures, s: Snapshot) -> Finding | None:
    if s.track_failures is None:
        return None
    n = s.track_failures
    text = (
        f"{n} Track API call(s) of the policies failed in {span(rule.within)} (limit {rule.count})"
    )
    return Finding(rule.name, n >= rule.count, n, rule.count, text, POLICIES_PAGE)


_JUDGES: dict[type[RuleConfig], Callable[[RuleConfig, Snapshot], Finding | None]] = {
    NoEvents: _no_events,  # type: ignore[dict-item]
    SignatureFailures: _signature_failures,  # type: ignore[dict-item]
    DeadLetters: _dead_letters,  # type: ignore[dict-item]
    BacklogAge: _backlog_age,  # type: ignore[dict-item]
    SinkLag: _sink_lag,  # type: ignore[dict-item]
    ComplaintRate: _complaint_rate,  # type: ignore[dict-item]
    BounceRate: _bounce_rate,  # type: ignore[dict-item]
    TrackFailures: _track_failures,  # type: ignore[dict-item]
}


def judge(rule: RuleConfig, snapshot: Snapshot) -> Finding | None:
    """``rule``'s verdict on ``snapshot``; None when it cannot be judged now."""
    return _JUDGES[type(rule)](rule, snapshot)


def evaluate(snapshot: Snapshot, config: AlertConfig) -> list[Finding]:
    """The verdicts of every enabled rule that can be judged now, in ``RULES`` order."""
    found = (judge(rule, snapshot) for rule in config.enabled)
    return [f for f in found if f is not None]
