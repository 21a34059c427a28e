"""Ack-to-warehouse lag of one benchmark run: ``python bench/lag.py WORKDIR``.

Reads WORKDIR/events.db (the inbox) and WORKDIR/warehouse.db after the server
has stopped and prints:

- how many events the inbox holds (each one was acked: the 200 is sent only
  after the commit that stores it), and how many were handled (state ``done``);
- how many rows the warehouse held when the server stopped;
- how many inbox events have no warehouse row: the loader's backlog when the
  server was killed.  Their lag is not measurable and is *not* in the figures;
- p50/p99/max of ``loaded_at - received_at`` in ms over the loaded rows.

``received_at`` is stamped when the request body has been read (before the
signature check and the commit), ``loaded_at`` when the loader starts the batch
that copies the row, both ISO-8601 UTC with millisecond precision.
"""

from __future__ import annotations

import datetime as dt
import math
import sqlite3
import sys
from contextlib import closing
from pathlib import Path


def seconds(stamp: str) -> float:
    """Seconds since the epoch of an ISO-8601 UTC stamp such as 2026-11-25T00:01:02.345Z."""
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def report(workdir: Path) -> list[str]:
    inbox_path = workdir / "events.db"
    warehouse_path = workdir / "warehouse.db"
    with closing(sqlite3.connect(f"file:{inbox_path}?mode=ro", uri=True)) as inbox:
        stored, done = inbox.execute(
            "SELECT count(*), coalesce(sum(state = 'done'), 0) FROM events"
        ).fetchone()
    lines = [f"workdir: {workdir}", f"inbox: {stored} events acked/stored, {done} handled (done)"]
    if not warehouse_path.exists():
        lines.append(f"warehouse: no {warehouse_path.name}; all {stored} acked events unloaded")
        return lines
    with closing(sqlite3.connect(f"file:{warehouse_path}?mode=ro", uri=True)) as db:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'events'").fetchone():
            # serve --no-dispatch creates the file but never loads it
            lines.append(f"warehouse: no events table; all {stored} acked events unloaded")
            return lines
        db.execute("ATTACH DATABASE ? AS inbox", (f"file:{inbox_path}?mode=ro",))
        rows = db.execute("SELECT received_at, loaded_at FROM main.events").fetchall()
        (backlog,) = db.execute(
            "SELECT count(*) FROM inbox.events AS i"
            " WHERE NOT EXISTS (SELECT 1 FROM main.events AS w WHERE w.event_id = i.event_id)"
        ).fetchone()
    lags = sorted((seconds(loaded) - seconds(received)) * 1000 for received, loaded in rows)
    lines.append(f"warehouse: {len(rows)} rows when the server stopped")
    lines.append(
        f"backlog at kill: {backlog} acked events had no warehouse row"
        " (lag not measurable, not in the figures below)"
    )
    if lags:
        lines.append(
            f"ack -> warehouse lag over {len(lags)} rows: p50 {percentile(lags, 0.50):.0f} ms,"
            f" p99 {percentile(lags, 0.99):.0f} ms, max {lags[-1]:.0f} ms"
        )
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: lag.py WORKDIR (holding events.db and warehouse.db)", file=sys.stderr)
        return 2
    print("\n".join(report(Path(argv[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
