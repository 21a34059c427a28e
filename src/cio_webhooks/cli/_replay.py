"""``replay``: run handlers again for stored events."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .._exceptions import ConfigError
from ..store import EventFilter, Store
from ._handlers import registered_routes
from ._options import event_filter, routing_options, store_options, with_store

__all__ = ["replay"]


@click.command()
@store_options
@click.option("--since", help="7d, 12h, an ISO date or unix seconds (by receive time).")
@click.option("--metric", multiple=True, help="email.bounced, *.clicked, bounced ...; repeatable.")
@click.option(
    "--handler",
    help="Re-run only this handler (a name `cio-webhooks handlers` lists); default: all.",
)
@routing_options
@with_store
async def replay(
    store: Store,
    since: str | None,
    metric: tuple[str, ...],
    handler: str | None,
    handlers: tuple[str, ...],
    policies: Path | None,
    track_site_id: str | None,
    track_api_key: str | None,
) -> None:
    """Re-run handlers for stored events (the running dispatcher picks them up).

    With --handler, only the events that handler takes are queued (backfilled ones only
    if it asked for them), and only it runs
    again (handlers that succeeded stay done); the name must be one that the same
    --handlers/policies settings as the service's register."""
    if since is None and not metric:
        raise ConfigError("replay needs --since and/or --metric, so that it is never accidental")
    where, now = event_filter(since, metric), time.time()
    if handler is None:
        n = await store.requeue(where, now=now, rerun="*")
        click.echo(f"queued {n} event(s) for replay")
        return
    routes = {
        r.name: r
        for r in registered_routes(
            handlers, policies, track_site_id, track_api_key, ledger=store.ledger()
        )
    }
    route = routes.get(handler)
    if route is None:
        known = ", ".join(routes) or "none (set --handlers and/or the policies as for serve)"
        raise ConfigError(f"no handler named {handler!r}; registered: {known}")
    backfilled_too = route.backfilled
    ids = [
        e.event_id
        async for e in store.iter_events(where)
        if route.matches(e.object_type, e.metric) and (backfilled_too or not e.backfilled)
    ]
    n = 0
    for start in range(0, len(ids), 500):
        chunk = EventFilter(event_ids=tuple(ids[start : start + 500]))
        n += await store.requeue(chunk, now=now, rerun=handler)
    click.echo(f"queued {n} event(s) for replay of handler {handler}")
