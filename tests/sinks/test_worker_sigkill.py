"""A real ``cio-webhooks worker`` loading a sink, SIGKILLed mid-load again and again:
every event lands exactly once, none is missing, and each delivery's row is what its
events make, whatever batch the kills interrupted.

Each kind of sink runs the same scenario (``SINKS``): 1,500 stored events (five per
delivery, in an order that splits deliveries across batches), batches of 100, three
SIGKILLs at growing cursors, then a worker that runs to the end and a SIGTERM.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cio_webhooks.events import Event, parse_event
from cio_webhooks.sinks import DELIVERY_COLUMNS, delivery_rows, event_row
from cio_webhooks.sinks._rows import as_dicts
from cio_webhooks.store import Store, open_store
from cio_webhooks.testing import make_event

from ..conftest import NOW

BIN = Path(sys.executable).with_name("cio-webhooks")
EVENTS = 1500
BATCH = 100
KILL_AT = (200, 700, 1100)  # cursor positions after which a worker is killed
METRICS = ("sent", "delivered", "opened", "clicked", "bounced")


@dataclass
class Target:
    """A sink URL and how to read back what a reader of that warehouse sees."""

    url: str
    events: Callable[[], Awaitable[list[str]]]  # event_ids, one per row
    deliveries: Callable[[], Awaitable[list[dict[str, Any]]]]
    env: dict[str, str] = field(default_factory=dict)  # for the worker


async def _sqlite_target(tmp_path: Path, request: pytest.FixtureRequest) -> Target:
    from cio_webhooks.sinks import SQLiteWarehouse

    path = tmp_path / "warehouse.db"

    async def events() -> list[str]:
        reader = SQLiteWarehouse(path)
        try:
            return [str(r[0]) for r in await reader.rows("events")]
        finally:
            await reader.close()

    async def deliveries() -> list[dict[str, Any]]:
        reader = SQLiteWarehouse(path)
        try:
            return as_dicts(DELIVERY_COLUMNS, await reader.rows("deliveries"))
        finally:
            await reader.close()

    return Target(f"sqlite://{path}", events, deliveries)


async def _postgres_target(tmp_path: Path, request: pytest.FixtureRequest) -> Target:
    from cio_webhooks.sinks import parse_sink_url
    from cio_webhooks.sinks.postgres import from_url

    from ._postgres_peer import read_back

    url = f"{request.getfixturevalue('pg_database')}?schema=w_{secrets.token_hex(6)}"

    async def rows() -> Any:
        sink = from_url(parse_sink_url(url))
        try:
            return await read_back(sink)
        finally:
            await sink.close()

    async def events() -> list[str]:
        return [r["event_id"] for r in (await rows()).events]

    async def deliveries() -> list[dict[str, Any]]:
        return list((await rows()).deliveries)

    return Target(url, events, deliveries)


async def _bigquery_target(tmp_path: Path, request: pytest.FixtureRequest) -> Target:
    from ._bigquery_peer import PROJECT, Reader, new_dataset

    emulator = request.getfixturevalue("bigquery_emulator")
    reader = Reader(emulator.endpoint, new_dataset())

    async def events() -> list[str]:
        return [r["event_id"] for r in await asyncio.to_thread(reader.events)]

    async def deliveries() -> list[dict[str, Any]]:
        return await asyncio.to_thread(reader.deliveries)

    url = f"bigquery://{PROJECT}/{reader.dataset}?api_endpoint={emulator.endpoint}"
    # Keep the Google client in the worker from probing for cloud metadata.
    env = {"NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:1"}
    return Target(url, events, deliveries, env)


async def _parquet_target(tmp_path: Path, request: pytest.FixtureRequest) -> Target:
    from ._parquet_peer import read_deliveries, read_events

    lake = tmp_path / "lake"

    async def events() -> list[str]:
        return [r["event_id"] for r in await asyncio.to_thread(read_events, lake)]

    async def deliveries() -> list[dict[str, Any]]:
        return await asyncio.to_thread(read_deliveries, lake)

    return Target(f"parquet://{lake}", events, deliveries)


SINKS: dict[str, Callable[[Path, pytest.FixtureRequest], Awaitable[Target]]] = {
    "sqlite": _sqlite_target,
    "postgresql": _postgres_target,
    "bigquery": _bigquery_target,
    "parquet": _parquet_target,
}


def the_events() -> list[Event]:
    """Five events per delivery; deliveries interleaved so that batches split them.
    Received just now: the worker prunes what is older than its dedupe window."""
    out = []
    received = time.time() - EVENTS
    for n in range(EVENTS):
        delivery, metric = n % (EVENTS // len(METRICS)), METRICS[n // (EVENTS // len(METRICS))]
        body = make_event(
            f"ev-{n}",
            metric=metric,
            delivery_id=f"dlv-{delivery}",
            timestamp=NOW + n,
            failure_message="550 gone" if metric == "bounced" else None,
        )
        out.append(parse_event(json.dumps(body).encode(), received_at=received + n))
    return out


@pytest.fixture(params=list(SINKS))
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    return await SINKS[request.param](tmp_path, request)


async def cursor(store: Store) -> int:
    states = await store.sink_states()
    return states[0].seq if states else 0


async def wait_for(condition: Callable[[], Awaitable[bool]], proc: Any, log: Path) -> None:
    """Until ``condition``; fails (with the worker's log) if the worker exits first.
    A bound of minutes, not a measurement."""
    for _ in range(6000):
        if await condition():
            return
        if proc.returncode is not None:
            raise AssertionError(f"worker exited {proc.returncode}:\n{log.read_text()}")
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out:\n{log.read_text()}")


async def test_a_worker_sigkilled_mid_load_leaves_no_duplicate_and_no_gap(
    target: Target, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox.db"
    store = open_store(f"sqlite://{inbox}")
    await store.open()
    events = the_events()
    for event in events:
        await store.put(event, handled=True)
    url = f"{target.url}{'&' if '?' in target.url else '?'}batch_size={BATCH}&interval=0"
    env = {**os.environ, **target.env, "CIO_WEBHOOKS_LOG_LEVEL": "info"}
    log = tmp_path / "worker.log"
    argv = [str(BIN), "worker", "--db", str(inbox), "--sink", url]
    try:
        for kill_at in (*KILL_AT, None):
            with log.open("ab") as out:
                proc = await asyncio.create_subprocess_exec(
                    *argv, env=env, cwd=tmp_path, stdout=out, stderr=out
                )
            if kill_at is not None:
                await wait_for(functools.partial(_past, store, kill_at), proc, log)
                proc.send_signal(signal.SIGKILL)
            else:
                await wait_for(functools.partial(_past, store, EVENTS), proc, log)
                proc.send_signal(signal.SIGTERM)
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await store.close()

    landed = await target.events()
    assert len(landed) == len(set(landed)) == EVENTS  # no duplicate
    assert set(landed) == {e.event_id for e in events}  # no gap
    rows = [event_row(e, None) for e in events]
    expected = as_dicts(DELIVERY_COLUMNS, delivery_rows(rows, None))
    got = await target.deliveries()
    for row in (*expected, *got):
        row.pop("updated_at")
    assert sorted(got, key=lambda r: r["delivery_id"]) == sorted(
        expected, key=lambda r: r["delivery_id"]
    )


async def _past(store: Store, seq: int) -> bool:
    return await cursor(store) >= seq
