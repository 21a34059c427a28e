"""``actions list``: what policies did (or would have done) in Customer.io."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import click

from .._exceptions import ConfigError
from .._service import ledger_file
from ..events import iso
from ..settings import env
from ..store import Ledger, StoreURL, open_store
from ._options import existing_store, run, store_options, store_url
from ._output import print_rows

__all__ = ["actions"]

STATUSES = ("ok", "failed", "dry_run", "skipped")


@click.group()
def actions() -> None:
    """What policies did (or, in dry-run, would have done) in Customer.io."""


@asynccontextmanager
async def _ledger(url: StoreURL, actions_db: Path | None) -> AsyncIterator[Ledger]:
    """The policies' ledger of the store, read-only.  A SQLite store keeps it in its
    own file (``--actions-db``, else beside the inbox), which must exist (nothing is
    created)."""
    path = ledger_file(url, actions_db)
    if path is None:
        if actions_db is not None:
            raise ConfigError(f"--actions-db is for a SQLite store, not {url.backend}")
        async with existing_store(url, readonly=True) as store:
            yield store.ledger()
        return
    if not path.is_file():
        raise ConfigError(
            f"no actions recorded at {path} (no policy has run yet,"
            " or pass --store, --db, --data-dir or --actions-db)"
        )
    store = open_store(url, readonly=True, ledger_path=path)
    try:
        yield store.ledger()  # its own file: the inbox need not be opened
    finally:
        await store.close()


@actions.command("list")
@store_options
@click.option(
    "--actions-db",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=env("ACTIONS_DB"),
    help="The ledger file of a SQLite store, if serve/worker were given one."
    " [default: actions.db next to the inbox]",
)
@click.option("--event-id", help="Only the actions of this event.")
@click.option("--status", type=click.Choice(STATUSES), help="Only actions with this outcome.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="A JSON list, newest first.")
def actions_list(
    data_dir: Path,
    db: Path | None,
    store: str | None,
    actions_db: Path | None,
    event_id: str | None,
    status: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The audit log, newest first.

    Each row: the event, rule, person, action, what was sent (never credentials)
    and the outcome: ok, failed, dry_run or skipped (the event named no person).
    """
    url = store_url(data_dir, db, store)

    async def recent() -> list[dict[str, Any]]:
        async with _ledger(url, actions_db) as ledger:
            found = await ledger.recent(limit=limit, event_id=event_id, status=status)
        return [dataclasses.asdict(row) for row in found]

    rows = run(recent())
    for row in rows:
        row["created_at"] = iso(row["created_at"])
        request = json.loads(row["request"])
        # In the table the action and person have their own columns: show what was sent.
        row["request"] = request if as_json else json.dumps(request.get("attributes") or {})
    if not as_json:
        for row in rows:
            del row["id"]
    print_rows(rows, as_json, "actions")
