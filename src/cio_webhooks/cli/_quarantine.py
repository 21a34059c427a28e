"""``quarantine list|show|reingest|purge``: authentic bodies that were not events."""

from __future__ import annotations

import sys
import time

import click

from .._exceptions import ConfigError
from .._logging import quote
from .._operator import quarantined_bodies, reingest
from ..events import iso
from ..store import Operations, Store
from ._audit import record
from ._errors import err
from ._options import (
    LIMIT,
    QUARANTINE_ID,
    parse_since,
    reading_store,
    store_options,
    with_store,
)
from ._output import print_rows

__all__ = ["quarantine"]


@click.group()
def quarantine() -> None:
    """Authentic bodies that were not valid events (or signed too long ago), kept with
    the reason."""


@quarantine.command("list")
@store_options
@click.option("--limit", type=LIMIT, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@reading_store
async def quarantine_list(store: Operations, limit: int, as_json: bool) -> None:
    rows = [
        {
            "id": q.id,
            "received_at": iso(q.received_at),
            "event_id": q.event_id,
            "reason": q.reason,
            "bytes": len(q.body),
        }
        for q in await store.quarantined(limit=limit)
    ]
    print_rows(rows, as_json, "quarantine")


@quarantine.command("show")
@store_options
@click.argument("ident", type=QUARANTINE_ID)
@reading_store
async def quarantine_show(store: Operations, ident: int) -> None:
    """The reason and the raw body, exactly as received."""
    found = await store.quarantined(ident=ident, limit=1)
    if not found:
        raise ConfigError(f"no quarantined body {ident}")
    q = found[0]
    err.print(
        f"id={q.id} received_at={iso(q.received_at)} reason={quote(q.reason)}",
        highlight=False,
        markup=False,
    )
    sys.stdout.buffer.write(q.body + b"\n")


@quarantine.command("reingest")
@store_options
@click.argument("idents", nargs=-1, type=QUARANTINE_ID)
@click.option("--all", "all_", is_flag=True, help="Every quarantined body except stale ones.")
@with_store
async def quarantine_reingest(store: Store, idents: tuple[int, ...], all_: bool) -> None:
    """Read quarantined bodies again (say, after an upgrade).  Those that are events now
    are stored, deduplicated, and dispatched like any event; they leave the quarantine.

    Stale bodies (signed beyond the dedupe horizon) are reingested only when named.
    A body the store cannot hold as an event stays quarantined (counted ``refused``).
    Recorded with who did it, for the dashboard's dead-letters page."""
    if bool(idents) == all_:
        raise ConfigError("name quarantine IDs or pass --all")
    done = await reingest(store, quarantined_bodies(store, idents), named=not all_)
    for ident, why in done.refused:
        err.print(f"note: quarantined body {ident} stays: {why}", highlight=False, markup=False)
    counts = " ".join(f"{k}={v}" for k, v in done.counts().items())
    if idents:
        what = f"quarantined bod{'ies' if len(idents) > 1 else 'y'} {', '.join(map(str, idents))}"
    else:
        what = "every quarantined body"
    await record(store, "quarantine_reingest", done.released, f"{what}: {counts}")
    click.echo(counts)


@quarantine.command("purge")
@store_options
@click.option(
    "--before", required=True, help="7d, 12h, an ISO date or unix seconds (by receive time)."
)
@with_store
async def quarantine_purge(store: Operations, before: str) -> None:
    """Delete quarantined bodies received before a time."""
    try:
        cutoff = parse_since(before, time.time())
    except ConfigError:
        raise ConfigError(
            f"--before {before!r}: use 7d, 12h, 30m, an ISO date or unix seconds"
        ) from None
    n = await store.purge_quarantined(received_before=cutoff)
    click.echo(f"purged {n} quarantined body(ies) received before {before}")
