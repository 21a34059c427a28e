"""How long the dashboard's pages and the alerts' reads take on a big store.

    .venv/bin/python bench/ui_pages.py sqlite:///tmp/ui-bench.db --events 200000
    .venv/bin/python bench/ui_pages.py postgresql://root@127.0.0.1:5432/postgres --events 200000

Fills the store with ``--events`` email events spread over the last 24 h (about 2,000
people, 40 campaigns, a few dead letters), an hour of per-minute traffic from two
receivers, and loads them into a SQLite warehouse sink; then GETs each page through the
real dashboard app (ASGI, no network) ``--repeat`` times and prints the median and max
milliseconds per page, plus one alert check (``Alerter.check``) with every default rule.
A PostgreSQL URL gets a schema of its own (``bench_<random>``), dropped at the end; a
SQLite URL should name a new file (it is reused when it already holds the events).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import httpx2
import psycopg

from cio_webhooks import parse_event
from cio_webhooks.alerts import AlertConfig, Alerter
from cio_webhooks.sinks import Loader, open_sink, parse_sink_url
from cio_webhooks.store import (
    ACK_BUCKETS,
    EventFilter,
    Store,
    TrafficMinute,
    open_store,
    parse_store_url,
)
from cio_webhooks.testing import make_event
from cio_webhooks.ui import create_ui

METRICS = ["sent", "delivered", "delivered", "opened", "clicked", "bounced", "spammed"]
DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "example.com"]


async def fill(store: Store, n: int, now: float) -> None:
    rng = random.Random(7)
    batch = []
    for i in range(n):
        person = f"p{rng.randrange(2000)}"
        payload = make_event(
            f"ev{i:08d}",
            "email",
            rng.choice(METRICS),
            timestamp=int(now - 86400 + i * 86400 / n),
            person_id=person,
            delivery_id=f"d{i // 4}",
            campaign_id=rng.randrange(40),
            recipient=f"{person}@{rng.choice(DOMAINS)}",
        )
        event = parse_event(json.dumps(payload).encode(), received_at=now - 86400 + i * 86400 / n)
        batch.append(store.put(event, handled=True))
        if len(batch) == 500:
            await asyncio.gather(*batch)
            batch.clear()
    await asyncio.gather(*batch)
    # A few dead letters, as the dead-letters page lists them.
    for i in range(20):
        body = json.dumps(make_event(f"dead{i}", "email", "bounced")).encode()
        await store.put(parse_event(body, received_at=now - 60))
    await store.discard(EventFilter(event_ids=tuple(f"dead{i}" for i in range(20))), now=now)
    minute = now // 60 * 60
    for process in ("a", "b"):
        await store.record_traffic(
            process,
            [
                TrafficMinute(
                    minute=minute - 60 * m,
                    stored=600,
                    rejected_signature=m % 7,
                    ack=tuple([500, 80, 15, 5] + [0] * (len(ACK_BUCKETS) - 3)),
                )
                for m in range(60)
            ],
        )


async def run(url: str, events: int, repeat: int) -> None:
    parsed = parse_store_url(url)
    schema = None
    if parsed.backend == "postgresql":
        schema = f"bench_{secrets.token_hex(4)}"
        url = f"{url}{'&' if '?' in url else '?'}schema={schema}"
    now = time.time()
    store = open_store(url)
    await store.open()
    work = Path(tempfile.mkdtemp(prefix="ui-bench-"))
    try:
        if (await store.stats()).events < events:
            started = time.perf_counter()
            await fill(store, events, now)
            print(f"filled {events} events in {time.perf_counter() - started:.1f} s")
        sink = parse_sink_url(f"sqlite:///{work}/warehouse.db")
        loader = Loader(store, [open_sink(sink)])
        started = time.perf_counter()
        await loader.catch_up()
        print(f"warehouse loaded in {time.perf_counter() - started:.1f} s")
        app = create_ui(store, sink=sink)
        pages = {
            "overview": "/",
            "overview live": "/live",
            "deliverability by day (7d)": "/deliverability?by=day&since=7d",
            "deliverability by domain (7d)": "/deliverability?by=domain&since=7d",
            "events, newest": "/events",
            "events, one person": "/events?person=p42",
            "events, body text": "/events?q=outlook",
            "events, rare text (scan limit)": "/events?q=nowhere-to-be-found",
            "event": "/events/ev00000042",
            "dead letters": "/dead-letters",
        }
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            print(f"{'page':34} {'median ms':>10} {'max ms':>8}  status")
            for name, path in pages.items():
                times, status = [], 0
                for _ in range(repeat):
                    t = time.perf_counter()
                    response = await c.get(path)
                    times.append((time.perf_counter() - t) * 1000)
                    status = response.status_code
                print(f"{name:34} {statistics.median(times):10.1f} {max(times):8.1f}  {status}")
        # rates_every=0: each check reads the email rates again (the worst case)
        alerter = Alerter(store, AlertConfig(), notifiers=[], policies=False, rates_every=0)
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            await alerter.check([])
            times.append((time.perf_counter() - t) * 1000)
        print(
            f"{'alert check, every default rule':34} {statistics.median(times):10.1f}"
            f" {max(times):8.1f}"
        )
    finally:
        await store.close()
        if schema is not None and parsed.dsn is not None:
            with psycopg.connect(parsed.dsn, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", help="store URL (sqlite:///new-file.db or postgresql://...)")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(run(args.store, args.events, args.repeat))


if __name__ == "__main__":
    main()
