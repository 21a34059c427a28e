"""The loader: every stored event reaches every sink once, in order, whatever fails."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cio_webhooks import SinkError
from cio_webhooks.events import parse_event
from cio_webhooks.sinks import EVENT_COLUMNS, Batch, Loader, Privacy, SQLiteWarehouse, sink_statuses
from cio_webhooks.store import Store
from cio_webhooks.testing import FixedClock, make_event

from ..conftest import NOW
from ._data import batch, samples


async def put(store: Store, *ids: str, at: float = NOW) -> None:
    """Store events no handler wants (done at once, so that prune may take them)."""
    for event_id in ids:
        body = json.dumps(make_event(event_id, delivery_id=f"d-{event_id}")).encode()
        await store.put(parse_event(body, received_at=at), handled=True)


def ids(count: int, prefix: str = "e") -> list[str]:
    return [f"{prefix}{i}" for i in range(count)]


async def landed(sink: SQLiteWarehouse) -> list[str]:
    return [str(row[0]) for row in await sink.rows("events")]


async def until(condition: object, *, timeout: float = 30.0) -> None:
    """Wait until ``condition()`` (sync or async) is true; a deadline, not a measurement."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()  # type: ignore[operator]
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_every_stored_event_lands_once_with_its_delivery(
    source: Store, tmp_path: Path, clock: FixedClock
) -> None:
    for event in samples():
        await source.put(event)
    sink = SQLiteWarehouse(tmp_path / "warehouse.db", batch_size=3)
    stored = (await source.stats()).events
    assert await Loader(source, [sink], clock=clock).catch_up() == stored
    rows = await landed(sink)
    assert len(rows) == len(set(rows)) == stored
    deliveries = await sink.rows("deliveries")
    assert {d[0] for d in deliveries} == {e.data.delivery_id for e in samples()} - {None}
    await sink.close()


async def test_a_new_loader_resumes_from_the_cursor_in_the_store(
    source: Store, tmp_path: Path, clock: FixedClock
) -> None:
    await put(source, *ids(5, "a"))
    sink = SQLiteWarehouse(tmp_path / "warehouse.db", batch_size=3)
    first = Loader(source, [sink], clock=clock, owner="one")
    assert await first.load(sink) == 3  # one batch, then it stops
    await put(source, *ids(4, "b"))
    # The next process (the lease of the first has run out by then).
    clock.advance(60)
    second = Loader(source, [sink], clock=clock, owner="two")
    assert await second.catch_up() == 6
    assert sorted(await landed(sink)) == sorted(ids(5, "a") + ids(4, "b"))
    await sink.close()


async def test_a_batch_written_again_after_a_crash_leaves_one_row_per_event(
    source: Store, tmp_path: Path, clock: FixedClock
) -> None:
    await put(source, *ids(30))
    sink = SQLiteWarehouse(tmp_path / "warehouse.db")
    await sink.open()
    # The crash: the rows were written, the cursor never moved.
    events = [
        parse_event(json.dumps(make_event(i, delivery_id=f"d-{i}")).encode(), received_at=NOW)
        for i in ids(30)
    ]
    await sink.write(batch(events))
    before = await sink.rows("deliveries")
    assert await Loader(source, [sink], clock=clock).catch_up() == 30
    assert sorted(await landed(sink)) == sorted(ids(30))
    assert [d[1:-1] for d in await sink.rows("deliveries")] == [d[1:-1] for d in before]
    await sink.close()


async def test_only_one_loader_holds_a_sink(
    source: Store, tmp_path: Path, clock: FixedClock
) -> None:
    await put(source, *ids(3))
    sink = SQLiteWarehouse(tmp_path / "warehouse.db")
    one = Loader(source, [sink], clock=clock, owner="one")
    two = Loader(source, [sink], clock=clock, owner="two")
    assert await one.load(sink) == 3  # one is loading, and keeps its lease
    with pytest.raises(SinkError, match="another process"):
        await two.catch_up()
    clock.advance(one.lease + 1)  # one died: its lease runs out
    await put(source, "late")
    assert await two.catch_up() == 1
    assert sorted(await landed(sink)) == sorted([*ids(3), "late"])


async def test_a_loader_that_stops_hands_its_sinks_over_at_once(
    source: Store, tmp_path: Path, clock: FixedClock
) -> None:
    await put(source, *ids(3))
    sink = SQLiteWarehouse(tmp_path / "warehouse.db")
    one = Loader(source, [sink], clock=clock, owner="one")
    assert await one.load(sink) == 3  # holds the lease
    stop = asyncio.Event()
    stop.set()
    await one.run(stop)  # a clean stop (SIGTERM)
    # No waiting for the lease to run out: the stop released it.
    await put(source, "next")
    assert await Loader(source, [sink], clock=clock, owner="two").catch_up() == 1
    await sink.close()


async def test_a_failing_sink_backs_off_reports_and_catches_up_without_holding_others(
    source: Store, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the sink wants a directory")
    broken = SQLiteWarehouse(blocker / "warehouse.db", name="broken")
    healthy = SQLiteWarehouse(tmp_path / "warehouse.db", name="healthy")
    await put(source, *ids(20))
    loader = Loader(source, [broken, healthy], retry_base=0.05, retry_max=0.2, idle_poll=0.05)
    stop = asyncio.Event()
    running = asyncio.create_task(loader.run(stop))
    try:
        await until(lambda: loader.progress["healthy"].rows == 20)
        await until(lambda: loader.progress["broken"].errors >= 3)

        async def broken_reported() -> bool:
            statuses = {s.name: s for s in await sink_statuses(source, now=NOW)}
            s = statuses.get("broken")
            return s is not None and s.failures >= 1 and s.rows_behind == 20 and bool(s.error)

        await until(broken_reported)
        # The warehouse comes back: the sink catches up on its own.
        blocker.unlink()
        await until(lambda: loader.progress["broken"].rows == 20)
        statuses = {s.name: s for s in await sink_statuses(source, now=NOW)}
        assert statuses["broken"].error is None
        assert statuses["broken"].rows_behind == 0
        assert statuses["healthy"].rows_behind == 0
    finally:
        stop.set()
        await running
    reopened = SQLiteWarehouse(blocker / "warehouse.db")
    assert sorted(await landed(reopened)) == sorted(ids(20))
    await reopened.close()


async def test_a_rewound_sink_loads_the_range_again_without_duplicates(
    source: Store, tmp_path: Path, clock: FixedClock
) -> None:
    await put(source, *ids(5), at=NOW)
    await put(source, *ids(5, "later"), at=NOW + 100)
    sink = SQLiteWarehouse(tmp_path / "warehouse.db")
    loader = Loader(source, [sink], clock=clock)
    assert await loader.catch_up() == 10
    clock.advance(3600)
    assert await source.rewind_sink("sqlite", await source.seq_before(NOW + 50), now=clock())
    assert await loader.catch_up() == 5  # the compare-and-set saw the rewind
    rows = {str(r[0]): r for r in await sink.rows("events")}
    assert len(rows) == 10
    loaded_at = [c.name for c in EVENT_COLUMNS].index("loaded_at")
    reloaded = {i for i, r in rows.items() if r[loaded_at] == "2023-11-14T23:13:20.000Z"}
    assert reloaded == set(ids(5, "later"))
    await sink.close()


async def test_a_sink_added_later_starts_at_the_oldest_event_the_store_holds(
    source: Store, tmp_path: Path, clock: FixedClock
) -> None:
    await put(source, *ids(4, "old"), at=NOW)
    await put(source, *ids(3, "new"), at=NOW + 1000)
    assert await source.prune(received_before=NOW + 500) == 4
    sink = SQLiteWarehouse(tmp_path / "late.db")
    assert await Loader(source, [sink], clock=clock).catch_up() == 3
    assert sorted(await landed(sink)) == sorted(ids(3, "new"))
    await sink.close()


async def test_nothing_stored_while_it_loads_is_skipped(
    source: Store, tmp_path: Path, clock: FixedClock
) -> None:
    sink = SQLiteWarehouse(tmp_path / "warehouse.db", batch_size=4)
    loader = Loader(source, [sink], clock=clock)
    stored = asyncio.Event()
    total = 200

    async def receive() -> None:
        for i in range(total):
            await put(source, f"e{i}", at=NOW + i)
            if i % 7 == 0:
                await asyncio.sleep(0)  # let the loader in between writes
        stored.set()

    async def follow() -> int:
        moved = 0
        while True:
            done = stored.is_set()  # read before the load: a later put is caught next round
            step = await loader.catch_up()
            moved += step
            if not step and done:
                return moved
            await asyncio.sleep(0)

    _, moved = await asyncio.gather(receive(), follow())
    assert moved == total
    assert sorted(await landed(sink)) == sorted(ids(total))
    await sink.close()


async def test_a_body_that_no_longer_parses_is_skipped_and_the_loader_goes_on(
    source: Store, tmp_path: Path, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    good = parse_event(json.dumps(make_event("good-1")).encode(), received_at=NOW)
    await source.put(good)
    # As stored by an older version with looser checks: the routing columns are
    # there, the body is no event any more.
    await source.put(dataclasses.replace(good, event_id="old-1", raw=b"not json"))
    await source.put(parse_event(json.dumps(make_event("good-2")).encode(), received_at=NOW))
    sink = SQLiteWarehouse(tmp_path / "warehouse.db")
    with caplog.at_level(logging.WARNING, logger="cio_webhooks.sinks"):
        assert await Loader(source, [sink], clock=clock).catch_up() == 3
    assert sorted(await landed(sink)) == ["good-1", "good-2"]
    assert "event=sink_skipped sink=sqlite seq=2 event_id=old-1" in caplog.text
    [status] = await sink_statuses(source, now=clock())
    assert (status.seq, status.rows_behind) == (3, 0)
    await sink.close()


async def test_the_lease_of_a_loader_that_died_on_this_host_is_taken_over_at_once(
    source: Store, tmp_path: Path, clock: FixedClock
) -> None:
    await put(source, *ids(2))
    sink = SQLiteWarehouse(tmp_path / "warehouse.db")
    host = socket.gethostname()
    dead = Loader(source, [sink], clock=clock, owner=f"{host}:{dead_pid()}:gone")
    assert await dead.load(sink) == 2  # then SIGKILLed, its lease still running
    alive = Loader(source, [sink], clock=clock, owner=f"{host}:{os.getpid()}:alive")
    assert await alive.load(sink) == 0  # taken over without waiting
    another = Loader(source, [sink], clock=clock, owner=f"{host}:{os.getpid()}:another")
    with pytest.raises(SinkError, match="another process"):
        await another.load(sink)  # a live holder keeps its lease
    await sink.close()


def dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


async def test_a_sink_pointed_somewhere_else_loads_everything_again(
    source: Store, tmp_path: Path, clock: FixedClock
) -> None:
    await put(source, *ids(4))
    first = SQLiteWarehouse(tmp_path / "old.db")
    assert await Loader(source, [first], clock=clock).catch_up() == 4
    await first.close()
    moved = SQLiteWarehouse(tmp_path / "new.db")  # same name, "sqlite", a new file
    assert await Loader(source, [moved], clock=clock).catch_up() == 4
    assert sorted(await landed(moved)) == sorted(ids(4))
    await moved.close()


async def test_sinks_at_the_same_place_share_one_read_and_parse(
    source: Store, tmp_path: Path, clock: FixedClock
) -> None:
    await put(source, *ids(50))
    one = SQLiteWarehouse(tmp_path / "one.db", name="one")
    two = SQLiteWarehouse(tmp_path / "two.db", name="two", privacy=Privacy(addresses="drop"))
    loader = Loader(source, [one, two], clock=clock)
    assert await loader.catch_up() == 100
    # The 50 events were read and parsed once for both sinks.
    assert loader.reads.parsed == 50
    assert sorted(await landed(one)) == sorted(await landed(two)) == sorted(ids(50))
    email = [c.name for c in EVENT_COLUMNS].index("email")
    assert {r[email] for r in await two.rows("events")} == {None}  # its own privacy
    assert {r[email] for r in await one.rows("events")} == {"person-1@example.com"}


async def test_a_sink_behind_a_shared_read_gets_the_rest_read_fresh(
    source: Store, tmp_path: Path, clock: FixedClock
) -> None:
    await put(source, *ids(10))
    fast = SQLiteWarehouse(tmp_path / "fast.db", name="fast")
    slow = SQLiteWarehouse(tmp_path / "slow.db", name="slow")
    loader = Loader(source, [fast, slow], clock=clock)
    assert await loader.load(fast) == 10
    await put(source, *ids(5, "late"))
    # The first 10 come from the shared read, the 5 after them from the store.
    assert await loader.load(slow) == 15
    assert sorted(await landed(slow)) == sorted(ids(10) + ids(5, "late"))


async def test_a_write_longer_than_the_lease_keeps_it(source: Store, tmp_path: Path) -> None:
    """A slow warehouse (a write that outlasts the lease) keeps its sink: the lease is
    renewed while the write runs, so no other loader writes beside it."""
    await put(source, *ids(3))
    slow = SlowWarehouse(tmp_path / "w.db", pause=2.5)
    loader = Loader(source, [slow], lease=1.0)
    assert await loader.load(slow) == 3
    rival = Loader(source, [slow], lease=1.0)
    with pytest.raises(SinkError, match="another process"):
        await rival.load(slow)
    await slow.close()


class SlowWarehouse(SQLiteWarehouse):
    """A SQLite warehouse whose writes take ``pause`` seconds more, as a remote one
    answering slowly would (a sink of the test's own, not a patch of ours)."""

    def __init__(self, path: Path, *, pause: float) -> None:
        super().__init__(path)
        self.pause = pause

    async def write(self, batch: Batch) -> None:
        await asyncio.sleep(self.pause)
        await super().write(batch)
