"""The alert rules as Prometheus alerting rules, over the series of ``/metrics``.

For teams whose alerts go through Alertmanager: ``cio-webhooks alerts
prometheus-rules`` prints a rules file (``rule_files:`` in prometheus.yml) with one
alert per enabled rule (two for ``complaint_rate``: warning and critical), the same
thresholds and windows, and the dashboard link as an annotation.  Where PromQL cannot
say the same thing the file says so in a comment:

- ``no_events``: hours are turned into UTC with the time zone's offset of today
  (PromQL has no time zones: re-generate after a DST change), and silence is counted
  from the last event, not from when the hours opened;
- ``track_failures``: counted from ``cio_webhooks_policy_actions_total``, which only
  the processes running policies export (``serve`` with dispatch, ``worker --port``).

Rates are over ``increase()`` of ``cio_webhooks_events_total`` summed over every
receiver, with the same definitions as ``vitals.EmailRates`` and the same minimum
volume guard.  The YAML is written by hand (every string JSON-quoted, which YAML
reads as is), so no YAML library is needed.
"""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from typing import Any

from ._config import (
    AlertConfig,
    BacklogAge,
    BounceRate,
    ComplaintRate,
    DeadLetters,
    Hours,
    NoEvents,
    RuleConfig,
    SignatureFailures,
    SinkLag,
    TrackFailures,
)
from ._rules import (
    CRITICAL,
    DEAD_LETTERS_PAGE,
    DELIVERABILITY_PAGE,
    OVERVIEW,
    POLICIES_PAGE,
    WARNING,
    span,
)

__all__ = ["METRICS", "prometheus_rules"]

#: The ``/metrics`` series the generated rules read.
METRICS = (
    "cio_webhooks_inbox_last_received_at",
    "cio_webhooks_requests_total",
    "cio_webhooks_inbox_dead_letters",
    "cio_webhooks_inbox_oldest_backlog_age_seconds",
    "cio_webhooks_sink_lag_seconds",
    "cio_webhooks_events_total",
    "cio_webhooks_policy_actions_total",
)


def _range(seconds: float) -> str:
    """A PromQL duration: ``5m``, ``24h``, ``7d``, ``90s``."""
    s = round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


def _number(value: float) -> str:
    return f"{value:g}"


def _within_hours(hours: Hours, *, today: dt.date) -> tuple[str, str]:
    """A PromQL filter true during ``hours`` (in UTC at today's offset), and a note."""
    zone = zoneinfo.ZoneInfo(hours.timezone)
    noon = dt.datetime.combine(today, dt.time(12), zone)
    offset = round((noon.utcoffset() or dt.timedelta()).total_seconds() / 60)
    start = (hours.start - offset) % 1440
    end = (hours.end - offset) % 1440
    minute = "(hour() * 60 + minute())"
    if start < end:
        expr = f"{minute} >= {start} < {end}"
    else:
        expr = f"{minute} >= {start} or {minute} < {end}"
    note = (
        f"hours {hours} {hours.timezone} are {start // 60:02d}:{start % 60:02d}-"
        f"{end // 60:02d}:{end % 60:02d} UTC at the offset of {today.isoformat()}"
        " (re-generate after a DST change)"
    )
    return expr, note


def _events(metric: str, window: float) -> str:
    return (
        f'sum(increase(cio_webhooks_events_total{{object_type="email",metric="{metric}"}}'
        f"[{_range(window)}]))"
    )


def _alert(
    rule: RuleConfig, name: str, expr: str, level: str, summary: str, config: AlertConfig, page: str
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "labels": {"severity": level, "rule": rule.name},
        "annotations": {"summary": summary, "dashboard": config.link(page)},
    }


def _rules_for(
    rule: RuleConfig, config: AlertConfig, today: dt.date
) -> tuple[list[dict[str, Any]], list[str]]:
    """The Prometheus alerts of ``rule`` and comments about them."""
    if isinstance(rule, NoEvents):
        expr = f"time() - max(cio_webhooks_inbox_last_received_at) >= {_number(rule.silence)}"
        notes = []
        if not rule.hours.all_day:
            within, note = _within_hours(rule.hours, today=today)
            expr = f"({expr}) and on() ({within})"
            notes.append(f"no_events: {note}")
        summary = f"No Customer.io event received for {span(rule.silence)}"
        name = "CioWebhooksNoEvents"
        return [_alert(rule, name, expr, CRITICAL, summary, config, OVERVIEW)], notes
    if isinstance(rule, SignatureFailures):
        expr = (
            'sum(increase(cio_webhooks_requests_total{outcome="rejected_signature"}'
            f"[{_range(rule.within)}])) >= {rule.count}"
        )
        summary = (
            f"At least {rule.count} requests refused for a bad signature in {span(rule.within)}:"
            " a wrong or rotated signing key?"
        )
        return [
            _alert(rule, "CioWebhooksSignatureFailures", expr, CRITICAL, summary, config, OVERVIEW)
        ], []
    if isinstance(rule, DeadLetters):
        expr = f"max(cio_webhooks_inbox_dead_letters) >= {rule.count}"
        summary = f"At least {rule.count} dead letter(s): events whose handlers gave up"
        page = DEAD_LETTERS_PAGE
        return [_alert(rule, "CioWebhooksDeadLetters", expr, WARNING, summary, config, page)], []
    if isinstance(rule, BacklogAge):
        expr = f"max(cio_webhooks_inbox_oldest_backlog_age_seconds) > {_number(rule.limit)}"
        summary = f"The oldest waiting event has waited more than {span(rule.limit)}"
        return [_alert(rule, "CioWebhooksBacklogAge", expr, WARNING, summary, config, OVERVIEW)], []
    if isinstance(rule, SinkLag):
        expr = f"max by (sink) (cio_webhooks_sink_lag_seconds) > {_number(rule.limit)}"
        summary = f"Sink {{{{ $labels.sink }}}} is more than {span(rule.limit)} behind"
        return [_alert(rule, "CioWebhooksSinkLag", expr, WARNING, summary, config, OVERVIEW)], []
    if isinstance(rule, ComplaintRate):
        spammed, delivered = _events("spammed", rule.window), _events("delivered", rule.window)
        found = []
        for level, limit in ((WARNING, rule.warning), (CRITICAL, rule.critical)):
            expr = (
                f"({spammed} / {delivered}) >= {_number(limit)}"
                f" and on() {delivered} >= {rule.min_volume}"
            )
            summary = (
                f"Spam complaint rate at least {limit * 100:g}% of delivered emails over"
                f" {span(rule.window)}"
            )
            name = f"CioWebhooksComplaintRate{level.capitalize()}"
            found.append(_alert(rule, name, expr, level, summary, config, DELIVERABILITY_PAGE))
        note = (
            "complaint_rate: the warning alert fires beside the critical one; an Alertmanager"
            " inhibit rule (source severity=critical, equal: [rule]) keeps one message"
        )
        return found, [note]
    if isinstance(rule, BounceRate):
        sent, delivered = _events("sent", rule.window), _events("delivered", rule.window)
        bounced = _events("bounced", rule.window)
        # vitals.EmailRates.attempted: max(sent, delivered + bounced)
        reached = f"({delivered} + {bounced})"
        attempted = f"(({sent} >= {reached}) or {reached})"
        expr = (
            f"({bounced} / {attempted}) >= {_number(rule.limit)}"
            f" and on() {attempted} >= {rule.min_volume}"
        )
        summary = f"Bounce rate at least {rule.limit * 100:g}% over {span(rule.window)}"
        page = DELIVERABILITY_PAGE
        return [_alert(rule, "CioWebhooksBounceRate", expr, WARNING, summary, config, page)], []
    if isinstance(rule, TrackFailures):
        expr = (
            'sum(increase(cio_webhooks_policy_actions_total{status="failed"}'
            f"[{_range(rule.within)}])) >= {rule.count}"
        )
        summary = (
            f"At least {rule.count} Track API calls of the policies failed in {span(rule.within)}"
        )
        page = POLICIES_PAGE
        return [_alert(rule, "CioWebhooksTrackFailures", expr, WARNING, summary, config, page)], [
            "track_failures: only processes that run policies (serve with dispatch,"
            " worker --port) export cio_webhooks_policy_actions_total"
        ]
    return [], [f"{rule.name}: no /metrics series tells it; left out"]


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    return json.dumps(str(value), ensure_ascii=False)


def _yaml(value: Any, indent: int = 0) -> list[str]:
    """Block YAML of mappings, lists of mappings and scalars (strings JSON-quoted)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, list) and not item:
                lines.append(f"{pad}{key}: []")
            elif isinstance(item, dict | list):
                lines.append(f"{pad}{key}:")
                lines.extend(_yaml(item, indent + 2))
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            body = _yaml(item, indent + 2)
            lines.append(f"{pad}- {body[0].lstrip()}")
            lines.extend(body[1:])
    else:
        lines.append(f"{pad}{_scalar(value)}")
    return lines


def prometheus_rules(config: AlertConfig, *, today: dt.date | None = None) -> str:
    """A Prometheus rules file equivalent to ``config``'s enabled rules (YAML text)."""
    today = today or dt.datetime.now(dt.UTC).date()
    alerts: list[dict[str, Any]] = []
    notes: list[str] = []
    for rule in config.rules:
        if not rule.enabled:
            notes.append(f"{rule.name}: disabled in the alerts file")
            continue
        found, said = _rules_for(rule, config, today)
        alerts.extend(found)
        notes.extend(said)
    head = [
        "# Prometheus alerting rules equivalent to cio-webhooks' alert rules",
        "# (generated by `cio-webhooks alerts prometheus-rules`; series of /metrics).",
        *(f"# - {note}" for note in notes),
    ]
    body = _yaml({"groups": [{"name": "cio-webhooks", "rules": alerts}]})
    return "\n".join([*head, *body]) + "\n"
