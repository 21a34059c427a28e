"""Dispatcher: routing, once-per-handler success, backoff, dead letters, restarts."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import pytest

from cio_webhooks import (
    Dispatcher,
    Event,
    EventFilter,
    JobState,
    RetryPolicy,
    Router,
    SQLiteInbox,
    parse_event,
)
from cio_webhooks.testing import FixedClock, make_event

from .conftest import NOW


def event(event_id: str, object_type: str = "email", metric: str = "bounced") -> Event:
    import json

    body = json.dumps(make_event(event_id, object_type, metric)).encode()
    return parse_event(body, received_at=NOW)


class Flaky:
    """A handler that fails its first ``failures`` calls, counting every call."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: Counter[str] = Counter()

    async def __call__(self, ev: Event) -> None:
        self.calls[ev.event_id] += 1
        if self.calls[ev.event_id] <= self.failures:
            raise RuntimeError(f"boom {self.calls[ev.event_id]}")


def dispatcher(
    inbox: SQLiteInbox, router: Router, clock: FixedClock, *, handler_timeout: float = 30.0
) -> Dispatcher:
    retry = RetryPolicy(max_attempts=3, base=10, max_delay=1000, jitter=0.25)
    return Dispatcher(
        inbox,
        router,
        clock=clock,
        rng=random.Random(1),
        retry=retry,
        handler_timeout=handler_timeout,
    )


async def state(inbox: SQLiteInbox, event_id: str) -> JobState:
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


async def test_routes_by_pattern_and_marks_done(inbox: SQLiteInbox, clock: FixedClock) -> None:
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
    await inbox.put(event("s1", "sms", "sent"))  # no handler: done at once
    assert await dispatcher(inbox, router, clock).run_once() == 3
    assert sorted(seen) == [("bounces", "b1"), ("opens", "o1")]
    for event_id in ("b1", "o1", "s1"):
        assert await state(inbox, event_id) is JobState.DONE


async def test_failed_handler_is_retried_after_backoff_and_others_not_rerun(
    inbox: SQLiteInbox, clock: FixedClock
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
    runs = {r["handler"]: r for r in await inbox.handler_runs(stored.seq)}
    assert runs["flaky"]["status"] == "ok"
    assert runs["flaky"]["attempts"] == 2
    assert runs["steady"]["attempts"] == 1


async def test_exhausted_retries_dead_letter_with_last_error(
    inbox: SQLiteInbox, clock: FixedClock
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
    inbox: SQLiteInbox, clock: FixedClock
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
    async with SQLiteInbox(path) as first:
        await first.put(event("e1"))
        await dispatcher(first, router, clock).run_once()
    clock.advance(60)
    async with SQLiteInbox(path) as second:  # a new process: nothing carried over in memory
        assert await dispatcher(second, router, clock).run_once() == 1
        assert await state(second, "e1") is JobState.DONE
    assert flaky.calls["e1"] == 2


async def test_claimed_but_unfinished_events_are_reclaimed_after_the_lease(
    inbox: SQLiteInbox, clock: FixedClock
) -> None:
    await inbox.put(event("e1"))
    [job] = await inbox.claim(now=clock(), limit=10, lease=90)  # then the worker dies
    assert await inbox.claim(now=clock() + 89, limit=10, lease=90) == []
    [again] = await inbox.claim(now=clock() + 91, limit=10, lease=90)
    assert again.event_id == job.event_id


async def test_slow_handler_times_out_and_is_retried(inbox: SQLiteInbox, clock: FixedClock) -> None:
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


async def test_replay_reruns_all_or_one_handler(inbox: SQLiteInbox, clock: FixedClock) -> None:
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
    inbox: SQLiteInbox, clock: FixedClock
) -> None:
    router = Router()
    handler = Flaky()
    router.add(handler, "*", name="h")
    import dataclasses

    await inbox.put(dataclasses.replace(event("bf"), backfilled=True))
    assert await dispatcher(inbox, router, clock).run_once() == 0
    stored = await inbox.get_event("bf")
    assert stored is not None
    assert stored.state is JobState.DONE
    assert stored.backfilled
    assert handler.calls["bf"] == 0


async def test_run_stops_when_asked(inbox: SQLiteInbox, clock: FixedClock) -> None:
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
