"""``prometheus_rules``: a rules file Prometheus can read (checked with a small parser
of the YAML subset it is written in), one alert per rule with the same thresholds,
over series that ``/metrics`` has."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import httpx2

from cio_webhooks.alerts import METRICS, RULES, AlertConfig, alert_config, prometheus_rules
from cio_webhooks.store import Store
from cio_webhooks.testing import make_event

from ..conftest import post_event


def parse_yaml(text: str) -> Any:
    """The block YAML ``prometheus_rules`` writes: mappings, ``- `` lists of mappings,
    ``[]``, scalars that are JSON.  Anything else fails the test."""
    tokens = [
        (len(line) - len(line.lstrip(" ")), line.strip())
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]

    def block(i: int, indent: int) -> tuple[Any, int]:
        if tokens[i][1].startswith("- "):
            items = []
            while i < len(tokens) and tokens[i][0] == indent and tokens[i][1].startswith("- "):
                tokens[i] = (indent + 2, tokens[i][1][2:])
                item, i = block(i, indent + 2)
                items.append(item)
            return items, i
        mapping: dict[str, Any] = {}
        while i < len(tokens) and tokens[i][0] == indent:
            key, colon, rest = tokens[i][1].partition(":")
            assert colon, tokens[i]
            assert re.fullmatch(r"[a-z_]+", key), tokens[i]
            assert key not in mapping
            rest = rest.strip()
            if rest:
                mapping[key] = [] if rest == "[]" else json.loads(rest)
                i += 1
            else:
                assert tokens[i + 1][0] > indent, tokens[i]
                mapping[key], i = block(i + 1, tokens[i + 1][0])
        return mapping, i

    value, end = block(0, 0)
    assert end == len(tokens), tokens[end]
    return value


def alerts_of(text: str) -> dict[str, dict[str, Any]]:
    [group] = parse_yaml(text)["groups"]
    assert group["name"] == "cio-webhooks"
    return {a["alert"]: a for a in group["rules"]}


def test_the_default_rules_as_prometheus_alerts() -> None:
    rules = alerts_of(prometheus_rules(AlertConfig()))
    assert list(rules) == [
        "CioWebhooksNoEvents",
        "CioWebhooksSignatureFailures",
        "CioWebhooksDeadLetters",
        "CioWebhooksBacklogAge",
        "CioWebhooksSinkLag",
        "CioWebhooksComplaintRateWarning",
        "CioWebhooksComplaintRateCritical",
        "CioWebhooksBounceRate",
        "CioWebhooksTrackFailures",
    ]
    assert rules["CioWebhooksSignatureFailures"]["expr"] == (
        'sum(increase(cio_webhooks_requests_total{outcome="rejected_signature"}[5m])) >= 10'
    )
    assert rules["CioWebhooksSinkLag"]["expr"] == (
        "max by (sink) (cio_webhooks_sink_lag_seconds) > 900"
    )
    critical = rules["CioWebhooksComplaintRateCritical"]
    assert critical["labels"] == {"severity": "critical", "rule": "complaint_rate"}
    assert ") >= 0.003 and on() sum(increase(" in critical["expr"]
    assert critical["expr"].endswith('metric="delivered"}[1d])) >= 1000')
    dead = rules["CioWebhooksDeadLetters"]["annotations"]
    assert dead["dashboard"] == "http://127.0.0.1:8000/ui/dead-letters"


def test_the_file_s_thresholds_hours_and_disabled_rules_carry_over() -> None:
    config = alert_config(
        {
            "dashboard_url": "https://hooks.example.com",
            "rules": {
                "no_events": {
                    "silence": "20m",
                    "hours": "08:00-20:00",
                    "timezone": "Europe/Paris",
                },
                "bounce_rate": {"enabled": False},
                "signature_failures": {"count": 3, "within": "10m"},
            },
        }
    )
    text = prometheus_rules(config, today=dt.date(2026, 7, 1))
    rules = alerts_of(text)
    assert "CioWebhooksBounceRate" not in rules
    assert "# - bounce_rate: disabled in the alerts file" in text
    assert rules["CioWebhooksTrackFailures"]["expr"] == (
        'sum(increase(cio_webhooks_policy_actions_total{status="failed"}[15m])) >= 5'
    )
    # 08:00-20:00 in Paris in summer is 06:00-18:00 UTC
    assert rules["CioWebhooksNoEvents"]["expr"] == (
        "(time() - max(cio_webhooks_inbox_last_received_at) >= 1200)"
        " and on() ((hour() * 60 + minute()) >= 360 < 1080)"
    )
    assert rules["CioWebhooksSignatureFailures"]["expr"].endswith("[10m])) >= 3")
    assert rules["CioWebhooksNoEvents"]["annotations"]["dashboard"] == (
        "https://hooks.example.com/ui"
    )


def test_every_rule_disabled_is_still_a_valid_file() -> None:
    config = alert_config({"rules": {name: {"enabled": False} for name in RULES}})
    assert alerts_of(prometheus_rules(config)) == {}


async def test_the_series_exist_in_metrics(client: httpx2.AsyncClient, inbox: Store) -> None:
    await post_event(client, make_event("m1"))
    await inbox.register_sink("lake", "parquet:///lake", now=0)
    text = (await client.get("/metrics")).text
    exposed = set(re.findall(r"^(cio_webhooks_[a-z_]+)", text, re.MULTILINE))
    # Only processes running policies export it (tests/test_policies.py reads it there).
    exposed.add("cio_webhooks_policy_actions_total")
    assert set(METRICS) <= exposed
    used = set(re.findall(r"cio_webhooks_[a-z_]+", prometheus_rules(AlertConfig())))
    assert used <= set(METRICS)


def test_parse_yaml_refuses_what_it_does_not_know() -> None:
    for bad in ("a: b", "a:\n  - b: 'x'", "a: 1\na: 2"):
        try:
            parse_yaml(bad)
        except (AssertionError, ValueError):
            continue
        raise AssertionError(f"parsed {bad!r}")
