"""A bounded slowloris run against cio-webhooks on loopback: ``python bench/slowloris.py``.

Starts ``cio-webhooks serve --port 0`` in a temporary directory (or attacks ``--url``, which
must be a loopback address), then for ``--duration`` seconds:

- keeps ``--connections`` connections open that each send half a request head and then one
  more header line every ``--trickle`` seconds, never finishing it (``--slow body``: a whole
  head announcing a 1 MB body, then one body byte at a time); a connection the server
  closes is opened again after ``--reconnect-delay`` seconds (so the pressure stays on);
- meanwhile sends ``--rate`` correctly signed POSTs per second, each on a new connection.

Prints how many attack connections were opened, how many the server closed, after how long
and with which answer, and how the signed requests fared (statuses, p50/p99 latency).
Everything is bounded: at most 2000 connections, at most 300 s, loopback only; it stops by
itself.  Extra arguments after ``--`` go to ``serve`` (e.g. ``-- --read-timeout 5``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from cio_webhooks.testing import make_event, signed_request

MAX_CONNECTIONS = 2000
MAX_DURATION = 300.0
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Attack:
    opened: int = 0
    connect_failures: Counter[str] = field(default_factory=Counter)  # error -> count
    closed_after: list[float] = field(default_factory=list)  # seconds, per closed connection
    answers: Counter[str] = field(default_factory=Counter)  # status line -> count
    open_at_end: int = 0


@dataclass
class Legit:
    statuses: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)  # of the 2xx answers


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


async def slow_client(host: str, port: int, args: argparse.Namespace, attack: Attack) -> None:
    """One attacker: a never-finished head (or body), reopened each time the server closes it."""
    head = f"POST /webhooks/customerio HTTP/1.1\r\nHost: {host}\r\n".encode()
    if args.slow == "body":
        head += b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{"
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            attack.connect_failures[str(exc)] += 1
            await asyncio.sleep(args.reconnect_delay)
            continue
        attack.opened += 1
        opened = time.monotonic()
        answer = asyncio.ensure_future(reader.read(256))
        try:
            writer.write(head)
            line = 0
            while not answer.done():
                await asyncio.wait([answer], timeout=args.trickle)
                if not answer.done():
                    line += 1
                    writer.write(b" " if args.slow == "body" else f"X-Slow-{line}: 1\r\n".encode())
            try:
                first = answer.result().split(b"\r\n", 1)[0].decode(errors="replace")
            except OSError:
                first = "(reset)"
            attack.answers[first or "(closed, no answer)"] += 1
            attack.closed_after.append(time.monotonic() - opened)
        except (OSError, asyncio.IncompleteReadError):
            attack.closed_after.append(time.monotonic() - opened)
            attack.answers["(reset)"] += 1
        except asyncio.CancelledError:
            attack.open_at_end += 1
            raise
        finally:
            answer.cancel()
            writer.close()
        await asyncio.sleep(args.reconnect_delay)


async def signed_posts(url: str, key: str, rate: float, legit: Legit) -> None:
    """``rate`` signed POSTs a second, each on a fresh connection, until cancelled."""
    timeout = aiohttp.ClientTimeout(total=10)
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        for n in range(10**9):
            started = time.monotonic()
            body, headers = signed_request(make_event(f"legit-{n}-{secrets.token_hex(4)}"), key=key)
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    legit.statuses[str(response.status)] += 1
                    if 200 <= response.status < 300:
                        legit.latencies_ms.append((time.monotonic() - started) * 1000)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                legit.statuses[type(exc).__name__] += 1
            await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - started)))


async def run(url: str, key: str, args: argparse.Namespace) -> tuple[Attack, Legit]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    attack, legit = Attack(), Legit()
    attackers = [
        asyncio.create_task(slow_client(host, port, args, attack)) for _ in range(args.connections)
    ]
    poster = asyncio.create_task(signed_posts(url, key, args.rate, legit))
    await asyncio.sleep(args.duration)
    for task in [*attackers, poster]:
        task.cancel()
    await asyncio.gather(*attackers, poster, return_exceptions=True)
    return attack, legit


@contextlib.contextmanager
def served(serve_args: list[str]) -> Iterator[tuple[str, str]]:
    """A ``cio-webhooks serve --port 0`` in a temporary directory: (url, signing key)."""
    key = secrets.token_hex(32)
    binary = Path(sys.executable).parent / "cio-webhooks"
    with tempfile.TemporaryDirectory(prefix="slowloris-") as tmp:
        log = Path(tmp) / "serve.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(binary), "serve", "--port", "0", "--data-dir", tmp, *serve_args],
                env={**os.environ, "CIO_WEBHOOKS_SIGNING_KEYS": key},
                stderr=out,
            )
        try:
            deadline = time.monotonic() + 30
            while not (found := re.search(r"listening on (\S+)", log.read_text())):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"serve did not start:\n{log.read_text()}")
                time.sleep(0.1)
            yield found.group(1), key
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def report(attack: Attack, legit: Legit, args: argparse.Namespace) -> list[str]:
    lines = [
        f"attack: {args.connections} slow clients for {args.duration:g} s, one "
        f"{'body byte' if args.slow == 'body' else 'header line'} every {args.trickle:g} s, "
        f"reopening {args.reconnect_delay:g} s after each close",
        f"connections opened: {attack.opened}, connect failures: "
        + (", ".join(f"{e} x{n}" for e, n in attack.connect_failures.most_common()) or "none"),
    ]
    closed = attack.closed_after
    if closed:
        lines.append(
            f"closed by the server: {len(closed)}, after p50 {percentile(closed, 0.5):.1f} s, "
            f"max {max(closed):.1f} s; answers: "
            + ", ".join(f"{answer} x{n}" for answer, n in attack.answers.most_common())
        )
    else:
        lines.append("closed by the server: none")
    lines.append(f"still open at the end: {attack.open_at_end}")
    sent = sum(legit.statuses.values())
    ok = legit.latencies_ms
    summary = ", ".join(f"{status} x{n}" for status, n in sorted(legit.statuses.items()))
    lines.append(f"signed POSTs during the attack: {sent} sent: {summary or 'none'}")
    if ok:
        lines.append(
            f"2xx latency: p50 {percentile(ok, 0.5):.1f} ms, p99 {percentile(ok, 0.99):.1f} ms, "
            f"max {max(ok):.1f} ms"
        )
    return lines


def bounded(kind: type[float] | type[int], low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be within {low:g}..{high:g}")
        return value

    return parse


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=bounded(int, 1, MAX_CONNECTIONS), default=300)
    parser.add_argument("--duration", type=bounded(float, 1, MAX_DURATION), default=30.0)
    parser.add_argument("--trickle", type=bounded(float, 0.1, 60), default=2.0)
    parser.add_argument("--reconnect-delay", type=bounded(float, 0.05, 60), default=0.5)
    parser.add_argument("--rate", type=bounded(float, 0.1, 200), default=20.0)
    parser.add_argument("--slow", choices=["head", "body"], default="head", help="what trickles")
    parser.add_argument("--url", help="attack this loopback server instead of starting one")
    parser.add_argument("--signing-key", help="its signing key (with --url)")
    args, serve_args = parser.parse_known_args(argv)
    serve_args = [a for a in serve_args if a != "--"]
    if args.url:
        if urlsplit(args.url).hostname not in LOOPBACK or not args.signing_key:
            parser.error("--url must be a loopback http URL, with --signing-key")
        target: contextlib.AbstractContextManager[tuple[str, str]] = contextlib.nullcontext(
            (args.url, args.signing_key)
        )
    else:
        target = served(serve_args)
    with target as (url, key):
        print(f"target: {url}" + (f" (serve {' '.join(serve_args)})" if serve_args else ""))
        attack, legit = asyncio.run(run(url, key, args))
    print("\n".join(report(attack, legit, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
