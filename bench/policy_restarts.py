"""Track calls per event across restarts during policy calls.

``python bench/policy_restarts.py [--events 240] [--restarts 6] [--signal kill|term|both]``

Runs the fake Customer.io (in this process) and ``cio-webhooks serve`` (a
subprocess) with the default policies and posts ``--events`` spam complaints
(one person each, so each should become exactly one unsubscribe, one ``PUT``)
in ``--restarts + 1`` waves.  While the Track calls of a wave are in flight (the
fake stalls every answer ``--stall`` seconds; the stop lands at a random, seeded
moment after calls started) it stops the server with SIGKILL or SIGTERM and
starts it again at once.  When every event is handled it prints, per signal,
how many events Customer.io received 0, 1, 2, ... calls for.

Events claimed by a killed server come back after the dispatcher's lease
(``DEFAULT_LEASE``, 30 s), so a SIGKILL run takes at least that long after its last
kill (its duration was not re-measured with the 30 s lease); ``--timeout`` bounds
each run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from cio_webhooks.customerio.fake import FakeCustomerIO
from cio_webhooks.testing import free_port, make_event, signed_request

KEY = "bench-signing-key"
TRACK_KEY = "bench-track-key"
BIN = Path(sys.executable).parent / "cio-webhooks"


def states(data: Path) -> collections.Counter[str]:
    path = data / "inbox.db"
    if not path.exists():
        return collections.Counter()
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return collections.Counter(row[0] for row in db.execute("SELECT state FROM events"))


async def start(data: Path, port: int, fake: FakeCustomerIO) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "CIO_WEBHOOKS_SIGNING_KEYS": KEY,
        "CIO_WEBHOOKS_TRACK_SITE_ID": "site",
        "CIO_WEBHOOKS_TRACK_API_KEY": TRACK_KEY,
        "CIO_WEBHOOKS_TRACK_URL": fake.track_url,
        "CIO_WEBHOOKS_RETRY_BASE": "1",
        "CIO_WEBHOOKS_LOG_LEVEL": "warning",
    }
    with (data.parent / f"{data.name}.log").open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            str(BIN),
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data),
            env=env,
            stdout=log,
            stderr=log,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}; see {log.name}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return proc
        await asyncio.sleep(0.05)
    raise RuntimeError("serve did not start")


async def in_flight(fake: FakeCustomerIO, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while fake.in_flight == 0:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def run(sig: signal.Signals, args: argparse.Namespace, work: Path) -> dict[int, int]:
    data = work / f"data-{sig.name.lower()}"
    rng = random.Random(args.seed)
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhooks/customerio"
    async with FakeCustomerIO(site_id="site", track_key=TRACK_KEY, delay=args.stall) as fake:
        proc = await start(data, port, fake)
        waves = [range(args.events)[w :: args.restarts + 1] for w in range(args.restarts + 1)]
        stops = caught = 0  # caught: Track calls in flight when a stop was sent
        deadline = time.monotonic() + args.timeout
        async with aiohttp.ClientSession() as session:
            for wave in waves:  # a wave of events per start, so that each stop is mid-calls
                for i in wave:
                    event = make_event(f"e{i}", "email", "spammed", person_id=f"p{i}")
                    body, headers = signed_request(event, key=KEY)
                    async with session.post(url, data=body, headers=headers) as response:
                        assert response.status == 200, response.status
                if stops == args.restarts or time.monotonic() > deadline:
                    continue
                if not await in_flight(fake, deadline - time.monotonic()):
                    continue
                await asyncio.sleep(rng.uniform(0, 2 * args.stall))  # somewhere mid-calls
                if fake.in_flight == 0:
                    continue
                caught += fake.in_flight
                proc.send_signal(sig)
                await proc.wait()
                stops += 1
                proc = await start(data, port, fake)
        while states(data)["done"] < args.events and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        calls = collections.Counter(
            r.path.rsplit("/", 1)[1] for r in fake.requests if r.method == "PUT"
        )
    histogram = collections.Counter(calls.get(f"p{i}", 0) for i in range(args.events))
    left = args.events - states(data)["done"]
    print(
        f"{sig.name}: {stops} restarts with {caught} Track calls in flight, {args.events} events"
        f"{f', {left} NOT handled before the timeout' if left else ''}"
    )
    for n in sorted(histogram):
        print(f"  {histogram[n]:5d} events got {n} Track call(s)")
    return dict(histogram)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=240)
    parser.add_argument("--restarts", type=int, default=6)
    parser.add_argument("--signal", choices=["kill", "term", "both"], default="both")
    parser.add_argument("--stall", type=float, default=0.5, help="seconds per Track answer")
    parser.add_argument("--seed", type=int, default=6, help="when, mid-calls, to stop")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per signal")
    parser.add_argument("--workdir", type=Path, help="keep the data here [default: a temp dir]")
    args = parser.parse_args()
    sigs = {"kill": [signal.SIGKILL], "term": [signal.SIGTERM]}.get(
        args.signal, [signal.SIGTERM, signal.SIGKILL]
    )
    with tempfile.TemporaryDirectory(prefix="policy-restarts-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for sig in sigs:
            asyncio.run(run(sig, args, work))


if __name__ == "__main__":
    main()
