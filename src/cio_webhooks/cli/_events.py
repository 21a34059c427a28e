"""``events export``: every stored event with the normalised fields."""

from __future__ import annotations

import csv
import dataclasses
import json
from typing import Any, TextIO

import click
from rich.progress import Progress

from ..events import NORMALISED_FIELDS, iso, normalise, parse_event
from ..store import Operations, StoredEvent
from ._errors import err
from ._options import event_filter, reading_store, store_options

__all__ = ["events", "export_row"]


@click.group()
def events() -> None:
    """Stored events."""


def export_row(stored: StoredEvent) -> dict[str, Any]:
    """The normalised row of a stored event, whatever its body holds.

    A time outside what an ISO date can express (``timestamp`` 1e30, 2^62, past
    year 9999) exports as null; the raw body keeps the number.  A body that no
    longer parses as an event exports the columns the inbox has, the rest null.
    """
    try:
        event = parse_event(stored.body, received_at=stored.received_at)
    except Exception:  # whatever this version's parser makes of an older body
        row: dict[str, Any] = dict.fromkeys(NORMALISED_FIELDS)
        row.update(
            event_id=stored.event_id,
            object_type=stored.object_type,
            metric=stored.metric,
            received_at=iso(stored.received_at),
        )
    else:
        timestamp = event.timestamp if iso(event.timestamp) is not None else None
        received_at = event.received_at if iso(event.received_at) is not None else None
        row = normalise(dataclasses.replace(event, timestamp=timestamp, received_at=received_at))
    row["backfilled"] = stored.backfilled
    return row


@events.command("export")
@store_options
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option("--since", help="7d, 12h, an ISO date or unix seconds (by receive time).")
@click.option("--metric", multiple=True, help="email.bounced, *.clicked, bounced ...; repeatable.")
@click.option("--output", "-o", type=click.File("w"), default="-", help="File to write [stdout].")
@reading_store
async def export(
    store: Operations, fmt: str, since: str | None, metric: tuple[str, ...], output: TextIO
) -> None:
    """Every received event (processed or not) with the normalised fields."""
    where = event_filter(since, metric)
    writer = csv.DictWriter(output, NORMALISED_FIELDS) if fmt == "csv" else None
    if writer:
        writer.writeheader()
    total = (await store.stats()).events
    with Progress(console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("exporting", total=total)
        async for stored in store.iter_events(where):
            row = export_row(stored)
            if writer:
                writer.writerow(row)
            else:
                output.write(json.dumps(row, ensure_ascii=False) + "\n")
            progress.advance(task)
