"""The ``Alerter`` on real stores (SQLite and PostgreSQL), with an injected clock,
sending to a fake Slack / webhook server on loopback.

Each default rule, driven into its state through the store as the service would get
there (events, 401s recorded by a receiver, a handler that gives up, a sink behind,
failed Track calls), fires once with the right figure, is repeated after the cooldown
and not before, and resolves with a message.  Two processes on one store (two store
objects, two alerters) send each message once, and a restart sends nothing again."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cio_webhooks import Dispatcher, EventFilter, JobState, RetryPolicy, Router, parse_event
from cio_webhooks.alerts import RULES, AlertConfig, Alerter, alert_config
from cio_webhooks.settings import ALERT_RATES_EVERY, DEFAULT_ALERT_COOLDOWN
from cio_webhooks.store import Store, TrafficMinute, minute_of, open_store
from cio_webhooks.testing import FakeNotificationServer, FixedClock, make_event

from ..conftest import NOW

HOUR = 3600.0
_ids = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'inbox.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


async def _open(url: str) -> Store:
    store = open_store(url)
    await store.open()
    return store


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await _open(store_url)
    yield opened
    await opened.close()


@pytest.fixture
def hooks() -> Iterator[FakeNotificationServer]:
    with FakeNotificationServer() as server:
        yield server


def only(rule: str, hooks: FakeNotificationServer) -> AlertConfig:
    """The default rules with only ``rule`` on, sending to ``hooks`` (Slack and JSON)."""
    return alert_config(
        {
            "dashboard_url": "https://hooks.example.com",
            "notify": {"slack": hooks.url("/slack"), "webhook": hooks.url("/hook")},
            "rules": {name: {"enabled": name == rule} for name in RULES},
        }
    )


# -- driving the store into each rule's state, as the service would --------------------
async def put(store: Store, metric: str, received_at: float, *, handled: bool = True) -> str:
    event_id = f"e{next(_ids)}"
    body = json.dumps(make_event(event_id, "email", metric)).encode()
    await store.put(parse_event(body, received_at=received_at), handled=handled)
    return event_id


Step = Callable[[Store, FixedClock], Awaitable[None]]


@dataclass(frozen=True)
class Scenario:
    """``fire`` makes the rule fire at the clock's time (again: it is called before
    each check while it should go on firing); ``clear`` ends it."""

    fire: Step
    clear: Step
    value: float
    threshold: float
    page: str
    level: str = "warning"


async def no_events_fire(store: Store, clock: FixedClock) -> None:
    await put(store, "delivered", clock() - 3700)


async def no_events_clear(store: Store, clock: FixedClock) -> None:
    await put(store, "delivered", clock())


async def signature_fire(store: Store, clock: FixedClock) -> None:
    minute = TrafficMinute(minute_of(clock()), stored=3, rejected_signature=12)
    await store.record_traffic("receiver-1", [minute])


async def signature_clear(store: Store, clock: FixedClock) -> None:
    # the receiver's running totals of the last minutes, written again: no 401 left
    minutes = [TrafficMinute(minute_of(clock()) - 60 * i, stored=3) for i in range(10)]
    await store.record_traffic("receiver-1", minutes)


async def dead_letter_fire(store: Store, clock: FixedClock) -> None:
    await put(store, "failed", clock(), handled=False)
    router = Router()

    @router.on("email.failed", name="always_fails")
    def fail(event: object) -> None:
        raise ValueError("no route to host")

    dispatcher = Dispatcher(store, router, clock=clock, retry=RetryPolicy(max_attempts=1))
    while await dispatcher.run_once():
        pass


async def dead_letter_clear(store: Store, clock: FixedClock) -> None:
    await store.discard(EventFilter(states=(JobState.DEAD,)), now=clock())


async def backlog_fire(store: Store, clock: FixedClock) -> None:
    await put(store, "delivered", clock() - 1000, handled=False)


async def backlog_clear(store: Store, clock: FixedClock) -> None:
    await store.discard(EventFilter(states=(JobState.PENDING,)), now=clock())


async def sink_fire(store: Store, clock: FixedClock) -> None:
    await store.register_sink("lake", "parquet:///lake", now=clock())
    await put(store, "delivered", clock() - 1000)


async def sink_clear(store: Store, clock: FixedClock) -> None:
    [state] = await store.sink_states()
    last = max([e.seq async for e in store.iter_events(EventFilter())])
    assert await store.lease_sink("lake", "loader", now=clock(), until=clock() + 30)
    done = await store.advance_sink(
        "lake", "loader", from_seq=state.seq, to_seq=last, last_received_at=None, now=clock()
    )
    assert done


async def complaints_fire(store: Store, clock: FixedClock) -> None:
    if (await store.stats()).events:
        return  # the window (24 h) still holds them
    for _ in range(1000):
        await put(store, "delivered", clock())
    for _ in range(4):
        await put(store, "spammed", clock())


async def bounces_fire(store: Store, clock: FixedClock) -> None:
    if (await store.stats()).events:
        return
    for _ in range(1000):
        await put(store, "sent", clock())
    for _ in range(60):
        await put(store, "bounced", clock())


async def past_the_window(store: Store, clock: FixedClock) -> None:
    clock.advance(25 * HOUR)


async def track_fire(store: Store, clock: FixedClock) -> None:
    ledger = store.ledger()
    for _ in range(5):
        event_id = f"t{next(_ids)}"
        args: dict[str, Any] = {"rule": "tag", "event_id": event_id, "person": "p1"}
        await ledger.reserve(**args, dry_run=False, now=clock())
        await ledger.finish(
            **args,
            action="identify",
            request={},
            status="failed",
            detail="HTTP 500",
            dry_run=False,
            at=clock(),
        )


async def track_clear(store: Store, clock: FixedClock) -> None:
    clock.advance(16 * 60)  # the failures leave the 15 min window; no new one


SCENARIOS = {
    "no_events": Scenario(no_events_fire, no_events_clear, 3700, 3600, "/ui", "critical"),
    "signature_failures": Scenario(signature_fire, signature_clear, 12, 10, "/ui", "critical"),
    "dead_letters": Scenario(dead_letter_fire, dead_letter_clear, 1, 1, "/ui/dead-letters"),
    "backlog_age": Scenario(backlog_fire, backlog_clear, 1000, 900, "/ui"),
    "sink_lag": Scenario(sink_fire, sink_clear, 1000, 900, "/ui"),
    "complaint_rate": Scenario(
        complaints_fire, past_the_window, 0.004, 0.003, "/ui/deliverability", "critical"
    ),
    "bounce_rate": Scenario(bounces_fire, past_the_window, 0.06, 0.05, "/ui/deliverability"),
    "track_failures": Scenario(track_fire, track_clear, 5, 5, "/ui/policies"),
}


def test_every_default_rule_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(RULES)


@pytest.mark.parametrize("rule", list(SCENARIOS))
async def test_each_rule_fires_repeats_after_the_cooldown_and_resolves(
    rule: str, store: Store, hooks: FakeNotificationServer
) -> None:
    scenario = SCENARIOS[rule]
    clock = FixedClock(NOW)
    # all is well: nothing said, nothing recorded (another worker looks: this one's
    # email rates would be read again only after ALERT_RATES_EVERY)
    assert await Alerter(store, only(rule, hooks), clock=clock).check() == []
    assert await store.alert_states() == []
    alerter = Alerter(store, only(rule, hooks), clock=clock)

    await scenario.fire(store, clock)
    [fired] = await alerter.check()
    assert (fired.rule, fired.status, fired.repeat) == (rule, "firing", False)
    assert fired.value == pytest.approx(scenario.value)
    assert fired.threshold == pytest.approx(scenario.threshold)
    assert fired.level == scenario.level
    assert fired.url == f"https://hooks.example.com{scenario.page}"
    [body] = hooks.received("/hook")
    assert body["status"] == "firing"
    assert body["value"] == pytest.approx(scenario.value)
    assert body["url"] == fired.url
    [slack] = hooks.received("/slack")
    assert slack["text"].startswith(f":rotating_light: *FIRING {rule} ({scenario.level})*: ")

    clock.advance(DEFAULT_ALERT_COOLDOWN - 60)
    await scenario.fire(store, clock)
    assert await alerter.check() == []  # still firing, inside the cooldown: quiet

    clock.advance(60)
    await scenario.fire(store, clock)
    [again] = await alerter.check()
    assert (again.status, again.repeat) == ("firing", True)
    assert "(firing for 1 h)" in again.text
    assert hooks.received("/hook")[-1]["repeat"] is True

    await scenario.clear(store, clock)
    [resolved] = await alerter.check()
    assert resolved.status == "resolved"
    assert "(it fired for " in resolved.text
    assert hooks.received("/hook")[-1]["status"] == "resolved"
    assert hooks.received("/slack")[-1]["text"].startswith(
        f":white_check_mark: *RESOLVED {rule}*: "
    )
    assert await alerter.check() == []
    assert len(hooks.received("/hook")) == 3

    [state] = await store.alert_states()
    assert (state.rule, state.firing, state.version) == (rule, False, 3)


async def test_a_rise_from_warning_to_critical_is_sent_at_once(
    store: Store, hooks: FakeNotificationServer
) -> None:
    clock = FixedClock(NOW)
    alerter = Alerter(store, only("complaint_rate", hooks), clock=clock)
    for _ in range(1000):
        await put(store, "delivered", NOW)
    for _ in range(2):
        await put(store, "spammed", NOW)
    [warning] = await alerter.check()
    assert (warning.level, warning.value) == ("warning", 0.002)
    clock.advance(60)
    for _ in range(2):
        await put(store, "spammed", clock())
    # the rates read a minute ago serve for ALERT_RATES_EVERY: a count over a day each
    # check would be wasteful
    assert await alerter.check() == []
    clock.advance(ALERT_RATES_EVERY - 60)
    [critical] = await alerter.check()
    assert (critical.status, critical.level, critical.repeat) == ("firing", "critical", False)
    assert critical.value == pytest.approx(0.004)


async def test_a_rule_turned_off_while_firing_is_put_to_rest_without_a_message(
    store: Store, hooks: FakeNotificationServer
) -> None:
    clock = FixedClock(NOW)
    await dead_letter_fire(store, clock)
    [fired] = await Alerter(store, only("dead_letters", hooks), clock=clock).check()
    assert fired.status == "firing"
    clock.advance(60)
    assert await Alerter(store, only("backlog_age", hooks), clock=clock).check() == []
    [state] = [s for s in await store.alert_states() if s.rule == "dead_letters"]
    assert not state.firing  # no longer shown as firing on the dashboard
    assert len(hooks.received("/hook")) == 1  # and nothing was sent about it


async def test_two_workers_whose_cached_rates_disagree_do_not_flap(
    store_url: str, hooks: FakeNotificationServer
) -> None:
    clock = FixedClock(NOW)
    config = only("complaint_rate", hooks)
    first, second = await _open(store_url), await _open(store_url)
    try:
        early, late = Alerter(first, config, clock=clock), Alerter(second, config, clock=clock)
        for _ in range(1000):
            await put(first, "delivered", NOW)
        assert await early.check() == []  # reads (and keeps) a 0% rate
        clock.advance(60)
        for _ in range(2):
            await put(first, "spammed", clock())
        [fired] = await late.check()  # reads 0.2%: fires
        assert fired.status == "firing"
        for _ in range(3):  # the early one's 0% is older than that: it must not resolve
            clock.advance(30)
            assert await early.check() == []
            assert await late.check() == []
        assert [b["status"] for b in hooks.received("/hook")] == ["firing"]
    finally:
        await first.close()
        await second.close()


async def test_two_workers_send_each_message_once_and_a_restart_none_again(
    store_url: str, hooks: FakeNotificationServer
) -> None:
    clock = FixedClock(NOW)
    config = only("dead_letters", hooks)
    first, second = await _open(store_url), await _open(store_url)
    try:
        workers = [Alerter(s, config, clock=clock) for s in (first, second)]

        async def both() -> int:
            sent = await asyncio.gather(*(w.check() for w in workers))
            return sum(len(s) for s in sent)

        await dead_letter_fire(first, clock)
        assert await both() == 1
        assert await both() == 0
        clock.advance(DEFAULT_ALERT_COOLDOWN)
        assert await both() == 1  # the repeat, once
        await dead_letter_clear(second, clock)
        assert await both() == 1
        assert [b["status"] for b in hooks.received("/hook")] == ["firing", "firing", "resolved"]

        await dead_letter_fire(first, clock)
        assert await both() == 1
    finally:
        await first.close()
        await second.close()
    # a restart: a new process on the store knows the alert is firing, and says nothing
    restarted = await _open(store_url)
    try:
        assert await Alerter(restarted, config, clock=clock).check() == []
    finally:
        await restarted.close()
    assert len(hooks.received("/hook")) == 4


async def test_run_checks_until_stopped_and_survives_a_failing_check(
    store: Store, hooks: FakeNotificationServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FixedClock(NOW)
    await dead_letter_fire(store, clock)
    alerter = Alerter(store, only("dead_letters", hooks), clock=clock, every=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(alerter.run(stop))
    for _ in range(500):
        if hooks.received("/hook"):
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert [b["rule"] for b in hooks.received("/hook")] == ["dead_letters"]

    # a store that fails: logged, and the loop goes on until told to stop
    broken = Alerter(store, only("dead_letters", hooks), clock=lambda: float("nan"), every=0.01)
    await store.close()
    caplog.set_level(logging.ERROR, logger="cio_webhooks.alerts")
    stop = asyncio.Event()
    task = asyncio.create_task(broken.run(stop))
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert "event=alert_check_failed" in caplog.text


async def test_track_failures_are_not_read_without_policies(
    tmp_path: Path, hooks: FakeNotificationServer
) -> None:
    store = open_store(f"sqlite://{tmp_path / 'inbox.db'}")
    await store.open()
    try:
        alerter = Alerter(store, only("track_failures", hooks), policies=False)
        assert await alerter.check() == []
    finally:
        await store.close()
    assert not (tmp_path / "actions.db").exists()  # no ledger file made to be found empty
