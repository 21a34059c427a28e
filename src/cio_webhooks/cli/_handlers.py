"""``handlers``: the handlers a setup registers, by the names ``replay`` and ``dlq`` use."""

from __future__ import annotations

from pathlib import Path

import click

from .._service import build_router, default_store, open_service_store, policies_active
from ..handlers import Route
from ..policies import DEFAULT_RULES, Policies, PolicyConfig, load_policies
from ..settings import Settings
from ..store import Ledger
from ._errors import err
from ._options import routing_options
from ._output import print_rows

__all__ = ["handlers_command", "registered_routes"]


def registered_routes(
    handlers: tuple[str, ...],
    policies: Path | None,
    track_site_id: str | None,
    track_api_key: str | None,
    *,
    ledger: Ledger | None = None,
) -> tuple[Route, ...]:
    """The handlers ``serve``/``worker`` register with these settings, in order: the
    ``--handlers`` routers', then the policies'.  Nothing is run: no Track client, and
    the ledger (``ledger``, else a read-only one of the default store) is not used.
    Raises ``ConfigError`` for a module that does not load or a bad file."""
    specs = tuple(h.strip() for spec in handlers for h in spec.split(",") if h.strip())
    router = build_router(specs)
    settings = Settings(
        store=default_store(Path()),
        warehouse=Path(),
        policies=policies,
        track_site_id=track_site_id,
        track_api_key=track_api_key,
    )
    if policies_active(settings):
        config = load_policies(policies) if policies else PolicyConfig(DEFAULT_RULES)
        # Dry-run, so that no client is needed to build the router: the names are the same.
        if ledger is None:  # read-only: connects only when asked, which it never is
            ledger = open_service_store(settings, readonly=True).ledger()
        router.include(Policies(PolicyConfig(config.rules, dry_run=True), ledger, None).router())
    return router.routes


def _patterns(route: Route) -> str:
    return ", ".join(f"{o or '*'}.{m or '*'}" for o, m in route.patterns)


@click.command("handlers")
@routing_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def handlers_command(
    handlers: tuple[str, ...],
    policies: Path | None,
    track_site_id: str | None,
    track_api_key: str | None,
    as_json: bool,
) -> None:
    """The handlers this setup registers (--handlers, then policies): name, patterns,
    whether backfilled events reach it.

    A name is what `replay --handler` and `dlq show` use."""
    routes = registered_routes(handlers, policies, track_site_id, track_api_key)
    rows = [
        {
            "name": r.name,
            "patterns": _patterns(r),
            "backfilled": r.backfilled,
            "async": r.is_async,
        }
        for r in routes
    ]
    if not rows and not as_json:
        err.print("no handlers: pass --handlers module:attr, or set the policies as for serve")
        return
    print_rows(rows, as_json, "handlers")
