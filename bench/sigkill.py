"""SIGKILL under load, N times: no event that was answered 2xx may be lost.

    .venv/bin/python bench/sigkill.py [--rounds 10] [--seconds 2] [--concurrency 48]

Starts ``cio-webhooks serve`` on 127.0.0.1 with a fresh data directory, posts
unique signed events from ``--concurrency`` connections, SIGKILLs the server
after ``--seconds`` (a random moment in the second half of that time), restarts
it on the same data directory, and repeats ``--rounds`` times.  Then it checks
every event that got a 200 against the inbox, and that the inbox passes
``PRAGMA integrity_check``.  Prints one line per round and a total; exits 1 if
any acked event is missing or any answer was neither 200 nor a refused
connection.  Loopback only; bounded by rounds x seconds; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

from cio_webhooks.testing import free_port, make_event, signed_request, wait_until_listening

KEY = "bench-sigkill-key-0123456789abcdef"
BIN = Path(sys.executable).parent / "cio-webhooks"


def start(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CIO_WEBHOOKS_SIGNING_KEYS": KEY}
    proc = subprocess.Popen(
        [str(BIN), "serve", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_listening(port, proc)
    except RuntimeError as exc:
        proc.kill()
        raise SystemExit(f"server did not start: {exc}") from None
    return proc


async def load(url: str, prefix: str, concurrency: int, stop: asyncio.Event) -> dict[str, int]:
    """Post unique signed events until ``stop``: event_id -> status (0: no answer)."""
    results: dict[str, int] = {}
    counter = iter(range(10**9))

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            event_id = f"{prefix}-{next(counter)}"
            body, headers = signed_request(make_event(event_id), key=KEY)
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    results[event_id] = response.status
            except (TimeoutError, aiohttp.ClientError, OSError):
                results[event_id] = 0
                await asyncio.sleep(0.01)

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return results


async def one_round(
    proc: subprocess.Popen[bytes], url: str, prefix: str, args: argparse.Namespace
) -> dict[str, int]:
    stop = asyncio.Event()
    task = asyncio.create_task(load(url, prefix, args.concurrency, stop))
    await asyncio.sleep(args.seconds * (0.5 + 0.5 * random.random()))
    proc.kill()  # SIGKILL: no drain, no shutdown hooks
    await asyncio.sleep(0.3)
    stop.set()
    return await task


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=48)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    random.seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="cio-sigkill-") as tmp:
        data_dir = Path(tmp) / "data"
        port = free_port()
        url = f"http://127.0.0.1:{port}/webhooks/customerio"
        acked: set[str] = set()
        others: dict[int, int] = {}
        for n in range(1, args.rounds + 1):
            proc = start(data_dir, port)
            results = asyncio.run(one_round(proc, url, f"r{n}", args))
            proc.wait(timeout=10)
            ok = {e for e, status in results.items() if status == 200}
            refused = sum(1 for status in results.values() if status == 0)
            for status in results.values():
                if status not in (0, 200):
                    others[status] = others.get(status, 0) + 1
            acked |= ok
            print(f"round {n:2d}: {len(ok):6d} acked, {refused:4d} without an answer (killed)")
        proc = start(data_dir, port)  # recovers the WAL, as a restart after a crash does
        try:
            with sqlite3.connect(f"file:{data_dir / 'inbox.db'}?mode=ro", uri=True) as db:
                integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
                stored = {row[0] for row in db.execute("SELECT event_id FROM events")}
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    missing = acked - stored
    print(
        f"total: {args.rounds} SIGKILLs, {len(acked)} acked, {len(missing)} acked but missing,"
        f" other statuses {others or 'none'}, integrity_check {integrity}"
    )
    return 0 if not missing and not others and integrity == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
