"""``reconcile``: Customer.io's deliveries (App API) against the events we stored."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
from rich.progress import Progress

from .._exceptions import ConfigError
from ..events import iso
from ..reconcile import Discrepancy, ReconcileResult, reconcile
from ..settings import env
from ..sinks import SQLiteWarehouse
from ..store import StoreURL
from ._errors import err
from ._options import (
    app_api_options,
    existing_store,
    parse_since,
    require_inbox,
    run,
    store_options,
    store_url,
    warehouse_beside,
)
from ._output import print_rows
from ._reporting import app_client

__all__ = ["reconcile_command"]


def _received(warehouse: Path | None, default: Path) -> SQLiteWarehouse | None:
    """The warehouse to look up received events in, read-only; None when there is none.

    Without it only the store is compared, and an event it has pruned looks missing.
    """
    if warehouse is not None and not warehouse.exists():
        raise ConfigError(f"no warehouse at {warehouse}")
    path = warehouse or default
    if not path.exists():
        err.print(
            f"note: no warehouse at {path}: comparing with the inbox only, where events"
            " older than --dedupe-days are no longer kept",
            highlight=False,
            markup=False,
        )
        return None
    return SQLiteWarehouse.reader(path)


@click.command("reconcile")
@store_options
@click.option(
    "--since",
    default="7d",
    show_default=True,
    help="Deliveries created since: 7d, 12h, an ISO date or unix seconds.",
)
@click.option(
    "--backfill",
    is_flag=True,
    help="Store the missing events (marked backfilled; policies do not run).",
)
@click.option(
    "--warehouse",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=env("WAREHOUSE"),
    help="Warehouse SQLite file: events the inbox has pruned count as received."
    " [default: next to the SQLite inbox, else in DATA_DIR]",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@app_api_options
def reconcile_command(
    data_dir: Path,
    db: Path | None,
    store: str | None,
    since: str,
    backfill: bool,
    warehouse: Path | None,
    as_json: bool,
    app_api_key: str | None,
    region: str,
    app_url: str | None,
) -> None:
    """Compare Customer.io's deliveries (App API /messages) with the events we stored."""
    url = store_url(data_dir, db, store)
    require_inbox(url)  # before any note about the warehouse
    received = _received(warehouse, warehouse_beside(url, data_dir))
    result = run(_compare(url, since, backfill, received, app_api_key, region, app_url))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "deliveries": result.deliveries,
                    "missing": _rows(result.missing),
                    "extra": _rows(result.extra),
                    "backfilled": result.backfilled,
                },
                indent=2,
            )
        )
        return
    click.echo(
        f"checked {result.deliveries} deliveries: {len(result.missing)} missing event(s), "
        f"{len(result.extra)} extra, {result.backfilled} backfilled"
    )
    if result.missing:
        print_rows(_rows(result.missing), False, "missing (Customer.io has them, we do not)")
    if result.extra:
        print_rows(_rows(result.extra), False, "extra (we have them, Customer.io does not)")


async def _compare(
    url: StoreURL,
    since: str,
    backfill: bool,
    received: SQLiteWarehouse | None,
    app_api_key: str | None,
    region: str,
    app_url: str | None,
) -> ReconcileResult:
    try:
        cutoff = parse_since(since, time.time())
        app = app_client(app_api_key, region, app_url)
        try:
            async with existing_store(url, readonly=not backfill) as store:
                with Progress(console=err, transient=True, disable=not err.is_terminal) as progress:
                    task = progress.add_task("reading /messages", total=None)
                    return await reconcile(
                        app,
                        store,
                        since=cutoff,
                        now=time.time(),
                        backfill=backfill,
                        progress=lambda n: progress.update(task, completed=n),
                        warehouse=received,
                    )
        finally:
            await app.close()
    finally:
        if received is not None:
            await received.close()


def _rows(items: list[Discrepancy]) -> list[dict[str, Any]]:
    return [
        {
            "delivery_id": d.delivery_id,
            "object_type": d.object_type,
            "metric": d.metric,
            "occurred_at": iso(d.occurred_at),
        }
        for d in items
    ]
