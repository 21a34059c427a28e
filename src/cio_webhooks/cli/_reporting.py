"""``report``: deliveries per campaign, broadcast, newsletter or day, from the warehouse."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
import time
from pathlib import Path

import click
from rich.progress import Progress

from .._exceptions import ConfigError
from ..customerio import AppClient, CustomerIONotFound
from ..reports import (
    COUNTS,
    GROUPINGS,
    NONE_GROUP,
    RATES,
    ReportRow,
    delivery_report,
    delivery_report_for,
)
from ..settings import env
from ..sinks import parse_sink_url
from ._errors import err
from ._options import (
    app_api_options,
    parse_since,
    run,
    store_options,
    store_url,
    warehouse_beside,
)
from ._output import print_table

__all__ = ["app_client", "report"]


def app_client(app_api_key: str | None, region: str, app_url: str | None) -> AppClient:
    """The App API client of ``app_api_options``; ConfigError without a key."""
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


@click.command()
@store_options
@click.option("--by", type=click.Choice(list(GROUPINGS)), default="campaign", show_default=True)
@click.option("--since", help="7d, 12h, an ISO date or unix seconds (by occurrence time).")
@click.option(
    "--warehouse",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=env("WAREHOUSE"),
    help="Warehouse SQLite file. [default: next to the SQLite inbox, else in DATA_DIR]",
)
@click.option(
    "--sink",
    "sink_url",
    metavar="URL",
    help="Report from a SQL sink instead: sqlite:///FILE or postgresql://... (its"
    " ?schema= and ?table_prefix= as the loader writes it).",
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
    store: str | None,
    by: str,
    since: str | None,
    warehouse: Path | None,
    sink_url: str | None,
    as_json: bool,
    as_csv: bool,
    compare_api: bool,
    app_api_key: str | None,
    region: str,
    app_url: str | None,
) -> None:
    """Sent, delivered, opened, clicked, ... per group, as unique deliveries, with rates."""
    cutoff = parse_since(since, time.time()) if since else None
    if sink_url is not None:
        if warehouse is not None:
            raise ConfigError("--sink and --warehouse name two warehouses: pass one")
        sink = parse_sink_url(sink_url, reading=True)  # the sink's own URL, email=hash too
        rows = delivery_report_for(sink, by=by, since=cutoff)
    else:
        path = warehouse or warehouse_beside(store_url(data_dir, db, store), data_dir)
        if not path.exists():
            raise ConfigError(f"no warehouse at {path} (pass --warehouse or --data-dir)")
        rows = delivery_report(path, by=by, since=cutoff)
    if compare_api:
        if by == "day":
            raise ConfigError("--compare-api works with --by campaign|broadcast|newsletter")
        rows = run(_with_api_metrics(rows, by, app_client(app_api_key, region, app_url)))
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
