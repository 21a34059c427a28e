"""``migrate`` (bring a store's schema up to date) and ``store copy`` (move the data of
one store into another, say from SQLite to PostgreSQL)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.progress import Progress

from .._exceptions import ConfigError, StoreUnavailable
from ..store import (
    LEDGER_TABLES,
    EventFilter,
    HandlerRun,
    Quarantined,
    Store,
    StoredEvent,
    StoreURL,
    Versioned,
    open_store,
    parse_store_url,
)
from ._errors import err
from ._options import existing_store, run, store_options, store_url, unavailable

__all__ = ["CopyCounts", "copy_store", "migrate", "store"]

#: Events (with their handler runs), quarantined bodies or ledger rows per write.
BATCH = 500


@click.command()
@store_options
def migrate(data_dir: Path, db: Path | None, store: str | None) -> None:
    """Create the store's tables, or bring them up to this version's schema, and say
    which version it is at.  (`serve` and `worker` do this too when they start.)"""
    url = store_url(data_dir, db, store)

    async def body() -> int | None:
        opened = open_store(url)
        try:
            await opened.open()
        except StoreUnavailable as exc:
            raise unavailable(url, exc) from exc
        try:
            return await opened.schema_version() if isinstance(opened, Versioned) else None
        finally:
            await opened.close()

    version = run(body())
    click.echo(f"{url}: schema version {'unknown' if version is None else version}")


@click.group("store")
def store() -> None:
    """The store as a whole: copy it into another."""


@dataclass
class CopyCounts:
    """What ``store copy`` read from the source and added to the target."""

    events: int = 0
    events_added: int = 0
    quarantined: int = 0
    quarantined_added: int = 0
    ledger: dict[str, int] = field(default_factory=dict)  # table -> rows added


async def _all_quarantined(store: Store, batch: int) -> AsyncIterator[Quarantined]:
    """Every quarantined body, newest first."""
    before: int | None = None
    while page := await store.quarantined(limit=batch, before_id=before):
        for q in page:
            yield q
        before = page[-1].id


def _body_key(q: Quarantined) -> tuple[Any, ...]:
    return (q.received_at, q.event_id, q.reason, hashlib.sha256(q.body).digest())


async def copy_store(
    source: Store,
    target: Store,
    *,
    batch: int = BATCH,
    progress: Progress | None = None,
) -> CopyCounts:
    """Copy every event (with its state, attempts and handler runs, in ``seq`` order),
    every quarantined body (oldest first) and the policies' ledger from ``source`` into
    ``target``.  What the target holds already (events by id, quarantined bodies and
    ledger rows by content) is skipped, so a copy run again adds only what is new.
    Sink cursors are not copied: ``seq``s differ between stores, so the target's
    sinks start from its oldest event.  Nor is what the dashboard and the alerts keep
    (``Watch``: per-minute traffic, alert states, operator actions): recent figures of
    the source's receivers, alert states the target's workers will find again, and the
    recent actions of operators, which the log keeps too."""
    counts = CopyCounts()
    total = (await source.stats()).events
    task = progress.add_task("events", total=total) if progress else None
    pending: list[tuple[StoredEvent, Sequence[HandlerRun]]] = []

    async def flush() -> None:
        counts.events_added += await target.import_events(pending)
        if progress is not None and task is not None:
            progress.advance(task, len(pending))
        pending.clear()

    async for event in source.iter_events(EventFilter(), batch=batch):
        pending.append((event, await source.handler_runs(event.seq)))
        counts.events += 1
        if len(pending) >= batch:
            await flush()
    await flush()

    # Oldest first, so the target's ids keep the order; bodies it holds already (a copy
    # run again) are left out: one without an event_id has no key the target could check.
    held = {_body_key(q) async for q in _all_quarantined(target, batch)}
    bodies = [q async for q in _all_quarantined(source, batch)]
    bodies.reverse()
    counts.quarantined = len(bodies)
    fresh = [q for q in bodies if _body_key(q) not in held]
    for start in range(0, len(fresh), batch):
        counts.quarantined_added += await target.import_quarantined(fresh[start : start + batch])

    source_ledger, target_ledger = source.ledger(), target.ledger()
    for table in LEDGER_TABLES:
        # Audit rows get new ids in the target, so their key is everything else.
        audit = table == "actions"
        known = {row[1:] async for row in target_ledger.export_rows(table)} if audit else set()
        added = 0
        rows: list[tuple[Any, ...]] = []
        async for row in source_ledger.export_rows(table):
            if audit and row[1:] in known:
                continue
            rows.append(row)
            if len(rows) >= batch:
                added += await target_ledger.import_rows(table, rows)
                rows = []
        if rows:
            added += await target_ledger.import_rows(table, rows)
        counts.ledger[table] = added
    return counts


@store.command("copy")
@click.option("--from", "source", required=True, metavar="URL", help="The store to read.")
@click.option("--to", "target", required=True, metavar="URL", help="The store to add to.")
@click.option(
    "--force",
    is_flag=True,
    help="Add to a target that already holds events (those it has are skipped).",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1, max=100_000),
    default=BATCH,
    show_default=True,
    help="Rows per write.",
)
def store_copy(source: str, target: str, force: bool, batch: int) -> None:
    """Copy events (with their state, attempts and handler runs), quarantined bodies
    and the policies' ledger from one store into another, e.g. from
    sqlite:///var/lib/cio/inbox.db to postgresql://cio@db/cio.

    Stop every serve and worker on the source first.  Events already in the target are
    skipped, so a copy that stopped halfway can be run again with --force.

    Warehouse sink cursors are not copied: on the target, each sink loads again from
    its oldest event (sinks upsert, so rows already loaded are refreshed, not doubled).
    Nor are the dashboard's per-minute traffic, the alerts' states and the operator
    actions the dead-letters page lists."""
    source_url, target_url = parse_store_url(source), parse_store_url(target)
    if _same(source_url, target_url):
        raise ConfigError("--from and --to name the same store")
    counts = run(_copy(source_url, target_url, force=force, batch=batch))
    ledger = ", ".join(f"{table} {n}" for table, n in counts.ledger.items())
    click.echo(
        f"copied {source_url} -> {target_url}: "
        f"events {counts.events_added} added ({counts.events - counts.events_added} already"
        f" there), quarantined {counts.quarantined_added} added"
        f" ({counts.quarantined - counts.quarantined_added} already there), ledger rows {ledger}"
    )


def _same(a: StoreURL, b: StoreURL) -> bool:
    if a.path is not None and b.path is not None:  # sqlite:inbox.db is sqlite:///$PWD/inbox.db
        return a.path.resolve() == b.path.resolve()
    return a == b


async def _copy(source: StoreURL, target: StoreURL, *, force: bool, batch: int) -> CopyCounts:
    async with existing_store(source, readonly=True) as reader:
        writer = open_store(target)
        try:
            await writer.open()
        except StoreUnavailable as exc:
            raise unavailable(target, exc) from exc
        try:
            held = (await writer.stats()).events
            if held and not force:
                raise ConfigError(
                    f"{target} already holds {held} event(s): pass --force to add to them"
                    " (events it has are skipped)"
                )
            with Progress(console=err, transient=True, disable=not err.is_terminal) as progress:
                counts = await copy_store(reader, writer, batch=batch, progress=progress)
            err.print(
                f"copied {counts.events} event(s), {counts.quarantined} quarantined body(ies)",
                highlight=False,
                markup=False,
            )
            return counts
        finally:
            await writer.close()
