"""Rows per second a sink takes through the loader, and the CPU that costs.

    .venv/bin/python bench/sink_rows.py --events 20000 \
        --sink sqlite:///tmp/w.db --sink postgresql://root@127.0.0.1/postgres?schema=bench_w

Fills a new SQLite store with ``--events`` realistic events (the samples' shapes,
five events per delivery), then for each ``--sink`` times ``Loader.catch_up()`` from
an empty cursor: wall seconds, rows/s and process CPU seconds per 1000 rows (the
loader's own cost, which the receiver shares when they run in one process).  Every
sink URL should name a new, empty place.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from cio_webhooks import parse_event
from cio_webhooks.sinks import Loader, open_sink, parse_sink_url
from cio_webhooks.store import open_store
from cio_webhooks.testing import make_event

METRICS = ("sent", "delivered", "opened", "clicked", "opened")


async def fill(url: str, events: int) -> None:
    store = open_store(url)
    await store.open()
    now = time.time() - events / 1000
    puts = []
    for n in range(events):
        delivery = f"dlv-{n // len(METRICS)}"
        metric = METRICS[n % len(METRICS)]
        body = make_event(
            f"ev-{n}", metric=metric, delivery_id=delivery, campaign_id=n % 40, timestamp=int(now)
        )
        event = parse_event(json.dumps(body).encode(), received_at=now + n / 1000)
        puts.append(store.put(event, handled=True))
        if len(puts) == 500:
            await asyncio.gather(*puts)
            puts = []
    await asyncio.gather(*puts)
    await store.close()


async def measure(store_url: str, sink_url: str, events: int) -> str:
    store = open_store(store_url)
    await store.open()
    sink = open_sink(parse_sink_url(sink_url))
    loader = Loader(store, [sink])
    wall, cpu = time.perf_counter(), time.process_time()
    loaded = await loader.catch_up()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await sink.close()
    await store.close()
    assert loaded == events, (loaded, events)
    return (
        f"| {sink.url} | {events} | {wall:.2f} | {events / wall:,.0f} | "
        f"{cpu / events * 1000 * 1000:.0f} ms |"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--sink", action="append", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store_url = f"sqlite://{Path(tmp) / 'inbox.db'}"
        await fill(store_url, args.events)
        print("| sink | rows | seconds | rows/s | loader CPU per 1000 rows |")
        print("|---|---|---|---|---|")
        for sink_url in args.sink:
            print(await measure(store_url, sink_url, args.events), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
