"""``cio-webhooks actions``: what policies did (or would have done) in Customer.io.

``cli.py`` registers the group, last, with ``main.add_command``.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import click

from .cli import _db, _print_rows, fail, store_options
from .events import iso
from .store import AUDIT_COLUMNS
from .store.sqlite import connect_readonly

__all__ = ["actions"]

STATUSES = ("ok", "failed", "dry_run", "skipped")


# A Group object rather than a decorated function: cli.py imports it back, and an
# explicit type survives that import cycle for the type checker.
actions: click.Group = click.Group(
    "actions", help="What policies did (or, in dry-run, would have done) in Customer.io."
)


def _recent(
    path: Path, *, limit: int, event_id: str | None, status: str | None
) -> list[dict[str, Any]]:
    """The newest audit rows first, read without creating or changing any file
    (``ActionLog`` would create its tables: this is a report, not the service)."""
    chosen = {"event_id": event_id, "status": status}
    chosen = {column: value for column, value in chosen.items() if value is not None}
    where = " AND ".join(f"{column} = ?" for column in chosen) or "1"
    with contextlib.closing(connect_readonly(path)) as conn:
        found = conn.execute(
            f"SELECT {', '.join(AUDIT_COLUMNS)} FROM actions WHERE {where}"
            " ORDER BY id DESC LIMIT ?",
            [*chosen.values(), limit],
        ).fetchall()
    return [dict(zip(AUDIT_COLUMNS, row, strict=True)) for row in found]


@actions.command("list")
@store_options
@click.option("--event-id", help="Only the actions of this event.")
@click.option("--status", type=click.Choice(STATUSES), help="Only actions with this outcome.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="A JSON list, newest first.")
def actions_list(
    data_dir: Path,
    db: Path | None,
    event_id: str | None,
    status: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The audit log, newest first.

    Each row: the event, rule, person, action, what was sent (never credentials)
    and the outcome: ok, failed, dry_run or skipped (the event named no person).
    """
    path = _db(data_dir, db).parent / "actions.db"
    if not path.is_file():
        fail(f"no actions recorded at {path} (no policy has run yet, or pass --data-dir / --db)", 2)

    try:
        rows = _recent(path, limit=limit, event_id=event_id, status=status)
    except sqlite3.Error as exc:
        fail(f"cannot read the audit log {path}: {exc}", 1)
    for row in rows:
        row["created_at"] = iso(row["created_at"])
        row["dry_run"] = bool(row["dry_run"])
        request = json.loads(row["request"])
        # In the table the action and person have their own columns: show what was sent.
        row["request"] = request if as_json else json.dumps(request.get("attributes") or {})
    if not as_json:
        for row in rows:
            del row["id"]
    _print_rows(rows, as_json, "actions")
