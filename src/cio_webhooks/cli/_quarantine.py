"""``quarantine list|show|reingest|purge``: authentic bodies that were not events."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator

import click

from .._exceptions import ConfigError, InvalidEvent
from .._logging import quote
from ..app import STALE_REASON
from ..events import iso, parse_event
from ..store import Operations, Quarantined
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


async def _quarantined_bodies(
    store: Operations, idents: tuple[int, ...]
) -> AsyncIterator[Quarantined]:
    """The named bodies (all must exist), or every one, newest first, page by page."""
    if idents:
        named = [await store.quarantined(ident=i, limit=1) for i in idents]
        missing = [str(i) for i, found in zip(idents, named, strict=True) if not found]
        if missing:
            raise ConfigError(f"no quarantined body {', '.join(missing)}")
        for found in named:
            yield found[0]
        return
    before: int | None = None
    while page := await store.quarantined(limit=500, before_id=before):
        for q in page:
            yield q
        before = page[-1].id


@quarantine.command("reingest")
@store_options
@click.argument("idents", nargs=-1, type=QUARANTINE_ID)
@click.option("--all", "all_", is_flag=True, help="Every quarantined body except stale ones.")
@with_store
async def quarantine_reingest(store: Operations, idents: tuple[int, ...], all_: bool) -> None:
    """Read quarantined bodies again (say, after an upgrade).  Those that are events now
    are stored, deduplicated, and dispatched like any event; they leave the quarantine.

    Stale bodies (signed beyond the dedupe horizon) are reingested only when named.
    A body the store cannot hold as an event stays quarantined (counted ``refused``)."""
    if bool(idents) == all_:
        raise ConfigError("name quarantine IDs or pass --all")
    counts = dict.fromkeys(("stored", "duplicate", "still_invalid", "stale_left"), 0)
    refused = 0
    async for q in _quarantined_bodies(store, idents):
        if all_ and q.reason.startswith(STALE_REASON):
            counts["stale_left"] += 1
            continue
        try:
            event = parse_event(q.body, received_at=q.received_at)
        except InvalidEvent:
            counts["still_invalid"] += 1
            continue
        try:
            result = await store.release_quarantined(q.id, event)
        except ValueError as exc:
            # A value this store cannot hold (PostgreSQL: a NUL in the event_id): the
            # body stays quarantined, and the other bodies are still read again.
            err.print(f"note: quarantined body {q.id} stays: {exc}", highlight=False, markup=False)
            refused += 1
            continue
        counts[result.value] += 1
    if refused:
        counts["refused"] = refused
    click.echo(" ".join(f"{k}={v}" for k, v in counts.items()))


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
