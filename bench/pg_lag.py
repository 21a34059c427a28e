"""Ack-to-handled lag of one PostgreSQL benchmark run: ``python bench/pg_lag.py STORE_URL``.

Reads the store's events after the receivers and workers have stopped and prints how
many events were acked (each stored event was: the 200 follows its COMMIT), how many
were handled (state ``done``) and how many were still waiting when the run stopped
(the workers' backlog), and p50/p99/max of ``updated_at - received_at`` in ms over
the handled ones: from the receiver reading the request to the worker recording the
outcome of its handlers.
"""

from __future__ import annotations

import math
import sys

import psycopg
from psycopg import sql

from cio_webhooks.store import parse_store_url


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def report(url: str) -> list[str]:
    store = parse_store_url(url)
    assert store.dsn is not None
    with psycopg.connect(store.dsn) as conn:
        events = sql.Identifier(store.schema, "events")
        stored, done = conn.execute(
            sql.SQL("SELECT count(*), count(*) FILTER (WHERE state = 'done') FROM {}").format(
                events
            )
        ).fetchone() or (0, 0)
        lags = sorted(
            (row[0] * 1000.0)
            for row in conn.execute(
                sql.SQL("SELECT updated_at - received_at FROM {} WHERE state = 'done'").format(
                    events
                )
            )
        )
    lines = [f"store: {store}", f"acked/stored {stored}, handled {done}, backlog {stored - done}"]
    if lags:
        p50, p99 = percentile(lags, 0.5), percentile(lags, 0.99)
        lines.append(f"ack -> handled ms: p50 {p50:.0f}  p99 {p99:.0f}  max {lags[-1]:.0f}")
    return lines


if __name__ == "__main__":
    print("\n".join(report(sys.argv[1])))
