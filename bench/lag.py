"""Ack-to-warehouse lag of one benchmark run: ``python bench/lag.py WORKDIR``.

Reads WORKDIR/events.db (the inbox) and WORKDIR/warehouse.db after the server
has stopped and prints how many acked events were stored, handled and loaded,
and the lag from ``received_at`` (the ack) to ``loaded_at`` (the warehouse row).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import sys
from pathlib import Path


def seconds(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def main(workdir: Path) -> None:
    with sqlite3.connect(workdir / "events.db") as inbox:
        stored, done = inbox.execute(
            "SELECT count(*), coalesce(sum(state = 'done'), 0) FROM events"
        ).fetchone()
    lags: list[float] = []
    warehouse = workdir / "warehouse.db"
    if warehouse.exists():
        with sqlite3.connect(warehouse) as db:
            lags = sorted(
                (seconds(loaded) - seconds(received)) * 1000
                for received, loaded in db.execute("SELECT received_at, loaded_at FROM events")
            )
    print(f"inbox: {stored} events stored (= acked), {done} handled (state done)")
    missing = stored - len(lags)
    print(f"warehouse: {len(lags)} rows, {missing} not yet loaded when the server stopped")
    if lags:
        print(
            f"ack -> warehouse lag: p50 {percentile(lags, 0.5):.0f} ms, "
            f"p99 {percentile(lags, 0.99):.0f} ms, max {lags[-1]:.0f} ms"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
