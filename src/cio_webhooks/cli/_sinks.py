"""``sinks status|replay|forget``: the warehouses' cursors, as the store keeps them.

The loader of a running ``serve``/``worker`` moves each cursor; these commands read
or move it from outside, on any host that reaches the store."""

from __future__ import annotations

import dataclasses
import json
import time

import click
from rich.table import Table
from rich.text import Text

from .._exceptions import ConfigError
from ..sinks import SinkStatus, sink_statuses
from ..store import Store, owner_alive
from ._options import parse_since, reading_store, store_options, with_store
from ._output import stdout

__all__ = ["sinks"]


@click.group()
def sinks() -> None:
    """Warehouse sinks: how far each has loaded, replay a range, forget one."""


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


@sinks.command()
@store_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@reading_store
async def status(store: Store, as_json: bool) -> None:
    """Each sink: its cursor, rows behind, lag (age of the oldest event not yet
    loaded), the last error and who loads it.  Sinks appear once a loader ran them."""
    found = await sink_statuses(store, now=time.time())
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(s) for s in found], indent=2))
        return
    if not found:
        click.echo("no sinks yet: a sink appears once serve or worker has loaded it")
        return
    table = Table()
    for column in ("sink", "url", "seq", "behind", "lag", "last load", "failures", "error"):
        table.add_column(column, justify="right" if column in ("seq", "behind") else "left")
    for s in found:
        table.add_row(
            s.name,
            Text(s.url),
            str(s.seq),
            f"{s.rows_behind}{'+' if s.rows_behind_capped else ''}",
            _age(s.lag_seconds),
            _age(s.since_load_seconds) + (" ago" if s.since_load_seconds is not None else ""),
            str(s.failures),
            Text(s.error or ""),
        )
    stdout().print(table)


def _known(found: list[SinkStatus], name: str) -> SinkStatus:
    for s in found:
        if s.name == name:
            return s
    names = ", ".join(s.name for s in found) or "none yet"
    raise ConfigError(f"no sink named {name!r}; known: {names}")


@sinks.command()
@store_options
@click.argument("name")
@click.option(
    "--since",
    required=True,
    help="Reload events received since: 7d, 12h, an ISO date or unix seconds.",
)
@with_store
async def replay(store: Store, name: str, since: str) -> None:
    """Reload sink NAME from the events received since --since (the store must still
    hold them).  Rows are rewritten in place, never duplicated; the running loader
    picks the rewound cursor up at its next batch."""
    now = time.time()
    _known(await sink_statuses(store, now=now), name)
    seq = await store.seq_before(parse_since(since, now))
    await store.rewind_sink(name, seq, now=now)
    click.echo(f"sink {name}: rewound to seq {seq}; the loader reloads from there")


@sinks.command()
@store_options
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_store
async def forget(store: Store, name: str, yes: bool) -> None:
    """Drop sink NAME's cursor.  Pruning keeps events a known sink has not loaded yet;
    forget a sink you removed so that pruning can go on (refused while a live process
    loads it).  Added again, it starts
    from the oldest event the store holds."""
    found = _known(await sink_statuses(store, now=time.time()), name)
    if found.leased and found.owner is not None and owner_alive(found.owner):
        # Its loader would go on without a cursor: no more loads, and gone from
        # `sinks status` and /metrics, a stall nobody sees.
        raise ConfigError(
            f"sink {name} is being loaded by {found.owner}: remove its --sink there and"
            " restart that process (or stop it) first"
        )
    if not yes:
        click.confirm(f"forget sink {name}?", abort=True)
    await store.forget_sink(name)
    click.echo(f"sink {name}: forgotten")
