"""TrafficMeter: a receiver's answers, minute by minute, in the store for all to see."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import fields
from pathlib import Path

import pytest

from cio_webhooks._traffic import AckTimes, TrafficMeter
from cio_webhooks.app import Counters
from cio_webhooks.store import ACK_BUCKETS, TRAFFIC_COUNTS, Store, open_store
from cio_webhooks.testing import FixedClock

MINUTE = 28_333_333 * 60.0


class Receiver:
    """What a meter reads: running counters and ack times (a real ``Receiver`` has both)."""

    def __init__(self) -> None:
        self.counters = Counters()
        self.acks = AckTimes()

    def counts(self) -> dict[str, int]:
        return {
            "stored": self.counters.stored,
            "duplicate": self.counters.duplicate,
            "rejected_signature": self.counters.rejected_signature,
        }

    def answer(self, outcome: str, seconds: float = 0.003) -> None:
        setattr(self.counters, outcome, getattr(self.counters, outcome) + 1)
        self.acks.observe(seconds)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = open_store(f"sqlite:///{tmp_path}/inbox.db")
    await store.open()
    yield store
    await store.close()


def meter_for(receiver: Receiver, clock: FixedClock) -> TrafficMeter:
    return TrafficMeter(receiver.counts, receiver.acks, clock=clock)


async def test_a_minute_is_written_with_its_counts_and_latencies(store: Store) -> None:
    clock, receiver = FixedClock(MINUTE + 5), Receiver()
    meter = meter_for(receiver, clock)
    receiver.answer("stored", 0.003)
    receiver.answer("stored", 0.2)
    receiver.answer("rejected_signature", 0.001)
    await meter.flush(store)
    [minute] = await store.traffic(since=MINUTE)
    assert (minute.minute, minute.stored, minute.rejected_signature) == (MINUTE, 2, 1)
    assert minute.ack[0] == 2  # <= 5 ms
    assert minute.ack[ACK_BUCKETS.index(0.25)] == 1


async def test_flushing_again_replaces_a_minute_rather_than_adding_to_it(store: Store) -> None:
    clock, receiver = FixedClock(MINUTE + 5), Receiver()
    meter = meter_for(receiver, clock)
    receiver.answer("stored")
    await meter.flush(store)
    await meter.flush(store)
    receiver.answer("stored")
    clock.advance(10)
    await meter.flush(store)
    [minute] = await store.traffic(since=MINUTE)
    assert minute.stored == 2


async def test_the_next_minute_gets_only_what_came_after(store: Store) -> None:
    clock, receiver = FixedClock(MINUTE + 50), Receiver()
    meter = meter_for(receiver, clock)
    receiver.answer("stored")
    await meter.flush(store)
    clock.advance(20)
    receiver.answer("duplicate")
    await meter.flush(store)
    first, second = await store.traffic(since=MINUTE)
    assert (first.stored, first.duplicate) == (1, 0)
    assert (second.minute, second.stored, second.duplicate) == (MINUTE + 60, 0, 1)


async def test_two_receivers_on_one_store_are_summed(store: Store) -> None:
    clock = FixedClock(MINUTE + 5)
    one, two = Receiver(), Receiver()
    for receiver, n in ((one, 3), (two, 4)):
        for _ in range(n):
            receiver.answer("stored")
        await meter_for(receiver, clock).flush(store)
    [minute] = await store.traffic(since=MINUTE)
    assert minute.stored == 7
    assert sum(minute.ack) == 7


async def test_counts_wait_in_memory_while_the_store_is_down(tmp_path: Path) -> None:
    clock, receiver = FixedClock(MINUTE + 5), Receiver()
    meter = meter_for(receiver, clock)
    receiver.answer("stored")
    down = open_store(f"sqlite:///{tmp_path}/missing/inbox.db", readonly=True)
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the store raises
        await meter.flush(down)
    clock.advance(60)
    receiver.answer("stored")
    back = open_store(f"sqlite:///{tmp_path}/inbox.db")
    await back.open()
    try:
        await meter.flush(back)
        assert [m.stored for m in await back.traffic(since=MINUTE)] == [1, 1]
    finally:
        await back.close()


def test_every_count_a_minute_keeps_is_one_the_receiver_counts() -> None:
    # The meter reads them by name: a name the receiver does not count reads as 0.
    assert set(TRAFFIC_COUNTS) <= {f.name for f in fields(Counters)}


async def test_an_idle_receiver_writes_no_minute(store: Store) -> None:
    clock, receiver = FixedClock(MINUTE + 5), Receiver()
    meter = meter_for(receiver, clock)
    receiver.answer("stored")
    await meter.flush(store)
    for _ in range(3):  # three quiet minutes
        clock.advance(60)
        await meter.flush(store)
    assert [m.minute for m in await store.traffic(since=MINUTE)] == [MINUTE]
