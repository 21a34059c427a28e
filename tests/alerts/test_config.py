"""The alerts file: defaults on without one, every key read, every mistake one line
naming the key, and a notifier's URL never shown."""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from pathlib import Path

import pytest

from cio_webhooks import ConfigError
from cio_webhooks.alerts import (
    RULES,
    AlertConfig,
    ComplaintRate,
    Hours,
    NoEvents,
    load_alerts,
    parse_duration,
    parse_rate,
)
from cio_webhooks.settings import DEFAULT_ALERT_COOLDOWN, DEFAULT_DASHBOARD_URL

SECRET = "https://hooks.slack.com/services/T000/B000/very-secret-token"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "alerts.toml"
    path.write_text(text)
    return path


def test_no_file_means_every_rule_on_and_the_log_only() -> None:
    config = load_alerts(None)
    assert [r.name for r in config.enabled] == list(RULES)
    assert config.notify.log
    assert config.notify.slack is None
    assert config.notify.webhook is None
    assert config.dashboard_url == DEFAULT_DASHBOARD_URL
    assert all(config.cooldown_of(r) == DEFAULT_ALERT_COOLDOWN for r in config.rules)
    rate = config.rule("complaint_rate")
    assert isinstance(rate, ComplaintRate)
    assert (rate.warning, rate.critical) == (0.001, 0.003)


def test_a_file_sets_rules_notifiers_and_links(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
dashboard_url = "https://hooks.example.com/"
cooldown = "2h"

[notify]
slack = "{SECRET}"
webhook = "http://127.0.0.1:9/alerts"
log = false

[rules.no_events]
silence = "30m"
hours = "08:00-20:00"
timezone = "Europe/Paris"
cooldown = "15m"

[rules.complaint_rate]
warning = "0.2%"
critical = 0.005
window = "7d"
min_volume = 500

[rules.track_failures]
enabled = false
""",
    )
    config = load_alerts(path)
    no_events = config.rule("no_events")
    assert isinstance(no_events, NoEvents)
    assert no_events.silence == 1800
    assert no_events.hours == Hours(8 * 60, 20 * 60, "Europe/Paris")
    assert config.cooldown_of(no_events) == 900
    assert config.cooldown_of(config.rule("dead_letters")) == 7200
    rate = config.rule("complaint_rate")
    assert isinstance(rate, ComplaintRate)
    assert (rate.warning, rate.critical, rate.window, rate.min_volume) == (
        0.002,
        0.005,
        7 * 86400,
        500,
    )
    assert "track_failures" not in [r.name for r in config.enabled]
    assert config.notify.slack == SECRET
    assert not config.notify.log
    assert config.link("/ui/deliverability") == "https://hooks.example.com/ui/deliverability"
    assert SECRET not in repr(config)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("rules = [", "alerts"),  # not TOML
        ("colour = 1", "unknown key(s) colour"),
        ("cooldown = 5", "cooldown: must be a duration"),
        ("[rules.nope]", "rules.nope: unknown rule"),
        ("[rules.dead_letters]\ncuont = 2", "rules.dead_letters: unknown key(s) cuont"),
        ("[rules.dead_letters]\ncount = 0", "rules.dead_letters.count: must be a whole number"),
        ("[rules.dead_letters]\nenabled = 'yes'", "rules.dead_letters.enabled: must be true"),
        ("[rules.backlog_age]\nlimit = '15 minutes'", "rules.backlog_age.limit: must be a dur"),
        ("[rules.bounce_rate]\nlimit = 5", "rules.bounce_rate.limit: must be a rate"),
        ("[rules.bounce_rate]\nlimit = '150%'", "rules.bounce_rate.limit: must be a rate"),
        ("[rules.complaint_rate]\ncritical = '0.05%'", "rules.complaint_rate.critical: must be"),
        ("[rules.no_events]\nhours = '8-20'", "rules.no_events.hours: must look like"),
        ("[rules.no_events]\nhours = '25:00-26:00'", "rules.no_events.hours: must look like"),
        ("[rules.no_events]\nhours = '08:00-08:00'", "rules.no_events.hours: the window is empty"),
        ("[rules.no_events]\ntimezone = 'Mars/Olympus'", "rules.no_events.timezone: unknown"),
        ("[rules.signature_failures]\nwithin = '2h'", "rules.signature_failures.within: at most"),
        ("[notify]\nemail = 'x'", "notify: unknown key(s) email"),
        ("[notify]\nlog = 1", "notify.log: must be true or false"),
        ("dashboard_url = 'hooks.example.com'", "dashboard_url: must be an http"),
        ("rules = 3", "rules: use [rules.<name>] tables"),
    ],
)
def test_a_mistake_is_one_line_naming_the_key(tmp_path: Path, text: str, says: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_alerts(path)
    message = str(caught.value)
    assert message.startswith(f"alerts {path}:")
    assert says in message
    assert "\n" not in message


def test_a_bad_notifier_url_is_refused_without_being_quoted(tmp_path: Path) -> None:
    secret = "ftp://hooks.example.com/services/very-secret-token"
    with pytest.raises(ConfigError) as caught:
        load_alerts(write(tmp_path, f'[notify]\nwebhook = "{secret}"'))
    assert "notify.webhook: must be an http" in str(caught.value)
    assert "very-secret-token" not in str(caught.value)


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read alerts"):
        load_alerts(tmp_path / "nope.toml")


def test_durations_and_rates() -> None:
    assert [parse_duration(t) for t in ("90s", "15m", "1.5h", "7d")] == [90, 900, 5400, 604800]
    assert parse_rate("0.3%") == pytest.approx(0.003)
    assert parse_rate(0.05) == 0.05
    for bad in ("0m", "-5m", 5, "5"):
        with pytest.raises(ConfigError):
            parse_duration(bad)
    for bad_rate in ("0%", "abc%", 2, True):
        with pytest.raises(ConfigError):
            parse_rate(bad_rate)


def _at(local: str, zone: str) -> float:
    return dt.datetime.fromisoformat(local).replace(tzinfo=zoneinfo.ZoneInfo(zone)).timestamp()


def test_hours_in_a_time_zone_and_across_midnight() -> None:
    day = Hours.parse("08:00-20:00", "Europe/Paris")
    assert day.contains(_at("2026-07-01T08:00", "Europe/Paris"))
    assert not day.contains(_at("2026-07-01T07:59", "Europe/Paris"))
    assert not day.contains(_at("2026-07-01T20:00", "Europe/Paris"))
    # 08:30 in Paris in summer is 06:30 UTC: the window opened at 06:00 UTC
    assert day.opened_at(_at("2026-07-01T08:30", "Europe/Paris")) == _at(
        "2026-07-01T08:00", "Europe/Paris"
    )
    night = Hours.parse("22:00-06:00", "UTC")
    assert night.contains(_at("2026-07-01T23:00", "UTC"))
    assert night.contains(_at("2026-07-02T05:59", "UTC"))
    assert not night.contains(_at("2026-07-02T06:00", "UTC"))
    assert night.opened_at(_at("2026-07-02T03:00", "UTC")) == _at("2026-07-01T22:00", "UTC")
    assert Hours().contains(0)
    assert Hours().all_day
    assert str(night) == "22:00-06:00"


def test_the_default_config_object_equals_the_loaded_defaults() -> None:
    assert load_alerts(None, {}) == AlertConfig()  # {}: whatever this shell exports


def test_the_file_in_the_docs_loads(tmp_path: Path) -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "alerts.md"
    [example] = re.findall(r"```toml\n(.*?)```", docs.read_text(), re.DOTALL)
    config = load_alerts(write(tmp_path, example))
    assert [r.name for r in config.enabled] == [n for n in RULES if n != "track_failures"]
    assert config.cooldown_of(config.rule("dead_letters")) == 4 * 3600


def test_notifier_urls_may_come_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "alerts.toml"
    path.write_text('[notify]\nslack = "https://hooks.slack.com/services/FILE"\n')
    environ = {
        "CIO_WEBHOOKS_ALERTS_SLACK_URL": "https://hooks.slack.com/services/ENV",
        "CIO_WEBHOOKS_ALERTS_WEBHOOK_URL": " https://ops.example.com/hook ",
    }
    config = load_alerts(path, environ)
    assert config.notify.slack == "https://hooks.slack.com/services/ENV"  # the variable wins
    assert config.notify.webhook == "https://ops.example.com/hook"
    assert load_alerts(None, environ).notify.slack == "https://hooks.slack.com/services/ENV"


@pytest.mark.parametrize("value", ["", "  ", "hooks.slack.com/services/T0/SECRET"])
def test_a_bad_or_blank_notifier_variable_is_refused_without_being_quoted(value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_alerts(None, {"CIO_WEBHOOKS_ALERTS_SLACK_URL": value})
    assert str(refused.value) == "CIO_WEBHOOKS_ALERTS_SLACK_URL: must be an http:// or https:// URL"
