"""Dispatcher: routing, once-per-handler success, backoff, dead letters, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from cio_webhooks import Dispatcher, Event, EventFilter, JobState, RetryPolicy, Router, parse_event
from cio_webhooks._logging import KeyValueFormatter
from cio_webhooks._service import build_policies, sqlite_store
from cio_webhooks.customerio.fake import FakeCustomerIO
from cio_webhooks.dispatcher import DEFAULT_LEASE
from cio_webhooks.settings import Settings
from cio_webhooks.store import Store
from cio_webhooks.store.sqlite import SQLiteStore
from cio_webhooks.testing import FixedClock, make_event

from .conftest import KEY, NOW, store_per_backend
from .test_server import BIN


def event(
    event_id: str, object_type: str = "email", metric: str = "bounced", received_at: float = NOW
) -> Event:
    import json

    body = json.dumps(make_event(event_id, object_type, metric)).encode()
    return parse_event(body, received_at=received_at)


class Flaky:
    """A handler that fails its first ``failures`` calls, counting every call."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: Counter[str] = Counter()

    async def __call__(self, ev: Event) -> None:
        self.calls[ev.event_id] += 1
        if self.calls[ev.event_id] <= self.failures:
            raise RuntimeError(f"boom {self.calls[ev.event_id]}")


#: Real seconds between heartbeats in tests: the FixedClock's lease (30 s) is long
#: against it, so a heartbeat comes between any two steps a test waits for.
HEARTBEAT = 0.01


@pytest.fixture(params=["sqlite", "postgresql"])
async def queue(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A new store of each backend, for the dispatcher's behaviours that rest on the
    queue's claims (leases, heartbeat, fencing): they must hold on PostgreSQL too."""
    async with store_per_backend(request, tmp_path) as store:
        yield store


def dispatcher(
    inbox: Store, router: Router, clock: FixedClock, *, handler_timeout: float = 30.0
) -> Dispatcher:
    retry = RetryPolicy(max_attempts=3, base=10, max_delay=1000, jitter=0.25)
    return Dispatcher(
        inbox,
        router,
        clock=clock,
        rng=random.Random(1),
        retry=retry,
        handler_timeout=handler_timeout,
        heartbeat=HEARTBEAT,
    )


async def state(inbox: Store, event_id: str) -> JobState:
    stored = await inbox.get_event(event_id)
    assert stored is not None
    return stored.state


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    policy = RetryPolicy(base=5, max_delay=3600, jitter=0.25)
    rng = random.Random(7)
    for attempt, nominal in [(1, 5), (2, 10), (3, 20), (4, 40), (12, 3600)]:
        for _ in range(50):
            assert nominal * 0.75 <= policy.delay(attempt, rng) <= nominal * 1.25
    spread = {round(policy.delay(3, rng), 6) for _ in range(20)}
    assert len(spread) > 1  # jittered, so retries of many events do not arrive together


async def test_routes_by_pattern_and_marks_done(inbox: SQLiteStore, clock: FixedClock) -> None:
    router = Router()
    seen: list[tuple[str, str]] = []

    @router.on("email.bounced", name="bounces")
    def bounces(ev: Event) -> None:  # sync handlers run in a thread
        seen.append(("bounces", ev.event_id))

    @router.on("*.opened", name="opens")
    async def opens(ev: Event) -> None:
        seen.append(("opens", ev.event_id))

    await inbox.put(event("b1"))
    await inbox.put(event("o1", "push", "opened"))
    await inbox.put(event("s1", "sms", "sent"))  # no handler: done by the claim, no slot used
    assert await dispatcher(inbox, router, clock).run_once() == 3
    assert sorted(seen) == [("bounces", "b1"), ("opens", "o1")]
    for event_id in ("b1", "o1", "s1"):
        assert await state(inbox, event_id) is JobState.DONE


async def test_failed_handler_is_retried_after_backoff_and_others_not_rerun(
    inbox: SQLiteStore, clock: FixedClock
) -> None:
    router = Router()
    steady, flaky = Flaky(), Flaky(failures=1)
    router.add(steady, "email.*", name="steady")
    router.add(flaky, "email.bounced", name="flaky")
    await inbox.put(event("e1"))
    d = dispatcher(inbox, router, clock)

    assert await d.run_once() == 1
    stored = await inbox.get_event("e1")
    assert stored is not None
    assert stored.state is JobState.RETRYING
    assert stored.attempts == 1
    assert stored.last_error == "flaky: RuntimeError: boom 1"
    assert 7.5 <= stored.next_attempt_at - NOW <= 12.5

    assert await d.run_once() == 0  # not due yet
    clock.advance(13)
    assert await d.run_once() == 1
    assert await state(inbox, "e1") is JobState.DONE
    assert steady.calls["e1"] == 1
    assert flaky.calls["e1"] == 2
    runs = {r.handler: r for r in await inbox.handler_runs(stored.seq)}
    assert runs["flaky"].status == "ok"
    assert runs["flaky"].attempts == 2
    assert runs["steady"].attempts == 1


async def test_exhausted_retries_dead_letter_with_last_error(
    inbox: SQLiteStore, clock: FixedClock
) -> None:
    router = Router()
    broken = Flaky(failures=100)
    router.add(broken, "*", name="broken")
    await inbox.put(event("e1"))
    d = dispatcher(inbox, router, clock)
    for _ in range(3):
        await d.run_once()
        clock.advance(1000)
    stored = await inbox.get_event("e1")
    assert stored is not None
    assert stored.state is JobState.DEAD
    assert stored.attempts == 3
    assert stored.last_error == "broken: RuntimeError: boom 3"
    clock.advance(10_000)
    assert await d.run_once() == 0  # dead letters are not retried by themselves
    assert broken.calls["e1"] == 3


async def test_dead_letter_retry_reruns_only_failed_handlers(
    inbox: SQLiteStore, clock: FixedClock
) -> None:
    router = Router()
    steady, broken = Flaky(), Flaky(failures=3)
    router.add(steady, "*", name="steady")
    router.add(broken, "*", name="broken")
    await inbox.put(event("e1"))
    d = dispatcher(inbox, router, clock)
    for _ in range(3):
        await d.run_once()
        clock.advance(1000)
    assert await state(inbox, "e1") is JobState.DEAD

    assert await inbox.requeue(EventFilter(states=(JobState.DEAD,)), now=clock()) == 1
    assert await d.run_once() == 1
    assert await state(inbox, "e1") is JobState.DONE
    assert steady.calls["e1"] == 1
    assert broken.calls["e1"] == 4


async def test_retries_survive_a_restart(tmp_path: Path, clock: FixedClock) -> None:
    path = tmp_path / "inbox.db"
    router = Router()
    flaky = Flaky(failures=1)
    router.add(flaky, "*", name="flaky")
    async with SQLiteStore(path) as first:
        await first.put(event("e1"))
        await dispatcher(first, router, clock).run_once()
    clock.advance(60)
    async with SQLiteStore(path) as second:  # a new process: nothing carried over in memory
        assert await dispatcher(second, router, clock).run_once() == 1
        assert await state(second, "e1") is JobState.DONE
    assert flaky.calls["e1"] == 2


async def test_claimed_but_unfinished_events_are_reclaimed_after_the_lease(
    queue: Store, clock: FixedClock
) -> None:
    await queue.put(event("e1"))
    [job] = await queue.claim(now=clock(), limit=10, lease=90)  # then the worker dies
    assert await queue.claim(now=clock() + 89, limit=10, lease=90, interrupted=True) == []
    # Due again, but only to a claim of interrupted events (the dispatcher runs those
    # one at a time): a plain claim leaves it.
    assert await queue.claim(now=clock() + 91, limit=10, lease=90) == []
    [again] = await queue.claim(now=clock() + 91, limit=10, lease=90, interrupted=True)
    assert (again.event_id, again.interrupted) == (job.event_id, True)


async def test_slow_handler_times_out_and_is_retried(inbox: SQLiteStore, clock: FixedClock) -> None:
    router = Router()

    @router.on("*", name="slow")
    async def slow(ev: Event) -> None:
        await asyncio.sleep(5)

    await inbox.put(event("e1"))
    await dispatcher(inbox, router, clock, handler_timeout=0.05).run_once()
    stored = await inbox.get_event("e1")
    assert stored is not None
    assert stored.state is JobState.RETRYING
    assert stored.last_error == "slow: timed out after 0.05s"


async def test_replay_reruns_all_or_one_handler(inbox: SQLiteStore, clock: FixedClock) -> None:
    router = Router()
    a, b = Flaky(), Flaky()
    router.add(a, "*", name="a")
    router.add(b, "*", name="b")
    await inbox.put(event("e1"))
    d = dispatcher(inbox, router, clock)
    await d.run_once()
    assert await inbox.requeue(EventFilter(kinds=("email.bounced",)), now=clock(), rerun="b") == 1
    await d.run_once()
    assert (a.calls["e1"], b.calls["e1"]) == (1, 2)
    assert await inbox.requeue(EventFilter(kinds=("bounced",)), now=clock(), rerun="*") == 1
    await d.run_once()
    assert (a.calls["e1"], b.calls["e1"]) == (2, 3)


async def test_backfilled_events_are_stored_done_without_handlers(
    inbox: SQLiteStore, clock: FixedClock
) -> None:
    router = Router()
    handler = Flaky()
    router.add(handler, "*", name="h")

    await inbox.put(dataclasses.replace(event("bf"), backfilled=True))
    assert await dispatcher(inbox, router, clock).run_once() == 0
    stored = await inbox.get_event("bf")
    assert stored is not None
    assert stored.state is JobState.DONE
    assert stored.backfilled
    assert handler.calls["bf"] == 0


async def test_run_stops_when_asked(inbox: SQLiteStore, clock: FixedClock) -> None:
    router = Router()
    handler = Flaky()
    router.add(handler, "*", name="h")
    d = dispatcher(inbox, router, clock)
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    await inbox.put(event("e1"))
    d.wake()
    for _ in range(200):
        if handler.calls["e1"]:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert handler.calls["e1"] == 1


@pytest.mark.parametrize("bad", ["", "email.bounced.extra", ".bounced", "email."])
def test_bad_patterns_are_refused(bad: str) -> None:
    from cio_webhooks import ConfigError

    with pytest.raises(ConfigError):
        Router().add(Flaky(), bad)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until ``check`` holds.  A guard against hanging, not a timing assertion."""
    for _ in range(1000):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def is_state(inbox: Store, event_id: str, wanted: JobState) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        stored = await inbox.get_event(event_id)
        return stored is not None and stored.state is wanted

    return check


@contextlib.asynccontextmanager
async def running(d: Dispatcher) -> AsyncIterator[None]:
    """``d.run`` in the background for the block; stopped (and drained) after it."""
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


class Blocking:
    """A sync handler that blocks its thread until ``release``; records who started."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, ev: Event) -> None:
        with self._lock:
            self.started.add(ev.event_id)
        self.gate.wait()

    def __enter__(self) -> Blocking:
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()  # however the test's block ends: no thread is left blocked

    def has_started(self, count: int = 1) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return len(self.started) >= count

        return check


CRASHING_WORKER = """
import asyncio, os, sys
from cio_webhooks import (Dispatcher, RetryPolicy, Router)
from cio_webhooks.store.sqlite import SQLiteStore

def crash(event):
    with open(sys.argv[2], "a") as runs:
        runs.write(event.event_id + "\\n")
    os._exit(3)  # the process dies mid-handler: nothing is finished

async def main():
    router = Router()
    router.add(crash, "*", name="crash")
    async with SQLiteStore(sys.argv[1]) as inbox:
        dispatcher = Dispatcher(inbox, router, retry=RetryPolicy(max_attempts=3), lease=0.2)
        for _ in range(600):  # until the event is due again (its lease expired)
            if await dispatcher.run_once():
                return
            await asyncio.sleep(0.05)
    sys.exit(2)

asyncio.run(main())
"""


async def test_a_handler_that_kills_the_process_is_dead_lettered_after_max_attempts(
    tmp_path: Path,
) -> None:
    db, runs = tmp_path / "inbox.db", tmp_path / "runs.txt"
    async with SQLiteStore(db) as inbox:
        await inbox.put(event("killer"))
    exits = []
    for _ in range(6):  # a worker restarted after every crash, as systemd would
        proc = subprocess.run(
            [sys.executable, "-c", CRASHING_WORKER, str(db), str(runs)],
            capture_output=True,
            timeout=120,
        )
        exits.append(proc.returncode)
        if proc.returncode != 3:
            break
    assert exits == [3, 3, 3, 0], proc.stderr.decode()
    assert runs.read_text().split() == ["killer"] * 3
    async with SQLiteStore(db) as inbox:
        stored = await inbox.get_event("killer")
    assert stored is not None
    assert (stored.state, stored.attempts) == (JobState.DEAD, 3)
    assert stored.last_error is not None
    assert "did not finish" in stored.last_error


CRASH_AMONG_HEALTHY_WORKER = """
import asyncio, os, sys
from cio_webhooks import (Dispatcher, JobState, RetryPolicy, Router)
from cio_webhooks.store.sqlite import SQLiteStore

def crash(event):
    os._exit(3)  # kills the process while the healthy events beside it are in flight

async def healthy(event):
    await asyncio.sleep(0.5)

async def main():
    router = Router()
    router.add(crash, "email.dropped", name="crash")
    router.add(healthy, "email.delivered", name="healthy")
    async with SQLiteStore(sys.argv[1]) as inbox:
        dispatcher = Dispatcher(inbox, router, retry=RetryPolicy(max_attempts=3), lease=0.2)
        for _ in range(600):
            await dispatcher.run_once()
            states = (await inbox.stats()).states
            if not states["pending"] and not states["retrying"]:
                return
            await asyncio.sleep(0.05)
    sys.exit(2)

asyncio.run(main())
"""


async def test_a_crashing_handler_does_not_use_up_the_attempts_of_the_events_beside_it(
    tmp_path: Path,
) -> None:
    # Claimed together, the healthy events were in flight at every crash: each crash
    # cost them an attempt too, and they were dead-lettered with the crashing one.
    db = tmp_path / "inbox.db"
    async with SQLiteStore(db) as inbox:
        await inbox.put(event("killer", metric="dropped"))
        for i in range(3):
            await inbox.put(event(f"healthy{i}", metric="delivered"))
    exits = []
    for _ in range(8):  # a worker restarted after every crash, as systemd would
        proc = subprocess.run(
            [sys.executable, "-c", CRASH_AMONG_HEALTHY_WORKER, str(db)],
            capture_output=True,
            timeout=120,
        )
        exits.append(proc.returncode)
        if proc.returncode != 3:
            break
    assert exits[-1] == 0, proc.stderr.decode()
    async with SQLiteStore(db) as inbox:
        assert await state(inbox, "killer") is JobState.DEAD
        for i in range(3):
            assert await state(inbox, f"healthy{i}") is JobState.DONE


async def test_a_replay_made_while_handlers_run_is_not_overwritten(
    queue: Store, clock: FixedClock
) -> None:
    router = Router()
    gate = asyncio.Event()
    calls: Counter[str] = Counter()

    @router.on("*", name="h")
    async def handler(ev: Event) -> None:
        calls[ev.event_id] += 1
        if calls[ev.event_id] == 1:
            await gate.wait()

    await queue.put(event("e1"))
    d = dispatcher(queue, router, clock)
    first = asyncio.create_task(d.run_once())

    async def running() -> bool:
        return calls["e1"] == 1

    await eventually(running, "the handler started")
    assert await queue.requeue(EventFilter(event_ids=("e1",)), now=clock(), rerun="*") == 1
    gate.set()
    assert await first == 1
    stored = await queue.get_event("e1")
    assert stored is not None
    assert (stored.state, stored.attempts) == (JobState.PENDING, 0)  # the replay's, not DONE
    assert await d.run_once() == 1
    assert calls["e1"] == 2
    assert await state(queue, "e1") is JobState.DONE


async def test_an_event_replayed_while_it_runs_runs_again_after_never_twice_at_once(
    inbox: SQLiteStore, clock: FixedClock
) -> None:
    router = Router()
    blocking = Blocking()
    router.add(blocking, "*", name="h")
    await inbox.put(event("e1"))
    d = dispatcher(inbox, router, clock)
    async with running(d):
        with blocking:
            await eventually(blocking.has_started(), "the handler started")
            await inbox.requeue(EventFilter(event_ids=("e1",)), now=clock(), rerun="*")
            d.wake()

            async def claimed_again() -> bool:
                stored = await inbox.get_event("e1")
                return stored is not None and stored.attempts == 1

            await eventually(claimed_again, "the replayed event was claimed again")
            assert d.in_flight == 2  # the new run waits for the old one
        await eventually(is_state(inbox, "e1", JobState.DONE), "the replay ran")


async def test_a_blocked_handler_does_not_hold_up_other_events(
    inbox: SQLiteStore, clock: FixedClock
) -> None:
    router = Router()
    blocking = Blocking()
    router.add(blocking, "email.bounced", name="slow")
    spam = Flaky()
    router.add(spam, "*.spammed", name="spam")
    d = dispatcher(inbox, router, clock)
    async with running(d):
        with blocking:
            await inbox.put(event("slow"))
            d.wake()
            await eventually(blocking.has_started(), "the slow handler started")
            for i in range(5):
                await inbox.put(event(f"spam{i}", metric="spammed"))
                d.wake()
            for i in range(5):
                await eventually(is_state(inbox, f"spam{i}", JobState.DONE), f"spam{i} done")
            assert await state(inbox, "slow") is JobState.PENDING  # still running, still claimed
        await eventually(is_state(inbox, "slow", JobState.DONE), "the slow event finished")


async def test_retries_come_due_on_schedule_while_another_event_is_blocked(
    inbox: SQLiteStore, clock: FixedClock
) -> None:
    router = Router()
    blocking = Blocking()
    router.add(blocking, "email.bounced", name="slow")
    flaky = Flaky(failures=1)
    router.add(flaky, "*.spammed", name="flaky")
    d = dispatcher(inbox, router, clock)  # base 10 s, jitter 25 %
    async with running(d):
        with blocking:
            await inbox.put(event("slow"))
            await eventually(blocking.has_started(), "the slow handler started")
            await inbox.put(event("f1", metric="spammed"))
            d.wake()
            await eventually(is_state(inbox, "f1", JobState.RETRYING), "the first attempt failed")
            stored = await inbox.get_event("f1")
            assert stored is not None
            delay = stored.next_attempt_at - clock()
            assert 7.5 <= delay <= 12.5
            clock.advance(delay)
            await eventually(is_state(inbox, "f1", JobState.DONE), "the retry ran when due")
            assert flaky.calls["f1"] == 2
            assert await state(inbox, "slow") is JobState.PENDING


# More sync handlers at once than asyncio's default executor ever has threads (32).
MANY = 40
DEFAULT_POOL = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default size


async def many_blocked(inbox: SQLiteStore, clock: FixedClock) -> tuple[Blocking, asyncio.Task[int]]:
    """``MANY`` events, each for one blocking sync handler, and a batch taking them all."""
    router = Router()
    blocking = Blocking()
    router.add(blocking, "*", name="h")
    for i in range(MANY):
        await inbox.put(event(f"e{i}"))
    d = Dispatcher(inbox, router, clock=clock, concurrency=MANY)
    return blocking, asyncio.create_task(d.run_once())


async def test_every_sync_handler_starts_at_once_on_the_dispatchers_own_threads(
    inbox: SQLiteStore, clock: FixedClock
) -> None:
    blocking, batch = await many_blocked(inbox, clock)
    with blocking:
        # None waits for a thread, so each one's timeout counts from its start.
        await eventually(blocking.has_started(MANY), "every handler started")
    assert await asyncio.wait_for(batch, 10) == MANY


async def test_store_reads_never_wait_behind_blocked_sync_handlers(
    inbox: SQLiteStore, clock: FixedClock
) -> None:
    blocking, batch = await many_blocked(inbox, clock)
    with blocking:
        # Enough to take every thread of asyncio's default executor, were they on it.
        await eventually(blocking.has_started(DEFAULT_POOL), "the handlers started")
        # Reads run on asyncio's default executor; a hang here is the failure.
        stored = await asyncio.wait_for(inbox.get_event("e0"), 10)
        assert stored is not None
    await asyncio.wait_for(batch, 10)


async def test_a_timed_out_sync_handler_keeps_its_slot_until_it_returns(
    inbox: SQLiteStore, clock: FixedClock
) -> None:
    router = Router()
    blocking = Blocking()
    router.add(blocking, "email.bounced", name="stuck")
    quick = Flaky()
    router.add(quick, "email.spammed", name="quick")
    d = Dispatcher(
        inbox, router, clock=clock, rng=random.Random(1), concurrency=1, handler_timeout=0.05
    )
    await inbox.put(event("stuck"))
    with blocking:
        assert await d.run_once() == 1
        stored = await inbox.get_event("stuck")
        assert stored is not None
        assert stored.state is JobState.RETRYING
        assert stored.last_error == "stuck: timed out after 0.05s"
        await inbox.put(event("q", metric="spammed"))
        # Its thread still runs: no thread for another handler, so nothing is claimed.
        assert await d.run_once() == 0

    async def claimed() -> bool:
        return await d.run_once() == 1

    await eventually(claimed, "the slot came back")
    assert await state(inbox, "q") is JobState.DONE


async def test_backfilled_events_reach_only_handlers_that_ask_for_them(
    inbox: SQLiteStore, clock: FixedClock
) -> None:
    router = Router()
    seen: list[tuple[str, str, bool]] = []

    @router.on("*", name="plain")
    async def plain(ev: Event) -> None:
        seen.append(("plain", ev.event_id, ev.backfilled))

    @router.on("*", name="wants", backfilled=True)
    def wants(ev: Event) -> None:
        seen.append(("wants", ev.event_id, ev.backfilled))

    await inbox.put(dataclasses.replace(event("bf"), backfilled=True))
    await inbox.put(event("live"))
    # What `replay --since` does: every stored event is due again, backfilled ones too.
    assert await inbox.requeue(EventFilter(), now=clock(), rerun="*") == 2
    d = dispatcher(inbox, router, clock)
    while await d.run_once():
        pass
    assert sorted(seen) == [
        ("plain", "live", False),
        ("wants", "bf", True),
        ("wants", "live", False),
    ]
    assert await state(inbox, "bf") is JobState.DONE


async def test_replay_never_runs_policies_for_backfilled_events(tmp_path: Path) -> None:
    async with FakeCustomerIO(site_id="site", track_key="track-key") as fake:
        settings = Settings(
            store=sqlite_store(tmp_path / "inbox.db"),
            warehouse=tmp_path / "warehouse.db",
            signing_keys=(KEY,),
            track_site_id="site",
            track_api_key="track-key",
            track_url=fake.track_url,
        )
        now = time.time()
        async with SQLiteStore(tmp_path / "inbox.db") as inbox:
            complaint = event("bf", metric="spammed", received_at=now)
            await inbox.put(dataclasses.replace(complaint, backfilled=True))
        replay = subprocess.run(
            [str(BIN), "replay", "--since", "1d", "--db", str(tmp_path / "inbox.db")],
            capture_output=True,
            timeout=60,
        )
        assert replay.returncode == 0, replay.stderr.decode()
        assert b"queued 1 event" in replay.stdout
        policies = build_policies(settings)
        assert policies is not None
        try:
            async with SQLiteStore(tmp_path / "inbox.db") as inbox:
                d = Dispatcher(inbox, policies.router())
                assert await d.run_once() == 1
                assert await state(inbox, "bf") is JobState.DONE
        finally:
            await policies.close()
        assert fake.calls() == []


async def test_a_handler_failure_logs_its_traceback_and_stores_the_short_error(
    inbox: SQLiteStore, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    router = Router()

    @router.on("*", name="h")
    def look_up_person(ev: Event) -> None:
        raise LookupError("no such person")

    await inbox.put(event("e1"))
    with caplog.at_level(logging.INFO, logger="cio_webhooks.dispatcher"):
        await dispatcher(inbox, router, clock).run_once()
    [record] = [r for r in caplog.records if "event=handler_failed" in r.getMessage()]
    line = KeyValueFormatter().format(record)
    assert "Traceback (most recent call last)" in line
    assert "in look_up_person" in line
    assert "\n" not in line  # one record, one line
    stored = await inbox.get_event("e1")
    assert stored is not None
    assert stored.last_error == "h: LookupError: no such person"


async def test_stop_drains_the_events_in_flight_and_claims_no_more(
    inbox: SQLiteStore, clock: FixedClock
) -> None:
    router = Router()
    gate, started = asyncio.Event(), asyncio.Event()

    @router.on("email.bounced", name="slow")
    async def slow(ev: Event) -> None:
        started.set()
        await gate.wait()

    late = Flaky()
    router.add(late, "email.spammed", name="late")
    await inbox.put(event("e1"))
    d = dispatcher(inbox, router, clock)
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    await asyncio.wait_for(started.wait(), 10)
    stop.set()
    await inbox.put(event("after", metric="spammed"))
    d.wake()
    await asyncio.sleep(0.2)  # room to claim it, if the dispatcher (wrongly) still claimed
    assert not task.done()  # draining: e1's handler is still running
    gate.set()
    await asyncio.wait_for(task, 10)
    assert await state(inbox, "e1") is JobState.DONE
    after = await inbox.get_event("after")
    assert after is not None
    assert (after.state, after.attempts) == (JobState.PENDING, 0)
    assert late.calls["after"] == 0


async def test_a_drain_that_times_out_leaves_the_event_claimed_for_a_retry(
    inbox: SQLiteStore, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    router = Router()
    blocking = Blocking()
    router.add(blocking, "*", name="stuck")
    await inbox.put(event("e1"))
    d = Dispatcher(inbox, router, clock=clock, drain_timeout=0.1)
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    with blocking:
        await eventually(blocking.has_started(), "the handler started")
        with caplog.at_level(logging.WARNING, logger="cio_webhooks.dispatcher"):
            stop.set()
            await asyncio.wait_for(task, 10)  # returns although the handler has not
        assert any("event=drain_timeout in_flight=1" in r.getMessage() for r in caplog.records)
        stored = await inbox.get_event("e1")
        assert stored is not None
        # Nothing recorded: still claimed, due again when the lease expires.
        assert (stored.state, stored.attempts) == (JobState.PENDING, 1)
        assert stored.next_attempt_at == clock() + d.lease
    [job] = await inbox.claim(now=clock() + d.lease, limit=1, lease=60, interrupted=True)
    assert job.interrupted


async def test_replay_of_one_handler_never_drops_another_handlers_pending_retry(
    inbox: SQLiteStore, clock: FixedClock
) -> None:
    marker, unsubscribe = Flaky(), Flaky(failures=1)  # the unsubscribe fails once
    router = Router()
    router.add(marker, "email.bounced", name="marker")
    router.add(unsubscribe, "email.bounced", name="unsubscribe")
    d = dispatcher(inbox, router, clock)
    await inbox.put(event("e1"))
    await d.run_once()
    assert await state(inbox, "e1") is JobState.RETRYING

    # `replay --handler marker` while the unsubscribe waits for its retry.
    await inbox.requeue(EventFilter(event_ids=("e1",)), now=clock(), rerun="marker")
    await d.run_once()
    assert (marker.calls["e1"], unsubscribe.calls["e1"]) == (2, 2)  # the retry still ran
    assert await state(inbox, "e1") is JobState.DONE


async def test_an_event_whose_handlers_together_outlast_two_timeouts_runs_once(
    inbox: SQLiteStore, clock: FixedClock
) -> None:
    # Four handlers of 25 s each: every one within its 30 s timeout, 100 s together.
    # With a lease of 2 x 30 + 30 s the loop claimed the event again mid-run, ran its
    # handlers again and dead-lettered a healthy event.
    calls: Counter[str] = Counter()
    router = Router()
    for name in ("a", "b", "c", "d"):

        async def slow(ev: Event, name: str = name) -> None:
            calls[name] += 1
            clock.advance(25)
            await asyncio.sleep(0.1)  # the loop polls for due events meanwhile

        router.add(slow, "email.bounced", name=name)
    d = dispatcher(inbox, router, clock)
    await inbox.put(event("e1"))
    stop = asyncio.Event()
    running = asyncio.create_task(d.run(stop))

    async def settled() -> bool:
        return await state(inbox, "e1") in (JobState.DONE, JobState.DEAD)

    await eventually(settled, "the event was settled")
    for _ in range(5):  # time for a wrongful second claim to show
        await asyncio.sleep(0.02)
    stop.set()
    await running
    assert calls == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert await state(inbox, "e1") is JobState.DONE
    stored = await inbox.get_event("e1")
    assert stored is not None
    assert stored.attempts == 1


async def test_a_stuck_sync_handler_takes_one_slot_however_often_it_is_retried(
    inbox: SQLiteStore,
) -> None:
    # Each retry of a sync handler stuck for ever started another thread of it, each
    # holding a slot: a few retries took every slot and stopped all processing.
    release = threading.Event()
    calls: Counter[str] = Counter()
    router = Router()

    @router.on("email.bounced", name="stuck")
    def stuck(ev: Event) -> None:
        calls[ev.event_id] += 1
        release.wait(30)

    @router.on("email.delivered", name="fine")
    def fine(ev: Event) -> None:
        calls[ev.event_id] += 1

    d = Dispatcher(
        inbox,
        router,
        retry=RetryPolicy(max_attempts=6, base=0.01, max_delay=0.01, jitter=0),
        concurrency=3,
        handler_timeout=0.1,
    )
    await inbox.put(event("stuck-1", metric="bounced", received_at=time.time()))
    stop = asyncio.Event()
    running = asyncio.create_task(d.run(stop))
    try:
        await eventually(is_state(inbox, "stuck-1", JobState.DEAD), "every attempt used up")
        await inbox.put(event("fine-1", metric="delivered", received_at=time.time()))
        d.wake()
        await eventually(is_state(inbox, "fine-1", JobState.DONE), "another event ran")
        assert await state(inbox, "stuck-1") is JobState.DEAD
        assert await state(inbox, "fine-1") is JobState.DONE  # a slot was still free
        assert calls["stuck-1"] == 1  # one thread for it, not one per attempt
        stored = await inbox.get_event("stuck-1")
        assert stored is not None
        assert "still running" in (stored.last_error or "")
    finally:
        release.set()
        stop.set()
        await running


class RateLimited(Exception):
    """Like the Customer.io clients' errors: it carries the server's Retry-After."""

    retry_after = 120.0


async def test_a_retry_waits_as_long_as_the_server_asked(
    inbox: SQLiteStore, clock: FixedClock
) -> None:
    router = Router()

    @router.on("*", name="limited")
    async def limited(ev: Event) -> None:
        raise RateLimited("429 Too Many Requests")

    await inbox.put(event("e1"))
    await dispatcher(inbox, router, clock).run_once()  # backoff alone: about 10 s
    stored = await inbox.get_event("e1")
    assert stored is not None
    assert stored.state is JobState.RETRYING
    assert stored.next_attempt_at == clock() + 120


# Leases and heartbeat: a short lease, kept alive while the handlers run.


def gated() -> tuple[Router, asyncio.Event, asyncio.Event]:
    """A router whose one async handler ``h`` sets ``started`` and waits for ``gate``."""
    router = Router()
    started, gate = asyncio.Event(), asyncio.Event()

    @router.on("*", name="h")
    async def waits(ev: Event) -> None:
        started.set()
        await gate.wait()

    return router, started, gate


def lease_ends(inbox: Store, event_id: str, at_least: float) -> Callable[[], Awaitable[bool]]:
    """The event is still claimed, until ``at_least`` or later (a heartbeat came)."""

    async def check() -> bool:
        stored = await inbox.get_event(event_id)
        assert stored is not None
        return stored.state is JobState.PENDING and stored.next_attempt_at >= at_least

    return check


async def test_a_long_handler_keeps_its_claim_past_the_lease(
    queue: Store, clock: FixedClock
) -> None:
    router = Router()
    blocking = Blocking()  # sync: its thread blocks, the heartbeat goes on
    router.add(blocking, "*", name="long")
    await queue.put(event("e1"))
    d = dispatcher(queue, router, clock)
    running = asyncio.create_task(d.run_once())
    elsewhere = Flaky()
    other = Router()
    other.add(elsewhere, "*", name="long")
    with blocking:
        await eventually(blocking.has_started(), "the handler started")
        assert d.heartbeating
        for _ in range(4):  # 80 s: well past the 30 s lease
            clock.advance(20)
            await eventually(lease_ends(queue, "e1", clock() + d.lease), "a heartbeat came")
            assert not await queue.interrupted_due(now=clock())
            # Another dispatcher on the same store (a new one: none of its reads cached).
            assert await Dispatcher(queue, other, clock=clock).run_once() == 0
    assert await running == 1
    stored = await queue.get_event("e1")
    assert stored is not None
    assert (stored.state, stored.attempts) == (JobState.DONE, 1)
    assert elsewhere.calls["e1"] == 0


async def test_a_dead_dispatchers_events_are_claimed_again_after_the_short_lease(
    queue: Store, clock: FixedClock
) -> None:
    router, started, _ = gated()  # never opened: the worker dies first
    await queue.put(event("e1"))
    dead = Dispatcher(queue, router, clock=clock)
    assert dead.lease == DEFAULT_LEASE
    running = asyncio.create_task(dead.run_once())
    await asyncio.wait_for(started.wait(), 10)
    running.cancel()  # the worker dies: no outcome recorded, no heartbeat any more
    with contextlib.suppress(asyncio.CancelledError):
        await running

    async def silent() -> bool:
        return not dead.heartbeating

    await eventually(silent, "the dead dispatcher's heartbeat stopped")
    survivor = Flaky()
    other = Router()
    other.add(survivor, "*", name="h")
    clock.advance(DEFAULT_LEASE - 1)
    assert await Dispatcher(queue, other, clock=clock).run_once() == 0
    clock.advance(1)
    assert await Dispatcher(queue, other, clock=clock).run_once() == 1
    assert survivor.calls["e1"] == 1
    stored = await queue.get_event("e1")
    assert stored is not None
    assert (stored.state, stored.attempts) == (JobState.DONE, 2)


async def test_the_heartbeat_stops_once_the_events_in_flight_are_finished(
    queue: Store, clock: FixedClock
) -> None:
    router, started, gate = gated()
    await queue.put(event("e1"))
    d = dispatcher(queue, router, clock)
    assert not d.heartbeating
    running = asyncio.create_task(d.run_once())
    await asyncio.wait_for(started.wait(), 10)
    clock.advance(10)
    await eventually(lease_ends(queue, "e1", clock() + d.lease), "a heartbeat came")
    assert d.heartbeating
    gate.set()
    assert await running == 1
    assert not d.heartbeating
    assert await d.extend_claims() == 0  # nothing left to extend
    stored = await queue.get_event("e1")
    assert stored is not None
    assert stored.state is JobState.DONE

    # The next claim starts a heartbeat of its own.
    started.clear()
    gate.clear()
    await queue.put(event("e2"))
    running = asyncio.create_task(d.run_once())
    await asyncio.wait_for(started.wait(), 10)
    assert d.heartbeating
    gate.set()
    await running
    assert not d.heartbeating


async def test_a_claim_taken_away_is_no_longer_extended_and_the_others_still_are(
    queue: Store, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    router = Router()
    gate = asyncio.Event()
    calls: Counter[str] = Counter()

    @router.on("*", name="h")
    async def waits(ev: Event) -> None:
        calls[ev.event_id] += 1
        await gate.wait()

    await queue.put(event("e1"))
    await queue.put(event("e2"))
    d = dispatcher(queue, router, clock)
    running = asyncio.create_task(d.run_once())

    async def both_running() -> bool:
        return calls == {"e1": 1, "e2": 1}

    await eventually(both_running, "both handlers started")
    with caplog.at_level(logging.INFO, logger="cio_webhooks.dispatcher"):
        assert await queue.discard(EventFilter(event_ids=("e1",)), now=clock()) == 1

        async def dropped() -> bool:
            return "event=claim_lost event_id=e1" in caplog.text

        await eventually(dropped, "the heartbeat found e1's claim gone")
        clock.advance(20)
        await eventually(lease_ends(queue, "e2", clock() + d.lease), "e2 is still extended")
        assert d.heartbeating
        gate.set()
        assert await running == 2
    assert await state(queue, "e1") is JobState.DISCARDED  # its outcome was dropped
    assert await state(queue, "e2") is JobState.DONE
    assert "event=claim_lost event_id=e2" not in caplog.text


def test_the_heartbeat_must_come_before_the_lease_runs_out(inbox: SQLiteStore) -> None:
    with pytest.raises(ValueError, match="heartbeat"):
        Dispatcher(inbox, Router(), lease=10, heartbeat=10)
