"""Alerts: rules judged on the store's figures, messages that reach people.

::

    alerts.toml --load_alerts--> AlertConfig (rules, notifiers, dashboard_url)
                                     |
    store --read_snapshot (vitals)--> Snapshot        the dashboard's own figures
                                     |
                      evaluate ------+--> [Finding]   pure: firing?, figure, threshold,
                                     |                text, dashboard page
    store.alert_states() --decide ---+--> Transition  FIRING / repeat / RESOLVED
                                     |
                      store.swap_alert(expected=v)    compare-and-set: one process wins
                                     |
                      send_all ------+--> log | Slack | JSON webhook

``Alerter.run`` does this every ``ALERT_EVERY`` seconds in ``serve`` (with dispatch)
and every ``worker``; the state is the store's, so it survives restarts and several
processes send each message once.  ``prometheus_rules`` writes the same rules for
Prometheus' Alertmanager.  See ``docs/alerts.md`` for the rules and the file.
"""

from __future__ import annotations

from ._alerter import Alerter, message_of
from ._config import (
    RULES,
    AlertConfig,
    BacklogAge,
    BounceRate,
    ComplaintRate,
    DeadLetters,
    Hours,
    NoEvents,
    NotifyConfig,
    RuleConfig,
    SignatureFailures,
    SinkLag,
    TrackFailures,
    alert_config,
    load_alerts,
    parse_duration,
    parse_rate,
)
from ._notify import (
    LogNotifier,
    Message,
    Notifier,
    NotifyError,
    SlackNotifier,
    WebhookNotifier,
    build_notifiers,
    send_all,
    send_test,
)
from ._prometheus import METRICS, prometheus_rules
from ._rules import CRITICAL, WARNING, Finding, Ratio, Snapshot, evaluate, judge, span
from ._snapshot import RatesReader, read_snapshot
from ._state import FIRING, RESOLVED, Transition, decide

__all__ = [
    "CRITICAL",
    "FIRING",
    "METRICS",
    "RESOLVED",
    "RULES",
    "WARNING",
    "AlertConfig",
    "Alerter",
    "BacklogAge",
    "BounceRate",
    "ComplaintRate",
    "DeadLetters",
    "Finding",
    "Hours",
    "LogNotifier",
    "Message",
    "NoEvents",
    "Notifier",
    "NotifyConfig",
    "NotifyError",
    "RatesReader",
    "Ratio",
    "RuleConfig",
    "SignatureFailures",
    "SinkLag",
    "SlackNotifier",
    "Snapshot",
    "TrackFailures",
    "Transition",
    "WebhookNotifier",
    "alert_config",
    "build_notifiers",
    "decide",
    "evaluate",
    "judge",
    "load_alerts",
    "message_of",
    "parse_duration",
    "parse_rate",
    "prometheus_rules",
    "read_snapshot",
    "send_all",
    "send_test",
    "span",
]
