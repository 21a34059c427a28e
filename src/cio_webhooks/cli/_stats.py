"""``stats``: counts by state and by kind."""

from __future__ import annotations

import dataclasses
import json

import click
from rich.table import Table
from rich.text import Text

from ..store import Operations
from ._options import reading_store, store_options
from ._output import stdout

__all__ = ["stats"]


@click.command()
@store_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@reading_store
async def stats(store: Operations, as_json: bool) -> None:
    """Counts by state and by object_type.metric."""
    data = await store.stats()
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(data), indent=2))
        return
    console = stdout()
    table = Table(title=f"{data.events} events, {data.quarantined} quarantined")
    table.add_column("state")
    table.add_column("events", justify="right")
    for state, n in data.states.items():
        table.add_row(state, str(n))
    console.print(table)
    kinds = Table(title="by kind")
    kinds.add_column("object_type.metric")
    kinds.add_column("events", justify="right")
    for kind, n in data.kinds.items():
        kinds.add_row(Text(kind), str(n))
    console.print(kinds)
