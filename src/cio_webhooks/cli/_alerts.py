"""``alerts test`` (a test message to every notifier) and ``alerts prometheus-rules``
(the same rules for Prometheus' Alertmanager), both from the file of ``--alerts``."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..alerts import load_alerts, prometheus_rules, send_test
from ..settings import UI_PATH
from ._errors import err, fail
from ._options import alerts_option, run

__all__ = ["alerts"]


@click.group()
def alerts() -> None:
    """Alert rules: send a test message, print them as Prometheus rules."""


@alerts.command("test")
@alerts_option
def test_command(alerts: Path | None) -> None:
    """Send a test message through every configured notifier (exit 1 naming those
    that failed)."""
    config = load_alerts(alerts)
    names, failed = run(send_test(config.notify, config.link(UI_PATH), now=time.time()))
    for name in names:
        said = f"failed: {failed[name]}" if name in failed else "sent"
        err.print(f"{name}: {said}", highlight=False, markup=False)
    if failed:
        fail(f"alert notifier(s) failed: {', '.join(sorted(failed))}")
    if not names:
        fail("no notifier is configured (notify.log is false and no URL is set)")


@alerts.command("prometheus-rules")
@alerts_option
def prometheus_rules_command(alerts: Path | None) -> None:
    """Print Prometheus alerting rules (YAML) equivalent to the alert rules, over the
    series of /metrics."""
    click.echo(prometheus_rules(load_alerts(alerts)), nl=False)
