"""The alerts file: which rules watch what, their thresholds, and who hears about it.

::

    dashboard_url = "https://hooks.example.com"   # links in messages [default: http://127.0.0.1:8000]
    cooldown = "1h"                               # repeat a firing alert at most this often

    [notify]
    slack = "https://hooks.slack.com/services/..."   # a Slack incoming webhook (a secret)
    webhook = "https://ops.example.com/hooks/alerts" # any JSON endpoint (a secret)
    log = true                                       # one log line per message [default]

    [rules.no_events]
    silence = "30m"              # no event received for this long...
    hours = "08:00-20:00"        # ...while these hours last (a window may span midnight)
    timezone = "Europe/Paris"

    [rules.complaint_rate]
    warning = "0.1%"
    critical = "0.3%"
    window = "24h"
    min_volume = 1000            # delivered emails in the window before a rate counts

    [rules.track_failures]
    enabled = false

Every rule is on with its defaults unless the file says otherwise (``RULES`` lists
them with their keys); no file at all means every default rule, told to the log only.
Durations are ``"90s"``, ``"15m"``, ``"1h"``, ``"7d"``; rates are ``"0.3%"`` or a
fraction (``0.003``).  A rule's ``cooldown`` overrides the file's.  Anything else (an
unknown key, a bad value) is a ``ConfigError`` naming the key; a notifier's URL is never
quoted, in an error or a ``repr``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import re
import tomllib
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .._exceptions import ConfigError
from ..search import parse_span
from ..settings import (
    COMPLAINT_RATE_LIMIT,
    COMPLAINT_RATE_WARN,
    DEFAULT_ALERT_COOLDOWN,
    DEFAULT_DASHBOARD_URL,
    env,
)
from ..vitals import TRAFFIC_WINDOW

__all__ = [
    "NOTIFY_ENV",
    "RULES",
    "AlertConfig",
    "BacklogAge",
    "BounceRate",
    "ComplaintRate",
    "DeadLetters",
    "Hours",
    "NoEvents",
    "NotifyConfig",
    "RuleConfig",
    "SignatureFailures",
    "SinkLag",
    "TrackFailures",
    "alert_config",
    "load_alerts",
    "parse_duration",
    "parse_rate",
]

_HOURS = re.compile(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*")


def parse_duration(value: object) -> float:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"7d"``, ``"2w"`` -> seconds (positive), read as
    ``--since`` reads a span (``search.parse_span``)."""
    if isinstance(value, str):
        seconds = parse_span(value)
        if seconds is not None and seconds > 0:
            return seconds
    raise ConfigError('must be a duration such as "90s", "15m", "1h" or "7d"')


def parse_rate(value: object) -> float:
    """``"0.3%"`` or a fraction (``0.003``) -> the fraction, in (0, 1]."""
    rate: float | None = None
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            rate = float(value.strip()[:-1]) / 100
        except ValueError:
            rate = None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        rate = float(value)
    if rate is None or not math.isfinite(rate) or not 0 < rate <= 1:
        raise ConfigError('must be a rate such as "0.3%" (or the fraction 0.003)')
    return rate


def _count(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigError("must be a whole number, at least 1")


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError("must be true or false")


@dataclass(frozen=True)
class Hours:
    """When a rule watches, in a time zone: ``start``/``end`` are minutes after local
    midnight; ``end < start`` spans midnight; ``0-1440`` is all day."""

    start: int = 0
    end: int = 1440
    timezone: str = "UTC"

    @classmethod
    def parse(cls, text: object, timezone: object = "UTC") -> Hours:
        if not isinstance(text, str) or not (m := _HOURS.fullmatch(text)):
            raise ConfigError('hours: must look like "08:00-20:00"')
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59 or h1 * 60 + m1 > 1440 or h2 * 60 + m2 > 1440:
            raise ConfigError('hours: must look like "08:00-20:00" (times from 00:00 to 24:00)')
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start == end:
            raise ConfigError("hours: the window is empty (start equals end)")
        if not isinstance(timezone, str):
            raise ConfigError('timezone: must be a name such as "Europe/Paris"')
        try:
            zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"timezone: unknown time zone {timezone!r}") from None
        return cls(start, end, timezone)

    @property
    def all_day(self) -> bool:
        return self.start == 0 and self.end == 1440

    def _local(self, now: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(now, zoneinfo.ZoneInfo(self.timezone))

    def contains(self, now: float) -> bool:
        """Whether ``now`` (unix seconds) falls in the hours."""
        local = self._local(now)
        minute = local.hour * 60 + local.minute
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def opened_at(self, now: float) -> float:
        """When the window holding ``now`` opened (unix seconds); -inf all day.
        Call it only when ``contains(now)``."""
        if self.all_day:
            return -math.inf
        local = self._local(now)
        day = local.date()
        if self.start > self.end and local.hour * 60 + local.minute < self.end:
            day -= dt.timedelta(days=1)  # after midnight in a window that opened last evening
        hour, minute = divmod(self.start, 60)
        opened = dt.datetime.combine(day, dt.time(hour, minute), local.tzinfo)
        return opened.timestamp()

    def __str__(self) -> str:
        (h1, m1), (h2, m2) = divmod(self.start, 60), divmod(self.end, 60)
        return f"{h1:02d}:{m1:02d}-{h2:02d}:{m2:02d}"


# -- the rules --------------------------------------------------------------------------
# A field's metadata says how its TOML value is read; every rule also has ``enabled``
# and ``cooldown`` (None: the file's).
def _key(parse: Any, default: Any) -> Any:
    return field(default=default, metadata={"parse": parse})


@dataclass(frozen=True)
class RuleConfig:
    """What every rule has.  ``name`` is its stable id (state, messages, metrics)."""

    name: str = ""
    enabled: bool = _key(_bool, True)
    cooldown: float | None = _key(parse_duration, None)


@dataclass(frozen=True)
class NoEvents(RuleConfig):
    """No event received for ``silence``, while ``hours`` last (silence is counted from
    when the hours opened, so a quiet night does not fire at 08:00)."""

    silence: float = _key(parse_duration, 3600.0)
    hours: Hours = field(default_factory=Hours)  # "hours" + "timezone" in the file


@dataclass(frozen=True)
class SignatureFailures(RuleConfig):
    """At least ``count`` requests refused for their signature (401) within ``within``:
    a wrong or rotated signing key, and Customer.io will pause the stream."""

    count: int = _key(_count, 10)
    within: float = _key(parse_duration, 300.0)


@dataclass(frozen=True)
class DeadLetters(RuleConfig):
    """At least ``count`` dead letters (events whose handlers gave up) in the store."""

    count: int = _key(_count, 1)


@dataclass(frozen=True)
class BacklogAge(RuleConfig):
    """The oldest event waiting for its handlers has waited longer than ``limit``."""

    limit: float = _key(parse_duration, 900.0)


@dataclass(frozen=True)
class SinkLag(RuleConfig):
    """A warehouse sink is more than ``limit`` behind the store."""

    limit: float = _key(parse_duration, 900.0)


@dataclass(frozen=True)
class ComplaintRate(RuleConfig):
    """Spam complaints / delivered emails over ``window``, at least ``warning`` (Google
    and Yahoo recommend under 0.1%) or ``critical`` (they require under 0.3%), once
    ``min_volume`` emails were delivered in the window."""

    warning: float = _key(parse_rate, COMPLAINT_RATE_WARN)
    critical: float = _key(parse_rate, COMPLAINT_RATE_LIMIT)
    window: float = _key(parse_duration, 86400.0)
    min_volume: int = _key(_count, 1000)


@dataclass(frozen=True)
class BounceRate(RuleConfig):
    """Bounced / sent emails over ``window`` at least ``limit``, once ``min_volume``
    emails were sent in the window."""

    limit: float = _key(parse_rate, 0.05)
    window: float = _key(parse_duration, 86400.0)
    min_volume: int = _key(_count, 1000)


@dataclass(frozen=True)
class TrackFailures(RuleConfig):
    """At least ``count`` failed Track API calls of the policies within ``within``."""

    count: int = _key(_count, 5)
    within: float = _key(parse_duration, 900.0)


#: Every rule, by its stable name, in the order messages and listings use.
RULES: dict[str, type[RuleConfig]] = {
    "no_events": NoEvents,
    "signature_failures": SignatureFailures,
    "dead_letters": DeadLetters,
    "backlog_age": BacklogAge,
    "sink_lag": SinkLag,
    "complaint_rate": ComplaintRate,
    "bounce_rate": BounceRate,
    "track_failures": TrackFailures,
}


def _make(name: str, kind: type[RuleConfig], **values: Any) -> RuleConfig:
    return kind(name=name, **values)


@dataclass(frozen=True)
class NotifyConfig:
    """Where messages go.  The URLs are secrets: not in ``repr``, errors or logs."""

    slack: str | None = field(default=None, repr=False)
    webhook: str | None = field(default=None, repr=False)
    log: bool = True


@dataclass(frozen=True)
class AlertConfig:
    """The alert rules (every one, enabled or not, in ``RULES`` order) and notifiers."""

    rules: tuple[RuleConfig, ...] = field(
        default_factory=lambda: tuple(_make(n, k) for n, k in RULES.items())
    )
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    dashboard_url: str = DEFAULT_DASHBOARD_URL
    cooldown: float = DEFAULT_ALERT_COOLDOWN

    def rule(self, name: str) -> RuleConfig:
        return next(r for r in self.rules if r.name == name)

    @property
    def enabled(self) -> tuple[RuleConfig, ...]:
        return tuple(r for r in self.rules if r.enabled)

    def cooldown_of(self, rule: RuleConfig) -> float:
        return self.cooldown if rule.cooldown is None else rule.cooldown

    def link(self, page: str) -> str:
        """The dashboard URL of ``page`` (a path such as ``/ui/dead-letters``)."""
        return self.dashboard_url.rstrip("/") + page


# -- reading the file -------------------------------------------------------------------
def _http_url(value: object) -> str:
    if isinstance(value, str):
        parts = urlsplit(value.strip())
        if parts.scheme in ("http", "https") and parts.hostname:
            return value.strip()
    raise ConfigError("must be an http:// or https:// URL")  # never quote it: a secret


def _rule(name: str, raw: object) -> RuleConfig:
    kind = RULES.get(name)
    if kind is None:
        raise ConfigError(f"rules.{name}: unknown rule (rules are {', '.join(RULES)})")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"rules.{name}: use a [rules.{name}] table")
    readable = {f.name: f for f in dataclasses.fields(kind) if "parse" in f.metadata}
    extra = {"hours", "timezone"} if kind is NoEvents else set()
    unknown = set(raw) - set(readable) - extra
    if unknown:
        known = ", ".join(sorted({*readable, *extra}))
        raise ConfigError(f"rules.{name}: unknown key(s) {', '.join(sorted(unknown))} ({known})")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in readable:
            try:
                values[key] = readable[key].metadata["parse"](value)
            except ConfigError as exc:
                raise ConfigError(f"rules.{name}.{key}: {exc}") from None
    if extra and (extra & set(raw)):
        try:
            hours, zone = raw.get("hours", "00:00-24:00"), raw.get("timezone", "UTC")
            values["hours"] = Hours.parse(hours, zone)
        except ConfigError as exc:
            raise ConfigError(f"rules.{name}.{exc}") from None
    within = values.get("within")
    if kind is SignatureFailures and within is not None and within > TRAFFIC_WINDOW:
        # The receivers' traffic is read for the last hour (the dashboard's window).
        raise ConfigError(f"rules.{name}.within: at most {TRAFFIC_WINDOW / 60:g}m")
    if kind is ComplaintRate:
        warning = values.get("warning", ComplaintRate.warning)
        critical = values.get("critical", ComplaintRate.critical)
        if critical < warning:
            raise ConfigError(f"rules.{name}.critical: must be at least rules.{name}.warning")
    return _make(name, kind, **values)


def _notify(raw: object) -> NotifyConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError("notify: use a [notify] table")
    unknown = set(raw) - {"slack", "webhook", "log"}
    if unknown:
        names = ", ".join(sorted(unknown))
        raise ConfigError(f"notify: unknown key(s) {names} (slack, webhook, log)")
    values: dict[str, Any] = {}
    for key in ("slack", "webhook"):
        if key in raw:
            try:
                values[key] = _http_url(raw[key])
            except ConfigError as exc:
                raise ConfigError(f"notify.{key}: {exc}") from None
    if "log" in raw:
        try:
            values["log"] = _bool(raw["log"])
        except ConfigError as exc:
            raise ConfigError(f"notify.log: {exc}") from None
    return NotifyConfig(**values)


def alert_config(data: Mapping[str, Any]) -> AlertConfig:
    """The config of a parsed TOML document; ``ConfigError`` naming the bad key."""
    unknown = set(data) - {"dashboard_url", "cooldown", "notify", "rules"}
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(sorted(unknown))} (dashboard_url, cooldown, notify, rules)"
        )
    top: dict[str, Any] = {}
    if "dashboard_url" in data:
        try:
            top["dashboard_url"] = _http_url(data["dashboard_url"]).rstrip("/")
        except ConfigError as exc:
            raise ConfigError(f"dashboard_url: {exc}") from None
    if "cooldown" in data:
        try:
            top["cooldown"] = parse_duration(data["cooldown"])
        except ConfigError as exc:
            raise ConfigError(f"cooldown: {exc}") from None
    rules_raw = data.get("rules", {})
    if not isinstance(rules_raw, Mapping):
        raise ConfigError("rules: use [rules.<name>] tables")
    configured = {name: _rule(name, raw) for name, raw in rules_raw.items()}
    rules = tuple(configured.get(n) or _make(n, k) for n, k in RULES.items())
    notify = _notify(data["notify"]) if "notify" in data else NotifyConfig()
    return AlertConfig(rules=rules, notify=notify, **top)


#: Environment variables that give the notifiers' URLs (secrets kept out of the file);
#: one that is set overrides the file's ``[notify]`` value.
NOTIFY_ENV = {"slack": env("ALERTS_SLACK_URL"), "webhook": env("ALERTS_WEBHOOK_URL")}


def load_alerts(path: Path | None, environ: Mapping[str, str] | None = None) -> AlertConfig:
    """The alerts of file ``path``; None: the defaults (every rule on, log only), with
    the notifier URLs of ``NOTIFY_ENV`` found in ``environ`` (default: the process's).
    Raises ``ConfigError``, one line naming the file and the key (or the variable),
    when it is wrong; a variable that is set but blank is wrong too."""
    config = _load_file(path)
    environ = os.environ if environ is None else environ

    def url(key: str, configured: str | None) -> str | None:
        variable = NOTIFY_ENV[key]
        if variable not in environ:
            return configured
        try:
            return _http_url(environ[variable])
        except ConfigError as exc:
            raise ConfigError(f"{variable}: {exc}") from None

    notify = NotifyConfig(
        slack=url("slack", config.notify.slack),
        webhook=url("webhook", config.notify.webhook),
        log=config.notify.log,
    )
    return dataclasses.replace(config, notify=notify)


def _load_file(path: Path | None) -> AlertConfig:
    if path is None:
        return AlertConfig()
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read alerts {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"alerts {path}: {exc}") from exc
    try:
        return alert_config(data)
    except ConfigError as exc:
        raise ConfigError(f"alerts {path}: {exc}") from None
