"""The ``cio-webhooks`` command.  Every option is also a ``CIO_WEBHOOKS_*`` env var.

One module per command group, each registered here explicitly (no command is
registered by importing a module)::

    _serve.py       serve, worker              _store.py      migrate, store copy
    _send.py        send                       _events.py     events export
    _dlq.py         dlq list|show|retry|...    _quarantine.py quarantine list|show|...
    _replay.py      replay                     _handlers.py   handlers
    _stats.py       stats                      _reporting.py  report
    _reconcile.py   reconcile                  _actions.py    actions list
    _sinks.py       sinks status|replay|forget _alerts.py     alerts test|prometheus-rules
    _ui.py          ui (the dashboard alone), the dashboard's options and server
    _options.py     shared options, parsers, opening the store of --store/--db
    _output.py      tables and JSON on stdout
    _errors.py      the one table from errors to exit codes (0 ok, 1 failed,
                    2 usage or configuration, 3 store unavailable)
"""

from __future__ import annotations

from typing import Any

import click

from ..settings import ENV_PREFIX
from ._actions import actions
from ._alerts import alerts
from ._dlq import dlq
from ._errors import exit_codes
from ._events import events
from ._handlers import handlers_command
from ._options import parse_since
from ._quarantine import quarantine
from ._reconcile import reconcile_command
from ._replay import replay
from ._reporting import report
from ._send import send
from ._serve import serve, worker
from ._sinks import sinks
from ._stats import stats
from ._store import migrate, store
from ._ui import ui_command

__all__ = ["main", "parse_since"]


class _Main(click.Group):
    """The root group: every command it runs answers errors by the exit-code table."""

    def invoke(self, ctx: click.Context) -> Any:
        with exit_codes():
            return super().invoke(ctx)


@click.group(
    cls=_Main,
    context_settings={
        "help_option_names": ["-h", "--help"],
        "max_content_width": 100,
        # per-command options: CIO_WEBHOOKS_<COMMAND>_<OPTION>
        "auto_envvar_prefix": ENV_PREFIX,
    },
)
@click.version_option(package_name="cio-webhooks")
def main() -> None:
    """Receive Customer.io reporting webhooks durably: verify, store, dedupe, route, retry."""


for command in (
    serve,
    worker,
    migrate,
    send,
    events,
    dlq,
    quarantine,
    replay,
    handlers_command,
    stats,
    report,
    reconcile_command,
    actions,
    store,
    sinks,
    alerts,
    ui_command,
):
    main.add_command(command)
