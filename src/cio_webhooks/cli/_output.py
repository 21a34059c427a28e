"""What commands print on stdout: tables that fit any terminal, JSON, event rows."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console, JustifyMethod
from rich.table import Table
from rich.text import Text

from ..events import iso
from ..store import StoredEvent
from ._errors import err

__all__ = ["event_row", "fair_widths", "payload", "print_rows", "print_table", "stdout"]


def stdout() -> Console:
    """A console for tables: the terminal's width (or ``COLUMNS``), else 200 when piped."""
    console = Console()
    return console if console.is_terminal or "COLUMNS" in os.environ else Console(width=200)


def event_row(e: StoredEvent) -> dict[str, Any]:
    """The columns an event shows in listings (``dlq list``, ``dlq show``)."""
    return {
        "event_id": e.event_id,
        "kind": f"{e.object_type}.{e.metric}",
        "state": e.state.value,
        "attempts": e.attempts,
        "received_at": iso(e.received_at),
        "next_attempt_at": iso(e.next_attempt_at),
        "last_error": e.last_error,
    }


def payload(body: bytes) -> dict[str, Any]:
    """``{"payload": ...}``: the body as JSON.  Bytes that are not UTF-8 show as U+FFFD
    (and a ``payload_note`` says so); a body that is not JSON at all shows as text."""
    text = body.decode("utf-8", "replace")
    note = None if text.encode() == body else "the body is not valid UTF-8; U+FFFD marks bad bytes"
    try:
        value: Any = json.loads(text)
    except ValueError:
        value, note = text, "the body is not JSON; shown as text"
    return {"payload": value} | ({"payload_note": note} if note else {})


def print_rows(rows: list[dict[str, Any]], as_json: bool, title: str) -> None:
    """``rows`` as a JSON list, or as a table (``title: none`` on stderr when empty)."""
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        err.print(f"{title}: none")
        return
    body = [["" if v is None else str(v) for v in row.values()] for row in rows]
    print_table(title, list(rows[0]), body)


def fair_widths(wanted: Sequence[int], room: int) -> list[int]:
    """Column widths that fit in ``room``: narrow columns keep their width, and the
    wide ones share what is left equally (max-min fairness), never below 1."""
    if sum(wanted) <= room:
        return list(wanted)
    level, left, pending = 1, room, sorted(wanted)
    for i, want in enumerate(pending):
        share = left // (len(pending) - i)
        if want > share:
            level = max(share, 1)
            break
        left -= want
    return [min(want, level) for want in wanted]


def print_table(
    title: str, header: Sequence[str], body: Sequence[Sequence[str]], *, right: int = 0
) -> None:
    """A table on stdout that shows every column at any terminal width.

    Rich would squeeze columns to nothing or cut them with an ellipsis in a narrow
    terminal; here each column gets a fair width (``fair_widths``) and a longer value
    folds onto more lines.  Cells are text, never markup: data may hold ``[`` and ``]``.
    The columns from index ``right`` on (if not 0) are numbers, aligned right."""
    console = stdout()
    # Each column costs 2 cells of padding and 1 of border, plus the closing border.
    room = console.width - 3 * len(header) - 1
    # Values first: what is left widens the columns whose header is longer.
    values = [max((len(cells[i]) for cells in body), default=1) for i in range(len(header))]
    widths = fair_widths(values, room)
    more = [max(len(name) - width, 0) for name, width in zip(header, widths, strict=True)]
    extra = fair_widths(more, max(room - sum(widths), 0))
    widths = [w + e for w, e in zip(widths, extra, strict=True)]
    table = Table(title=title)
    for i, (name, width) in enumerate(zip(header, widths, strict=True)):
        justify: JustifyMethod = "right" if right and i >= right else "left"
        table.add_column(name, width=width, overflow="fold", justify=justify)
    for cells in body:
        table.add_row(*map(Text, cells))
    console.print(table)
