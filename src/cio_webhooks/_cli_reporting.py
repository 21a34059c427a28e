"""CLI commands for reporting about events: ``report``, ``reconcile``.

Importing this module registers them on the ``cio-webhooks`` group (``cli.py`` does, last).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.progress import Progress

from ._exceptions import CioWebhooksError, ConfigError
from .cli import (
    F,
    _db,
    _env,
    _existing_inbox,
    _print_rows,
    _run,
    err,
    fail,
    inbox_path,
    main,
    parse_since,
    print_table,
    store_options,
)
from .customerio import AppClient, CustomerIONotFound
from .events import iso
from .reconcile import Discrepancy, ReconcileResult, reconcile
from .reports import COUNTS, GROUPINGS, NONE_GROUP, RATES, ReportRow, delivery_report
from .sinks import SQLiteWarehouse

__all__ = ["reconcile_command", "report"]


def app_api_options(fn: F) -> F:
    options = [
        click.option(
            "--app-api-key",
            envvar=_env("APP_API_KEY"),
            help="Customer.io App API key (prefer the env var).",
        ),
        click.option(
            "--region",
            type=click.Choice(["us", "eu"]),
            default="us",
            show_default=True,
            envvar=_env("REGION"),
        ),
        click.option("--app-url", envvar=_env("APP_URL"), help="Override the App API URL."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _app_client(app_api_key: str | None, region: str, app_url: str | None) -> AppClient:
    if not app_api_key:
        raise ConfigError("this needs an App API key: --app-api-key or CIO_WEBHOOKS_APP_API_KEY")
    return AppClient(app_api_key, region=region, base_url=app_url)


#: The counts the table shows (machine opens and clicks go beside the human ones).
TABLE_COUNTS = (
    "sent",
    "delivered",
    "opened",
    "clicked",
    "converted",
    "bounced",
    "spammed",
    "unsubscribed",
    "failed",
)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


@main.command()
@store_options
@click.option("--by", type=click.Choice(list(GROUPINGS)), default="campaign", show_default=True)
@click.option("--since", help="7d, 12h, an ISO date or unix seconds (by occurrence time).")
@click.option(
    "--warehouse",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=_env("WAREHOUSE"),
    help="Warehouse SQLite file. [default: next to --db]",
)
@click.option("--json", "as_json", is_flag=True, help="A JSON list of rows.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header row.")
@click.option(
    "--compare-api",
    is_flag=True,
    help="Put the App API's own metrics beside ours (not for --by day).",
)
@app_api_options
def report(
    data_dir: Path,
    db: Path | None,
    by: str,
    since: str | None,
    warehouse: Path | None,
    as_json: bool,
    as_csv: bool,
    compare_api: bool,
    app_api_key: str | None,
    region: str,
    app_url: str | None,
) -> None:
    """Sent, delivered, opened, clicked, ... per group, as unique deliveries, with rates."""
    path = warehouse or _db(data_dir, db).parent / "warehouse.db"
    if not path.exists():
        err.print(f"[red]error:[/] no warehouse at {path} (pass --warehouse or --data-dir)")
        sys.exit(2)
    try:
        cutoff = parse_since(since, time.time()) if since else None
    except ConfigError as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(2)
    try:
        rows = delivery_report(path, by=by, since=cutoff)
    except CioWebhooksError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(1)
    if compare_api:
        if by == "day":
            err.print("[red]error:[/] --compare-api works with --by campaign|broadcast|newsletter")
            sys.exit(2)
        rows = _run(_with_api_metrics(rows, by, _app_client(app_api_key, region, app_url)))
    table = [row.as_dict() for row in rows]
    if as_json:
        click.echo(json.dumps(table, indent=2))
    elif as_csv:
        # The header even when there are no rows, so tools can rely on it.
        header = list(table[0]) if table else ["group", *COUNTS, *RATES]
        writer = csv.DictWriter(sys.stdout, header)
        writer.writeheader()
        writer.writerows(table)
    else:
        _report_table(rows, by)


async def _with_api_metrics(rows: list[ReportRow], by: str, app: AppClient) -> list[ReportRow]:
    out = []
    try:
        with Progress(console=err, transient=True, disable=not err.is_terminal) as progress:
            task = progress.add_task(f"App API {by} metrics", total=len(rows))
            for row in rows:
                out.append(dataclasses.replace(row, api=await _api_totals(app, by, row.group)))
                progress.advance(task)
    finally:
        await app.close()
    return out


async def _api_totals(app: AppClient, by: str, group: str) -> dict[str, int | None]:
    """The App API's totals for ``group``: each metric as None ("n/a") when the API
    does not know the group (``(none)``, an id it answers 404 for, a deleted campaign)."""
    if group == NONE_GROUP:
        return dict.fromkeys(TABLE_COUNTS)
    try:
        series = await app.metrics(by, group)
    except CustomerIONotFound:
        return dict.fromkeys(TABLE_COUNTS)
    return {metric: sum(values) for metric, values in sorted(series.items())}


def _report_table(rows: list[ReportRow], by: str) -> None:
    columns = TABLE_COUNTS
    header = [by, *columns, *(rate.replace("_rate", " %") for rate in RATES)]
    body = []
    for row in rows:
        data = row.as_dict()
        cells = [row.group]
        for column in columns:
            cell = str(data[column])
            if column in ("opened", "clicked"):
                cell += f" +{data['machine_' + column]}m"
            if row.api is not None and column in row.api:
                theirs = row.api[column]
                cell += f" (api {'n/a' if theirs is None else theirs})"
            cells.append(cell)
        cells.extend(_percent(row.rates[rate]) for rate in RATES)
        body.append(cells)
    print_table(
        f"deliveries by {by} (unique deliveries; opens/clicks human + machine)",
        header,
        body,
        right=1,
    )


def _received(warehouse: Path | None, default: Path) -> SQLiteWarehouse | None:
    """The warehouse to look up received events in, read-only; None when there is none.

    Without it only the inbox is compared, and an event it has pruned looks missing.
    """
    if warehouse is not None and not warehouse.exists():
        err.print(f"[red]error:[/] no warehouse at {warehouse}", highlight=False)
        sys.exit(2)
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


@main.command("reconcile")
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
    envvar=_env("WAREHOUSE"),
    help="Warehouse SQLite file: events the inbox has pruned count as received."
    " [default: next to --db]",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@app_api_options
def reconcile_command(
    data_dir: Path,
    db: Path | None,
    since: str,
    backfill: bool,
    warehouse: Path | None,
    as_json: bool,
    app_api_key: str | None,
    region: str,
    app_url: str | None,
) -> None:
    """Compare Customer.io's deliveries (App API /messages) with the events we stored."""
    try:
        inbox_path(data_dir, db)  # before any note about the warehouse
    except ConfigError as exc:
        fail(exc, 2)
    received = _received(warehouse, _db(data_dir, db).parent / "warehouse.db")

    async def body() -> ReconcileResult:
        cutoff = parse_since(since, time.time())
        app = _app_client(app_api_key, region, app_url)
        try:
            async with _existing_inbox(data_dir, db, readonly=not backfill) as inbox:
                with Progress(console=err, transient=True, disable=not err.is_terminal) as progress:
                    task = progress.add_task("reading /messages", total=None)
                    return await reconcile(
                        app,
                        inbox,
                        since=cutoff,
                        now=time.time(),
                        backfill=backfill,
                        progress=lambda n: progress.update(task, completed=n),
                        warehouse=received,
                    )
        finally:
            await app.close()
            if received is not None:
                await received.close()

    result = _run(body())

    def rows(items: list[Discrepancy]) -> list[dict[str, Any]]:
        return [
            {
                "delivery_id": d.delivery_id,
                "object_type": d.object_type,
                "metric": d.metric,
                "occurred_at": iso(d.occurred_at),
            }
            for d in items
        ]

    if as_json:
        click.echo(
            json.dumps(
                {
                    "deliveries": result.deliveries,
                    "missing": rows(result.missing),
                    "extra": rows(result.extra),
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
        _print_rows(rows(result.missing), False, "missing (Customer.io has them, we do not)")
    if result.extra:
        _print_rows(rows(result.extra), False, "extra (we have them, Customer.io does not)")
