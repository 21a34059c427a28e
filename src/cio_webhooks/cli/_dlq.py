"""``dlq list|show|retry|discard``: events whose handlers failed every attempt."""

from __future__ import annotations

import dataclasses
import json
import time

import click

from .._exceptions import ConfigError
from .._operator import named_dead_letters
from ..store import EventFilter, JobState, Operations, Store
from ._audit import record
from ._options import LIMIT, event_id_arguments, reading_store, store_options, with_store
from ._output import event_row, payload, print_rows

__all__ = ["dlq"]


@click.group()
def dlq() -> None:
    """Dead-lettered events: handlers failed every attempt."""


@dlq.command("list")
@store_options
@click.option("--limit", type=LIMIT, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@reading_store
async def dlq_list(store: Operations, limit: int, as_json: bool) -> None:
    where = EventFilter(states=(JobState.DEAD,), limit=limit)
    rows = [event_row(e) async for e in store.iter_events(where)]
    if not as_json:  # in a table, the state is always "dead" and the next attempt is moot
        for row in rows:
            del row["state"], row["next_attempt_at"]
    print_rows(rows, as_json, "dead letters")


async def _show(store: Operations, event_id: str) -> None:
    """An event with its handler runs and payload, as JSON on stdout."""
    stored = await store.get_event(event_id)
    if stored is None:
        raise ConfigError(f"no stored event {event_id!r}")
    out = event_row(stored)
    out["handlers"] = [dataclasses.asdict(r) for r in await store.handler_runs(stored.seq)]
    out.update(payload(stored.body))
    click.echo(json.dumps(out, indent=2, default=str))


@dlq.command("show")
@store_options
@click.argument("event_id", callback=event_id_arguments)
@reading_store
async def dlq_show(store: Operations, event_id: str) -> None:
    """An event with its handler runs, errors and payload (JSON)."""
    await _show(store, event_id)


async def _dead_letters(store: Operations, event_ids: tuple[str, ...], all_: bool) -> EventFilter:
    """The dead letters named (every one with ``--all``)."""
    if not event_ids and not all_:
        raise ConfigError("name EVENT_IDs or pass --all")
    if event_ids and not all_:
        return await named_dead_letters(store, event_ids)
    return EventFilter(states=(JobState.DEAD,), event_ids=event_ids)


def _which(event_ids: tuple[str, ...]) -> str:
    """The dead letters an action names, as the dashboard describes its own."""
    if not event_ids:
        return "every dead letter"
    return f"dead letter{'s' if len(event_ids) > 1 else ''} {', '.join(event_ids)}"


@dlq.command("retry")
@store_options
@click.argument("event_ids", nargs=-1, callback=event_id_arguments)
@click.option("--all", "all_", is_flag=True, help="Every dead letter.")
@with_store
async def dlq_retry(store: Store, event_ids: tuple[str, ...], all_: bool) -> None:
    """Make dead letters due again; handlers that succeeded are not re-run.  Recorded
    with who did it, for the dashboard's dead-letters page."""
    n = await store.requeue(await _dead_letters(store, event_ids, all_), now=time.time())
    await record(store, "dlq_retry", n, _which(event_ids))
    click.echo(f"requeued {n} event(s)")


@dlq.command("discard")
@store_options
@click.argument("event_ids", nargs=-1, callback=event_id_arguments)
@click.option("--all", "all_", is_flag=True, help="Every dead letter.")
@with_store
async def dlq_discard(store: Store, event_ids: tuple[str, ...], all_: bool) -> None:
    """Give up on dead letters (they stay stored and exported).  Recorded with who did
    it, for the dashboard's dead-letters page."""
    n = await store.discard(await _dead_letters(store, event_ids, all_), now=time.time())
    await record(store, "dlq_discard", n, _which(event_ids))
    click.echo(f"discarded {n} event(s)")
