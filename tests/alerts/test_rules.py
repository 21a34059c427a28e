"""Each rule judged on figures alone (no store, no clock): fires or not, with the
figure, the threshold, a sentence and its dashboard page."""

from __future__ import annotations

import datetime as dt
import zoneinfo

from cio_webhooks.alerts import (
    CRITICAL,
    WARNING,
    AlertConfig,
    Hours,
    NoEvents,
    Ratio,
    Snapshot,
    alert_config,
    evaluate,
    judge,
    span,
)

NOW = 1_700_000_000.0
CONFIG = AlertConfig()


def one(snapshot: Snapshot, rule: str, config: AlertConfig = CONFIG) -> tuple[bool, float, str]:
    finding = judge(config.rule(rule), snapshot)
    assert finding is not None
    assert finding.rule == rule
    return finding.firing, finding.value, finding.text


def test_nothing_known_judges_nothing() -> None:
    assert evaluate(Snapshot(now=NOW), CONFIG) == []


def test_no_events_counts_the_silence() -> None:
    firing, value, text = one(Snapshot(NOW, last_received_at=NOW - 3700), "no_events")
    assert firing
    assert value == 3700
    assert text == "no event received for 1 h 1 min (limit 1 h)"
    assert not one(Snapshot(NOW, last_received_at=NOW - 120), "no_events")[0]
    # nothing was ever received: nothing to be silent about
    assert judge(CONFIG.rule("no_events"), Snapshot(NOW)) is None


def _paris(local: str) -> float:
    zone = zoneinfo.ZoneInfo("Europe/Paris")
    return dt.datetime.fromisoformat(local).replace(tzinfo=zone).timestamp()


def test_no_events_watches_only_its_hours_counted_from_their_start() -> None:
    paris = Hours.parse("08:00-20:00", "Europe/Paris")
    rule = NoEvents(name="no_events", hours=paris, silence=1800)
    last = _paris("2026-07-01T19:50")
    # outside the hours: not judged at all (the state stays as it is)
    assert judge(rule, Snapshot(_paris("2026-07-01T23:00"), last_received_at=last)) is None
    # 08:20 the next day: 12 h 30 min since the last event, but the hours opened 20 min ago
    quiet = judge(rule, Snapshot(_paris("2026-07-02T08:20"), last_received_at=last))
    assert quiet is not None
    assert not quiet.firing
    late = judge(rule, Snapshot(_paris("2026-07-02T08:31"), last_received_at=last))
    assert late is not None
    assert late.firing
    assert late.text.endswith("(limit 30 min during 08:00-20:00 Europe/Paris)")


def test_signature_failures_count_401s() -> None:
    firing, value, text = one(Snapshot(NOW, rejected_signatures=12), "signature_failures")
    assert firing
    assert value == 12
    assert "12 request(s) refused for a bad signature (401) in 5 min (limit 10)" in text
    assert "wrong or rotated signing key" in text
    assert not one(Snapshot(NOW, rejected_signatures=9), "signature_failures")[0]


def test_dead_letters_backlog_age_and_sink_lag() -> None:
    snap = Snapshot(NOW, dead_letters=2, oldest_backlog_age=901, sink_lags={"a": 10, "bq": 1000})
    findings = {f.rule: f for f in evaluate(snap, CONFIG)}
    assert set(findings) == {"dead_letters", "backlog_age", "sink_lag"}
    assert findings["dead_letters"].firing
    assert findings["dead_letters"].value == 2
    assert findings["dead_letters"].page == "/ui/dead-letters"
    assert findings["backlog_age"].firing
    assert findings["backlog_age"].threshold == 900
    assert findings["sink_lag"].firing
    assert findings["sink_lag"].value == 1000
    assert findings["sink_lag"].text == "sink bq is 16 min behind the store (limit 15 min)"
    calm = Snapshot(NOW, dead_letters=0, oldest_backlog_age=0, sink_lags={})
    assert not any(f.firing for f in evaluate(calm, CONFIG))


def test_complaint_rate_has_two_levels_and_a_minimum_volume() -> None:
    def rate(spammed: int, delivered: int) -> Snapshot:
        return Snapshot(NOW, complaints=Ratio(spammed, delivered, spammed / delivered))

    config = CONFIG
    low = judge(config.rule("complaint_rate"), rate(5, 10_000))
    assert low is not None
    assert not low.firing
    assert low.threshold == 0.001
    warning = judge(config.rule("complaint_rate"), rate(15, 10_000))
    assert warning is not None
    assert warning.firing
    assert (warning.level, warning.threshold, warning.value) == (WARNING, 0.001, 0.0015)
    assert warning.text == (
        "spam complaint rate 0.15% (15 of 10000 delivered in 1 d; warning 0.1%, critical 0.3%)"
    )
    assert warning.page == "/ui/deliverability"
    critical = judge(config.rule("complaint_rate"), rate(35, 10_000))
    assert critical is not None
    assert critical.firing
    assert (critical.level, critical.threshold) == (CRITICAL, 0.003)
    few = judge(config.rule("complaint_rate"), rate(5, 100))  # 5%, but 100 < 1000 delivered
    assert few is not None
    assert not few.firing
    assert "under the minimum volume of 1000" in few.text


def test_bounce_rate_and_track_failures() -> None:
    config = alert_config({"rules": {"bounce_rate": {"limit": "2%", "min_volume": 10}}})
    snap = Snapshot(NOW, bounces=Ratio(3, 100, 0.03), track_failures=5)
    findings = {f.rule: f for f in evaluate(snap, config)}
    assert findings["bounce_rate"].firing
    assert findings["bounce_rate"].threshold == 0.02
    assert findings["track_failures"].firing
    assert findings["track_failures"].value == 5
    assert findings["track_failures"].text == (
        "5 Track API call(s) of the policies failed in 15 min (limit 5)"
    )


def test_a_disabled_rule_is_not_judged() -> None:
    config = alert_config({"rules": {"dead_letters": {"enabled": False}}})
    assert evaluate(Snapshot(NOW, dead_letters=5), config) == []


def test_span_reads_well() -> None:
    assert [span(s) for s in (4.6, 60, 3599, 3600, 3660, 86400, 90000)] == [
        "5 s",
        "1 min",
        "59 min",
        "1 h",
        "1 h 1 min",
        "1 d",
        "1 d 1 h",
    ]
