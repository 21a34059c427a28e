"""Puts per second of one store, and how many puts its group commits carry.

    .venv/bin/python bench/store_puts.py postgresql://root@127.0.0.1:5432/postgres \
        --concurrency 50 --seconds 10

``--concurrency`` tasks put distinct events back to back on ONE store (as one
receiver's requests would, without HTTP) for ``--seconds``; prints puts/s, the
mean group-commit size (puts / commits) and the p50/p99 put latency.  A
PostgreSQL URL gets a new schema (``bench_<random>``), dropped at the end; a
SQLite URL should name a new file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time

import psycopg

from cio_webhooks import parse_event
from cio_webhooks.store import open_store, parse_store_url
from cio_webhooks.testing import make_event


async def run(url: str, concurrency: int, seconds: float) -> None:
    parsed = parse_store_url(url)
    if parsed.backend == "postgresql":
        sep = "&" if "?" in url else "?"
        url = f"{url}{sep}schema=bench_{secrets.token_hex(4)}"
        parsed = parse_store_url(url)
    store = open_store(url)
    await store.open()
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    counter = iter(range(10**9))

    async def putter() -> None:
        while time.monotonic() < stop:
            n = next(counter)
            event = parse_event(json.dumps(make_event(f"b{n}")).encode(), received_at=time.time())
            started = time.perf_counter()
            await store.put(event)
            latencies.append(time.perf_counter() - started)

    commits_before = getattr(store, "commit_stats", (0, 0))
    began = time.monotonic()
    await asyncio.gather(*(putter() for _ in range(concurrency)))
    elapsed = time.monotonic() - began
    commits, writes = (a - b for a, b in zip(store.commit_stats, commits_before, strict=True))  # type: ignore[attr-defined]
    await store.close()
    if parsed.backend == "postgresql":
        assert parsed.dsn is not None
        with psycopg.connect(parsed.dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {parsed.schema} CASCADE")
    latencies.sort()
    print(
        f"{parsed.backend}: {len(latencies)} puts in {elapsed:.1f} s = "
        f"{len(latencies) / elapsed:.0f} puts/s at concurrency {concurrency}; "
        f"{commits} commits, {writes / max(commits, 1):.1f} puts per commit; "
        f"latency p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    asyncio.run(run(args.url, args.concurrency, args.seconds))


if __name__ == "__main__":
    main()
