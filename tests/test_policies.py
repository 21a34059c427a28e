"""Policies through the real pipeline: signed POST -> inbox -> dispatcher -> fake Track API.

The pipeline is assembled the way the service does it (``Settings`` ->
``build_policies`` -> a ``Dispatcher`` on the policies' router -> ``create_app``),
with the fake Customer.io as the Track API and an injected clock; the tests
drive ``Dispatcher.run_once()`` instead of waiting for retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import aiohttp
import httpx2
import pytest

from cio_webhooks import (
    ConfigError,
    Dispatcher,
    Event,
    EventFilter,
    JobState,
    RetryPolicy,
    create_app,
    parse_event,
)
from cio_webhooks._metrics import MetricSources
from cio_webhooks._service import (
    build_policies,
    check_storage,
    check_track_credentials,
    dispatch_then_close,
    sqlite_store,
)
from cio_webhooks.customerio import TRACK_URLS, CustomerIOAuthError, TrackClient
from cio_webhooks.customerio.fake import FakeCustomerIO, Recorded
from cio_webhooks.policies import (
    DEFAULT_RULES,
    POLICY_HTTP,
    Policies,
    PolicyConfig,
    Rule,
    dedupe_id,
    load_policies,
    render,
)
from cio_webhooks.settings import Settings
from cio_webhooks.store import IN_FLIGHT_LEASE, Verdict
from cio_webhooks.store.sqlite import SQLiteLedger, SQLiteStore
from cio_webhooks.testing import FixedClock, make_event, signed_request

from .conftest import KEY, NOW
from .test_server import BIN, Server

TRACK_KEY = "track-secret-5f1c"
DAY = 86400


@dataclass
class Pipeline:
    """Receiver + inbox + dispatcher with policies; the Track API is the fake."""

    client: httpx2.AsyncClient
    inbox: SQLiteStore
    dispatcher: Dispatcher
    policies: Policies
    fake: FakeCustomerIO
    clock: FixedClock

    @property
    def ledger(self) -> SQLiteLedger:
        ledger = self.policies.ledger
        assert isinstance(ledger, SQLiteLedger)
        return ledger

    async def post(self, event: dict[str, Any]) -> int:
        body, headers = signed_request(event, key=KEY, timestamp=int(self.clock()))
        response = await self.client.post("/webhooks/customerio", content=body, headers=headers)
        return response.status_code

    async def drain(self) -> None:
        """Run every handler that is due now (retries are due later: advance the clock)."""
        while await self.dispatcher.run_once():
            pass

    async def state(self, event_id: str) -> JobState:
        stored = await self.inbox.get_event(event_id)
        assert stored is not None
        return stored.state


def settings_for(tmp_path: Path, fake: FakeCustomerIO, **more: Any) -> Settings:
    return Settings(
        store=sqlite_store(tmp_path / "inbox.db"),
        warehouse=tmp_path / "warehouse.db",
        signing_keys=(KEY,),
        retry=RetryPolicy(max_attempts=5, base=10),
        track_site_id="site",
        track_api_key=TRACK_KEY,
        track_url=fake.track_url,
        **more,
    )


def write(tmp_path: Path, text: str, name: str = "policies.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@contextlib.asynccontextmanager
async def pipeline(settings: Settings, fake: FakeCustomerIO) -> AsyncIterator[Pipeline]:
    clock = FixedClock(float(NOW))
    policies = build_policies(settings, clock=clock)
    assert policies is not None
    inbox = SQLiteStore(settings.store.path or Path())
    await inbox.open()
    dispatcher = Dispatcher(
        inbox, policies.router(), retry=settings.retry, clock=clock, rng=random.Random(0)
    )
    app = create_app(
        inbox,
        settings.signing_keys,
        clock=clock,
        router=dispatcher.router,
        metrics=MetricSources(policies.metric_lines),
    )
    try:
        async with httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app), base_url="http://t"
        ) as client:
            yield Pipeline(client, inbox, dispatcher, policies, fake, clock)
    finally:
        await policies.close()
        await inbox.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeCustomerIO]:
    async with FakeCustomerIO(site_id="site", track_key=TRACK_KEY) as server:
        yield server


@pytest.fixture
async def defaults(tmp_path: Path, fake: FakeCustomerIO) -> AsyncIterator[Pipeline]:
    """The default policy set: Track credentials, no policy file."""
    async with pipeline(settings_for(tmp_path, fake), fake) as p:
        yield p


def spam(event_id: str, person: str = "42") -> dict[str, Any]:
    return make_event(event_id, "email", "spammed", person_id=person, timestamp=NOW)


def bounce(event_id: str, person: str = "42", at: int = NOW) -> dict[str, Any]:
    return make_event(
        event_id,
        "email",
        "bounced",
        person_id=person,
        timestamp=at,
        failure_message="550 5.1.1 no such user",
    )


# -- the default rules, end to end -----------------------------------------------------


async def test_spam_complaint_becomes_one_unsubscribe(defaults: Pipeline) -> None:
    assert await defaults.post(spam("s1")) == 200
    await defaults.drain()
    [call] = defaults.fake.calls()
    assert (call.method, call.path) == ("PUT", "/api/v1/customers/42")
    assert call.body == {
        "unsubscribed": True,
        "spam_complaint_at": NOW,
        "spam_complaint_campaign_id": "12",
    }
    assert defaults.fake.people["42"]["unsubscribed"] is True
    [action] = await defaults.ledger.recent()
    assert (action.event_id, action.rule, action.status, action.person) == (
        "s1",
        "spam-complaint-unsubscribe",
        "ok",
        "42",
    )
    assert action.dry_run == 0
    assert json.loads(action.request) == {
        "action": "unsubscribe",
        "person": "42",
        "attributes": {"spam_complaint_at": NOW, "spam_complaint_campaign_id": "12"},
    }
    assert await defaults.state("s1") is JobState.DONE


async def test_a_bounce_marks_the_person(defaults: Pipeline) -> None:
    await defaults.post(bounce("b1"))
    await defaults.drain()
    [call] = defaults.fake.calls()
    assert call.body == {
        "email_bounced": True,
        "email_bounced_at": NOW,
        "email_bounced_reason": "550 5.1.1 no such user",
    }


async def test_an_event_delivered_twice_calls_customerio_once(defaults: Pipeline) -> None:
    assert await defaults.post(spam("s1")) == 200
    await defaults.drain()
    assert await defaults.post(spam("s1")) == 200  # Customer.io retried after a lost 2xx
    await defaults.drain()
    assert len(defaults.fake.calls()) == 1
    assert len(await defaults.ledger.recent()) == 1


async def test_a_failed_call_is_retried_by_the_dispatcher_and_succeeds_once(
    defaults: Pipeline,
) -> None:
    # Every in-call retry fails too (Retry-After 0: no waiting), so the handler fails
    # and the event goes back to the inbox with a retry time.
    defaults.fake.fail_next(1 + POLICY_HTTP["max_retries"], status=503, retry_after=0)
    await defaults.post(bounce("b1"))
    await defaults.drain()
    assert await defaults.state("b1") is JobState.RETRYING
    assert defaults.fake.calls() == []
    assert {r.status for r in defaults.fake.requests} == {503}

    defaults.clock.advance(60)
    await defaults.drain()
    assert await defaults.state("b1") is JobState.DONE
    [ok] = defaults.fake.calls()
    assert ok.body["email_bounced"] is True
    statuses = [a.status for a in await defaults.ledger.recent(event_id="b1")]
    assert statuses == ["ok", "failed"]  # newest first
    [failed] = await defaults.ledger.recent(status="failed")
    assert "HTTP 503 after 3 attempt(s)" in (failed.detail or "")
    # what `alerts prometheus-rules`' track_failures counts
    metrics = (await defaults.client.get("/metrics")).text
    series = "cio_webhooks_policy_actions_total"
    assert f'{series}{{rule="bounce-mark",status="failed"}} 1\n' in metrics
    assert f'{series}{{rule="bounce-mark",status="ok"}} 1\n' in metrics


async def test_a_passing_hiccup_is_retried_within_the_call(defaults: Pipeline) -> None:
    defaults.fake.fail_next(1, status=429, retry_after=0)
    await defaults.post(spam("s1"))
    await defaults.drain()
    assert [r.status for r in defaults.fake.requests] == [429, 200]
    assert await defaults.state("s1") is JobState.DONE
    assert [a.status for a in await defaults.ledger.recent()] == ["ok"]


async def test_a_replay_does_not_repeat_a_call_that_went_through(defaults: Pipeline) -> None:
    await defaults.post(spam("s1"))
    await defaults.drain()
    await defaults.inbox.requeue(EventFilter(kinds=("*",)), now=defaults.clock(), rerun="*")
    await defaults.drain()
    assert await defaults.state("s1") is JobState.DONE
    assert len(defaults.fake.calls()) == 1


async def test_the_third_bounce_within_the_window_unsubscribes_once(defaults: Pipeline) -> None:
    for i, at in enumerate([NOW - 20 * DAY, NOW - 10 * DAY, NOW, NOW + DAY]):
        await defaults.post(bounce(f"b{i}", at=at))
        await defaults.drain()
    unsubscribes = [c for c in defaults.fake.calls() if c.body.get("unsubscribed")]
    assert len(unsubscribes) == 1
    assert len(defaults.fake.calls()) == 4 + 1  # one bounce mark per bounce, one unsubscribe
    [acted] = [a for a in await defaults.ledger.recent() if a.rule.startswith("repeated")]
    assert acted.event_id == "b2"


async def test_bounces_outside_the_window_do_not_count(defaults: Pipeline) -> None:
    for i, at in enumerate([NOW - 90 * DAY, NOW - 60 * DAY, NOW]):
        await defaults.post(bounce(f"b{i}", at=at))
        await defaults.drain()
    assert not [c for c in defaults.fake.calls() if c.body.get("unsubscribed")]


async def test_threshold_counts_survive_a_restart(tmp_path: Path, fake: FakeCustomerIO) -> None:
    settings = settings_for(tmp_path, fake)
    async with pipeline(settings, fake) as first:
        await first.post(bounce("b1", at=NOW - DAY))
        await first.post(bounce("b2", at=NOW - DAY + 60))
        await first.drain()
    async with pipeline(settings, fake) as second:  # a new process: same files
        await second.post(bounce("b3"))
        await second.drain()
    assert len([c for c in fake.calls() if c.body.get("unsubscribed")]) == 1


def unsubscribes(fake: FakeCustomerIO) -> list[Recorded]:
    return [c for c in fake.calls() if c.body.get("unsubscribed")]


async def test_bounces_arriving_newest_first_unsubscribe_once(defaults: Pipeline) -> None:
    for i, at in enumerate([NOW, NOW - 10 * DAY, NOW - 20 * DAY, NOW - 25 * DAY]):
        await defaults.post(bounce(f"b{i}", at=at))
        await defaults.drain()
    assert len(unsubscribes(defaults.fake)) == 1
    [acted] = [a for a in await defaults.ledger.recent() if a.rule.startswith("repeated")]
    assert acted.event_id == "b2"  # the third hit inside the window, whichever it is


async def test_four_bounces_in_one_batch_unsubscribe_once(defaults: Pipeline) -> None:
    for i in range(4):  # handled concurrently by one dispatcher batch
        await defaults.post(bounce(f"b{i}", at=NOW - i * DAY))
    await defaults.drain()
    assert len(unsubscribes(defaults.fake)) == 1
    assert len(defaults.fake.calls()) == 4 + 1


async def test_a_replay_a_month_later_does_not_act_again(defaults: Pipeline) -> None:
    for i in range(4):
        await defaults.post(bounce(f"b{i}", at=NOW - i * DAY))
        await defaults.drain()
    defaults.clock.advance(31 * DAY)
    await defaults.inbox.requeue(EventFilter(kinds=("*",)), now=defaults.clock(), rerun="*")
    await defaults.drain()
    assert len(unsubscribes(defaults.fake)) == 1
    assert len(defaults.fake.calls()) == 4 + 1


async def test_a_read_only_log_never_migrates_or_writes(tmp_path: Path) -> None:
    path = tmp_path / "actions.db"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript(OLD_SCHEMA)
    before = path.read_bytes()
    log = SQLiteLedger(path, read_only=True)
    assert await log.recent() == []
    await log.close()
    assert path.read_bytes() == before


RACE = """
import asyncio, sys
from cio_webhooks.store import ActionInFlight, Verdict, Window
from cio_webhooks.store.sqlite import SQLiteLedger

async def main():
    log = SQLiteLedger(sys.argv[1])
    start = float(sys.argv[2])
    acted = 0
    for i in [int(x) for x in sys.argv[3].split(",")]:
        try:
            verdict = await log.reserve(
                rule="r", event_id=f"b{i}", person="42", dry_run=False, now=start,
                threshold=Window(count=3, within=30 * 86400), occurred_at=start + i * 3600,
            )
        except ActionInFlight:
            continue
        if verdict is Verdict.ACT:
            acted += 1
            await log.finish(
                rule="r", event_id=f"b{i}", person="42", action="unsubscribe", request={},
                status="ok", detail=None, dry_run=False, at=start,
            )
    print(acted)

asyncio.run(main())
"""


def test_two_processes_on_one_file_act_once(tmp_path: Path) -> None:
    path = str(tmp_path / "actions.db")
    SQLiteLedger(path)  # nothing is created until first use: the processes race on creating it
    orders = ["0,1,2,3,4,5,6,7", "7,6,5,4,3,2,1,0", "3,5,1,7,0,2,4,6"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, path, str(NOW), order], stdout=subprocess.PIPE, text=True
        )
        for order in orders
    ]
    counts = [int(proc.communicate(timeout=60)[0]) for proc in procs]
    assert sum(counts) == 1


async def test_backfilled_events_never_reach_a_policy(defaults: Pipeline) -> None:
    """Defence in depth: even a dispatcher that hands one over gets no action."""
    for body in (spam("s1"), bounce("b1")):
        event = parse_event(json.dumps(body).encode(), backfilled=True)
        for rule in DEFAULT_RULES:
            await defaults.policies.apply(rule, event)
    assert defaults.fake.requests == []
    assert await defaults.ledger.recent() == []


OLD_SCHEMA = """
CREATE TABLE actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, created_at REAL NOT NULL, event_id TEXT NOT NULL,
    rule TEXT NOT NULL, person TEXT, action TEXT NOT NULL, request TEXT NOT NULL,
    status TEXT NOT NULL, detail TEXT, dry_run INTEGER NOT NULL
);
CREATE INDEX actions_event ON actions (event_id, rule);
CREATE INDEX actions_person ON actions (rule, person, created_at);
CREATE TABLE rule_hits (
    rule TEXT NOT NULL, person TEXT NOT NULL, event_id TEXT NOT NULL,
    occurred_at REAL NOT NULL, PRIMARY KEY (rule, event_id)
);
CREATE INDEX rule_hits_person ON rule_hits (rule, person, occurred_at);
"""


async def test_an_audit_file_of_the_first_release_is_migrated(
    tmp_path: Path, fake: FakeCustomerIO
) -> None:
    """What the old file says was done stays done: no repeat, no second unsubscribe."""
    path = tmp_path / "actions.db"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript(OLD_SCHEMA)
        rule = "repeated-bounces-unsubscribe"
        for i in range(3):
            db.execute("INSERT INTO rule_hits VALUES (?, '42', ?, ?)", (rule, f"b{i}", NOW + i))
            db.execute(
                "INSERT INTO actions (created_at, event_id, rule, person, action, request,"
                " status, dry_run) VALUES (?, ?, 'bounce-mark', '42', 'identify', '{}', 'ok', 0)",
                (NOW, f"b{i}"),
            )
        db.execute(
            "INSERT INTO actions (created_at, event_id, rule, person, action, request, status,"
            " dry_run) VALUES (?, 'b2', ?, '42', 'unsubscribe', '{}', 'ok', 0)",
            (NOW, rule),
        )
    async with pipeline(settings_for(tmp_path, fake), fake) as p:
        for i in range(4):  # three replays and one new bounce in the same window
            await p.post(bounce(f"b{i}", at=NOW + i))
        await p.drain()
        assert await p.ledger.decision(rule, "b2") == "ok"
        assert len(await p.ledger.recent()) == 4 + 1
    assert [c.body for c in fake.calls()] == [
        {"email_bounced": True, "email_bounced_at": NOW + 3, "email_bounced_reason": ANY}
    ]
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (2,)


async def test_an_event_without_a_person_is_skipped_not_retried(defaults: Pipeline) -> None:
    event = spam("anon")
    event["data"]["identifiers"] = {"id": None, "email": None, "cio_id": None}
    event["data"]["customer_id"] = ""
    await defaults.post(event)
    await defaults.drain()
    assert defaults.fake.requests == []
    [action] = await defaults.ledger.recent()
    assert action.status == "skipped"
    assert await defaults.state("anon") is JobState.DONE


async def test_a_person_known_only_by_cio_id_or_email(defaults: Pipeline) -> None:
    by_cio = spam("c1")
    by_cio["data"]["identifiers"] = {"id": None, "email": "ada@example.com", "cio_id": "a1b2"}
    by_cio["data"]["customer_id"] = None
    by_email = spam("e1")
    by_email["data"]["identifiers"] = {"id": None, "email": "ada+x@example.com", "cio_id": None}
    by_email["data"]["customer_id"] = None
    for event in (by_cio, by_email):
        await defaults.post(event)
    await defaults.drain()
    assert sorted(c.raw_path for c in defaults.fake.calls()) == [
        "/api/v1/customers/ada%2Bx%40example.com",
        "/api/v1/customers/cio_a1b2",
    ]


# -- custom rules ----------------------------------------------------------------------

TWO_RULES = """
[[rule]]
name = "mark"
on = ["email.bounced"]
action = "identify"
attributes = { last_bounce = "{failure_message}" }

[[rule]]
name = "bounce-event"
on = ["email.bounced"]
action = "track"
event_name = "email_bounced"
attributes = { reason = "{failure_message}", campaign = "{campaign_id}", at = "{timestamp}" }
"""


async def test_after_a_partial_failure_only_the_failed_rule_calls_again(
    tmp_path: Path, fake: FakeCustomerIO
) -> None:
    settings = settings_for(tmp_path, fake, policies=write(tmp_path, TWO_RULES))
    async with pipeline(settings, fake) as p:
        fake.fail_next(3, status=500, retry_after=0, path="/api/v1/customers/42/events")
        await p.post(bounce("b1"))
        await p.drain()
        assert await p.state("b1") is JobState.RETRYING
        assert [c.path for c in fake.calls()] == ["/api/v1/customers/42"]

        p.clock.advance(60)
        await p.drain()
        # Even a replay of every handler does not call the rule that went through again.
        await p.inbox.requeue(EventFilter(kinds=("*",)), now=p.clock(), rerun="*")
        await p.drain()
    assert [c.path for c in fake.calls()] == [
        "/api/v1/customers/42",
        "/api/v1/customers/42/events",
    ]
    event = fake.calls("POST")[0].body
    assert event == {
        "name": "email_bounced",
        "data": {"reason": "550 5.1.1 no such user", "campaign": "12", "at": NOW},
        "id": dedupe_id(parse_event(json.dumps(bounce("b1")).encode()), "bounce-event"),
    }
    assert fake.people == {"42": {"last_bounce": "550 5.1.1 no such user"}}


def dead_owner() -> str:
    """The owner name of a process that has exited (as after a SIGKILL)."""
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    return f"{socket.gethostname()}:{gone.pid}:killed"


async def test_a_call_left_in_flight_by_a_dead_process_is_repeated_once(
    tmp_path: Path, fake: FakeCustomerIO
) -> None:
    """The window exactly-once cannot close: the call went through, the process died
    before marking it.  The next attempt repeats that call only, and the repeated
    track call carries the same ULID ``id``, so Customer.io counts it once."""
    settings = settings_for(tmp_path, fake, policies=write(tmp_path, TWO_RULES))
    async with pipeline(settings, fake) as p:
        await p.post(bounce("b1"))
        await p.drain()
        with sqlite3.connect(tmp_path / "actions.db") as db:
            db.execute(
                "UPDATE decisions SET state = 'in_flight', owner = ?, lease_until = ?"
                " WHERE rule = 'bounce-event'",
                (dead_owner(), NOW + 3600),
            )
        await p.inbox.requeue(EventFilter(kinds=("*",)), now=p.clock(), rerun="*")
        await p.drain()
        assert await p.ledger.decision("bounce-event", "b1") == "ok"
    assert len(fake.calls("PUT")) == 1  # the settled rule is not repeated
    assert len(fake.calls("POST")) == 2  # sent twice ...
    assert len(fake.tracked_events) == 1  # ... counted once


async def test_a_call_in_flight_in_a_live_process_is_waited_for(
    tmp_path: Path, fake: FakeCustomerIO
) -> None:
    settings = settings_for(tmp_path, fake, policies=write(tmp_path, TWO_RULES))
    other = SQLiteLedger(tmp_path / "actions.db")  # another worker on the same file
    assert (
        await other.reserve(rule="mark", event_id="b1", person="42", dry_run=False, now=NOW)
        is Verdict.ACT
    )
    async with pipeline(settings, fake) as p:
        await p.post(bounce("b1"))
        await p.drain()
        assert await p.state("b1") is JobState.RETRYING  # the other call may still succeed
        assert [c.path for c in fake.calls()] == ["/api/v1/customers/42/events"]
        p.clock.advance(IN_FLIGHT_LEASE + 1)  # it never finished: its lease runs out
        await p.drain()
        assert await p.state("b1") is JobState.DONE
    assert len(fake.calls("PUT")) == 1
    await other.close()


def test_dedupe_ids_are_stable_ulids() -> None:
    event = parse_event(json.dumps(bounce("b1")).encode())
    other = parse_event(json.dumps(bounce("b2")).encode())
    ulid = dedupe_id(event, "r")
    assert ulid == dedupe_id(event, "r")
    assert len({ulid, dedupe_id(event, "s"), dedupe_id(other, "r")}) == 3
    assert len(ulid) == 26
    assert set(ulid) <= set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
    assert ulid[0] <= "7"  # 128 bits
    assert ulid[:10] == dedupe_id(other, "r")[:10]  # same time part: both occurred at NOW


# -- dry run ---------------------------------------------------------------------------


async def test_dry_run_records_and_calls_nothing(tmp_path: Path, fake: FakeCustomerIO) -> None:
    async with pipeline(settings_for(tmp_path, fake, dry_run=True), fake) as p:
        await p.post(spam("s1"))
        await p.drain()
        assert fake.requests == []
        [action] = await p.ledger.recent()
        assert (action.status, action.dry_run) == ("dry_run", 1)
        assert json.loads(action.request)["attributes"]["spam_complaint_campaign_id"] == "12"
        assert await p.state("s1") is JobState.DONE


async def test_dry_run_needs_no_credentials(tmp_path: Path, fake: FakeCustomerIO) -> None:
    settings = Settings(
        store=sqlite_store(tmp_path / "inbox.db"),
        warehouse=tmp_path / "warehouse.db",
        signing_keys=(KEY,),
        policies=write(tmp_path, "dry_run = true\n" + TWO_RULES),
    )
    async with pipeline(settings, fake) as p:
        assert p.policies.track is None
        await p.post(bounce("b1"))
        await p.drain()
        assert sorted(a.status for a in await p.ledger.recent()) == ["dry_run", "dry_run"]


async def test_a_dry_run_does_not_count_as_done_when_going_live(
    tmp_path: Path, fake: FakeCustomerIO
) -> None:
    async with pipeline(settings_for(tmp_path, fake, dry_run=True), fake) as trial:
        await trial.post(spam("s1"))
        await trial.drain()
    assert fake.requests == []
    async with pipeline(settings_for(tmp_path, fake), fake) as live:
        await live.inbox.requeue(EventFilter(kinds=("*",)), now=live.clock(), rerun="*")
        await live.drain()
        assert len(fake.calls()) == 1
        assert [a.status for a in await live.ledger.recent()] == ["ok", "dry_run"]


async def test_a_single_rule_can_be_dry_run(tmp_path: Path, fake: FakeCustomerIO) -> None:
    text = TWO_RULES.replace('name = "bounce-event"', 'name = "bounce-event"\ndry_run = true')
    settings = settings_for(tmp_path, fake, policies=write(tmp_path, text))
    async with pipeline(settings, fake) as p:
        await p.post(bounce("b1"))
        await p.drain()
        assert [c.method for c in fake.calls()] == ["PUT"]
        rows = {a.rule: a.status for a in await p.ledger.recent()}
        assert rows == {"mark": "ok", "bounce-event": "dry_run"}


# -- suppress: permanent deletion, only when spelled out ------------------------------

SUPPRESS = '[[rule]]\nname = "delete"\non = ["*.spammed"]\naction = "suppress"\n'


def test_suppress_is_refused_without_the_confirmation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PERMANENTLY DELETES") as caught:
        load_policies(write(tmp_path, SUPPRESS))
    assert "confirm_deletes_person = true" in str(caught.value)
    with pytest.raises(ConfigError, match="PERMANENTLY DELETES"):
        Rule(on=("*.spammed",), action="suppress")
    with pytest.raises(ConfigError, match="true or false"):
        load_policies(write(tmp_path, SUPPRESS + 'confirm_deletes_person = "yes"\n'))


def test_no_default_rule_deletes_anyone() -> None:
    assert all(rule.action != "suppress" for rule in DEFAULT_RULES)


async def test_a_confirmed_suppress_deletes_the_person(
    tmp_path: Path, fake: FakeCustomerIO
) -> None:
    text = SUPPRESS + "confirm_deletes_person = true\n"
    settings = settings_for(tmp_path, fake, policies=write(tmp_path, text))
    async with pipeline(settings, fake) as p:
        fake.people["ada@example.com"] = {"plan": "pro"}
        await p.post(spam("s1", person="ada@example.com"))
        await p.drain()
    [call] = fake.calls()
    assert (call.method, call.path) == ("POST", "/api/v1/customers/ada@example.com/suppress")
    assert fake.people == {}
    assert fake.suppressed == {"ada@example.com"}


def test_serve_refuses_to_start_with_an_unconfirmed_suppress(tmp_path: Path) -> None:
    policies = write(tmp_path, SUPPRESS)
    result = subprocess.run(
        [str(BIN), "serve", "--data-dir", str(tmp_path / "data"), "--policies", str(policies)],
        capture_output=True,
        text=True,
        timeout=30,
        env={
            **os.environ,
            "CIO_WEBHOOKS_SIGNING_KEYS": KEY,
            "CIO_WEBHOOKS_TRACK_SITE_ID": "site",
            "CIO_WEBHOOKS_TRACK_API_KEY": TRACK_KEY,
        },
    )
    assert result.returncode == 2
    assert "PERMANENTLY DELETES" in result.stderr
    assert TRACK_KEY not in result.stderr + result.stdout


# -- secrets ---------------------------------------------------------------------------


async def test_a_refused_key_is_not_written_anywhere(tmp_path: Path, fake: FakeCustomerIO) -> None:
    settings = replace(settings_for(tmp_path, fake), track_api_key="wrong-key-9d2e")
    async with pipeline(settings, fake) as p:
        await p.post(spam("s1"))
        await p.drain()
        stored = await p.inbox.get_event("s1")
        assert stored is not None
        assert stored.state is JobState.RETRYING
        assert "HTTP 401" in (stored.last_error or "")
        assert "wrong-key-9d2e" not in (stored.last_error or "")
        [failed] = await p.ledger.recent()
        assert failed.status == "failed"
        assert (failed.detail or "").startswith(CustomerIOAuthError.__name__)
    files = list(tmp_path.glob("*.db*"))  # the databases and their WAL files
    assert {f.name for f in files} >= {"actions.db", "inbox.db"}
    for path in files:
        assert b"wrong-key-9d2e" not in path.read_bytes()
    assert "wrong-key-9d2e" not in repr(settings)


# -- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[rule]]\non=['*.spammed']\naction='explode'\n", "'action' must be one of"),
        ("[[rule]]\non=[]\naction='identify'\n", "'on' must list"),
        ("[[rule]]\non=['a.b.c']\naction='identify'\n", "bad event pattern"),
        ("[[rule]]\non=['*']\naction='track'\n", "needs event_name"),
        ("[[rule]]\non=['*']\naction='identify'\ncolour=1\n", "unknown key"),
        ("[[rule]]\non=['*']\naction='identify'\nattributes={a='{nope}'}\n", "unknown field"),
        ("[[rule]]\non=['*']\naction='unsuppress'\nattributes={a=1}\n", "takes no attributes"),
        (
            "[[rule]]\non=['*']\naction='unsubscribe'\nattributes={unsubscribed=false}\n",
            "sets unsubscribed itself",
        ),
        (
            "[[rule]]\non=['*']\naction='identify'\nthreshold={count=0,within_days=1}\n",
            "must be positive",
        ),
        # A threshold must say exactly what it does: 2.7 or true were read as 2 and 1
        # (unsubscribe on the first bounce), nan made the rule never fire.
        (
            "[[rule]]\non=['*']\naction='identify'\nthreshold={count=2.7,within_days=1}\n",
            "count must be a whole number",
        ),
        (
            "[[rule]]\non=['*']\naction='identify'\nthreshold={count=true,within_days=1}\n",
            "count must be a whole number",
        ),
        (
            "[[rule]]\non=['*']\naction='identify'\nthreshold={count=3,within_days=nan}\n",
            "within_days must be a number",
        ),
        (
            "[[rule]]\non=['*']\naction='identify'\n"
            "threshold={count=3,within_days=30,per='campaign'}\n",
            "exactly count and within_days",
        ),
        ("[[rule]]\non=['*']\naction='identify'\nthreshold=3\n", "exactly count and within_days"),
        ("[[rule]]\non=['*']\naction='identify'\n" * 2, "two rules are named 'identify@\\*'"),
        ("dryrun = true\n", "unknown key"),
        ("[[rule", "policies"),
    ],
)
def test_bad_policy_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_policies(write(tmp_path, text))


def test_a_rule_without_a_name_is_named_after_what_it_does(tmp_path: Path) -> None:
    text = "[[rule]]\non = ['*.spammed', 'email.bounced']\naction = 'unsubscribe'\n"
    [rule] = load_policies(write(tmp_path, text)).rules
    assert rule.name == "unsubscribe@*.spammed,email.bounced"


def test_defaults_only_with_track_credentials(tmp_path: Path) -> None:
    base = Settings(store=sqlite_store(tmp_path / "inbox.db"), warehouse=tmp_path / "wh.db")
    assert build_policies(base) is None
    check_storage(base)
    assert not (tmp_path / "actions.db").exists()  # no policies, no audit file

    with_creds = replace(base, track_site_id="s", track_api_key="k", region="eu", track_rate=20)
    policies = build_policies(with_creds)
    assert policies is not None
    assert policies.config.rules == DEFAULT_RULES
    assert policies.track is not None
    assert policies.track.http.base_url == TRACK_URLS["eu"]
    assert policies.track.http.max_retries == POLICY_HTTP["max_retries"]
    assert policies.track.http.limiter.interval == pytest.approx(1 / 20)
    assert isinstance(policies.ledger, SQLiteLedger)
    assert policies.ledger.path == tmp_path / "actions.db"

    file_only = replace(
        base, policies=write(tmp_path, "[[rule]]\nname='a'\non=['*']\naction='identify'\n")
    )
    with pytest.raises(ConfigError, match="Track API credentials"):
        build_policies(file_only)


def test_templates_fill_event_fields_and_keep_types() -> None:
    fields = {"occurred_at": "2023-11-14T22:13:20.000Z", "machine": True, "subject": None}
    assert render("{occurred_at}", fields) == "2023-11-14T22:13:20.000Z"
    assert render("{machine}", fields) is True
    assert render("{subject}", fields) is None
    assert render("at {occurred_at} ({subject})", fields) == "at 2023-11-14T22:13:20.000Z ()"
    assert render({"a": ["{machine}", 7]}, fields) == {"a": [True, 7]}
    assert render(7, fields) == 7


# -- the service, as a process --------------------------------------------------------


async def test_served_process_unsubscribes_a_spam_complaint_once(tmp_path: Path) -> None:
    """End to end: `cio-webhooks serve` as a subprocess, Track credentials in its env."""
    data = tmp_path / "data"
    async with FakeCustomerIO(site_id="site", track_key=TRACK_KEY) as fake:
        srv = Server(
            data,
            env={
                "CIO_WEBHOOKS_TRACK_SITE_ID": "site",
                "CIO_WEBHOOKS_TRACK_API_KEY": TRACK_KEY,
                "CIO_WEBHOOKS_TRACK_URL": fake.track_url,
            },
        )
        await asyncio.to_thread(srv.start)
        try:
            body, headers = signed_request(spam("served-1"), key=KEY)
            async with aiohttp.ClientSession() as session:
                for _ in range(2):  # delivered twice
                    async with session.post(srv.url, data=body, headers=headers) as response:
                        assert response.status == 200
            for _ in range(200):
                if fake.calls("PUT"):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # room for a wrong second call to show up
        finally:
            _, err = await asyncio.to_thread(srv.stop)
        assert [c.path for c in fake.calls("GET")] == ["/api/v1/accounts/region"]
        [call] = fake.calls("PUT")
        assert call.path == "/api/v1/customers/42"
        assert call.body["unsubscribed"] is True
        assert TRACK_KEY not in err

    def actions(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN), "actions", "list", "--data-dir", str(data), *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "COLUMNS": "200"},
        )

    listed = actions("--json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["event_id"], row["status"], row["dry_run"]) == ("served-1", "ok", False)
    assert row["request"]["attributes"]["spam_complaint_at"] == NOW
    table = actions("--event-id", "served-1")
    assert "spam-complaint-unsubscribe" in table.stdout
    assert json.loads(actions("--status", "failed", "--json").stdout) == []
    assert TRACK_KEY not in listed.stdout + table.stdout


def inbox_states(data: Path) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(data / "inbox.db")) as db:
        return dict(db.execute("SELECT event_id, state FROM events").fetchall())


async def test_sigterm_lets_track_calls_in_flight_finish(tmp_path: Path) -> None:
    """A graceful restart while Track calls are stalled: each event gets one call."""
    data = tmp_path / "data"
    ids = [f"term-{i}" for i in range(12)]
    async with FakeCustomerIO(site_id="site", track_key=TRACK_KEY) as fake:
        env = {
            "CIO_WEBHOOKS_TRACK_SITE_ID": "site",
            "CIO_WEBHOOKS_TRACK_API_KEY": TRACK_KEY,
            "CIO_WEBHOOKS_TRACK_URL": fake.track_url,
            "CIO_WEBHOOKS_RETRY_BASE": "1",
        }
        srv = Server(data, env=env)
        await asyncio.to_thread(srv.start)
        fake.delay = 1.0  # every Track answer stalls: SIGTERM lands mid-call
        try:
            async with aiohttp.ClientSession() as session:
                for i, event_id in enumerate(ids):
                    body, headers = signed_request(spam(event_id, person=f"p{i}"), key=KEY)
                    async with session.post(srv.url, data=body, headers=headers) as response:
                        assert response.status == 200
            while fake.in_flight == 0:
                await asyncio.sleep(0.01)
        finally:
            code, first_err = await asyncio.to_thread(srv.stop)
        assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
        fake.delay = 0.0
        srv = Server(data, env=env, port=srv.port)
        await asyncio.to_thread(srv.start)
        try:
            for _ in range(600):
                if set(inbox_states(data).values()) == {"done"}:
                    break
                await asyncio.sleep(0.05)
        finally:
            _, second_err = await asyncio.to_thread(srv.stop)
        assert set(inbox_states(data).values()) == {"done"}
        calls = [c.path for c in fake.requests if c.method == "PUT"]
        assert sorted(calls) == sorted(f"/api/v1/customers/p{i}" for i in range(len(ids)))
    assert "Session is closed" not in first_err + second_err
    with contextlib.closing(sqlite3.connect(data / "actions.db")) as db:
        details = [row[0] or "" for row in db.execute("SELECT detail FROM actions")]
        assert db.execute("SELECT DISTINCT status FROM actions").fetchall() == [("ok",)]
    assert not [d for d in details if "Session is closed" in d]


async def test_a_handler_that_never_ends_is_cancelled_after_the_drain_timeout(
    tmp_path: Path, fake: FakeCustomerIO
) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def stuck(event: Event) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    policies = build_policies(settings_for(tmp_path, fake))
    assert policies is not None
    router = policies.router()
    router.add(stuck, "email.spammed", name="stuck")  # runs after the policy
    async with pipeline(settings_for(tmp_path, fake), fake) as p:
        await p.post(spam("s1"))
        dispatcher = Dispatcher(p.inbox, router, clock=p.clock, drain_timeout=0.2)
        stop = asyncio.Event()
        running = asyncio.create_task(dispatch_then_close(dispatcher, policies, stop))
        await started.wait()
        stop.set()
        await running
        assert cancelled.is_set()
        assert await p.state("s1") is JobState.PENDING  # claimed: retried after its lease
    assert len(unsubscribes(fake)) == 1  # the policy beside it finished before the close


async def test_served_process_checks_the_track_credentials_and_still_starts(
    tmp_path: Path,
) -> None:
    async with FakeCustomerIO(site_id="site", track_key=TRACK_KEY) as fake:
        srv = Server(
            tmp_path / "data",
            env={
                "CIO_WEBHOOKS_TRACK_SITE_ID": "site",
                "CIO_WEBHOOKS_TRACK_API_KEY": "a-wrong-key-9d2e",
                "CIO_WEBHOOKS_TRACK_URL": fake.track_url,
            },
        )
        await asyncio.to_thread(srv.start)
        try:
            while not fake.requests:
                await asyncio.sleep(0.02)
            async with aiohttp.ClientSession() as session:
                body, headers = signed_request(make_event("d1"), key=KEY)
                async with session.post(srv.url, data=body, headers=headers) as response:
                    assert response.status == 200  # the service runs on
        finally:
            _, err = await asyncio.to_thread(srv.stop)
    [check] = fake.requests
    assert (check.method, check.path, check.status) == ("GET", "/api/v1/accounts/region", 401)
    assert "event=track_credentials_refused" in err
    assert "a-wrong-key-9d2e" not in err


async def test_good_credentials_pass_the_check(fake: FakeCustomerIO) -> None:
    async with TrackClient("site", TRACK_KEY, base_url=fake.track_url) as track:
        assert await check_track_credentials(track, "us") is True
        assert await check_track_credentials(track, "eu") is False  # the other region


@pytest.mark.parametrize(
    ("given", "missing"),
    [({"track_site_id": "site"}, "--track-api-key"), ({"track_api_key": "k"}, "--track-site-id")],
)
def test_half_the_track_credentials_is_said_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, given: dict[str, str], missing: str
) -> None:
    base = Settings(store=sqlite_store(tmp_path / "inbox.db"), warehouse=tmp_path / "w.db", **given)  # type: ignore[arg-type]
    with caplog.at_level("WARNING", logger="cio_webhooks.service"):
        assert build_policies(base) is None
    assert f"event=track_credentials_incomplete missing={missing}" in caplog.text
    live = replace(base, policies=write(tmp_path, TWO_RULES))
    with pytest.raises(ConfigError, match=f"{missing} is not set"):
        build_policies(live)
    caplog.clear()
    with caplog.at_level("WARNING", logger="cio_webhooks.service"):
        assert build_policies(replace(live, dry_run=True)) is not None
    assert f"missing={missing}" in caplog.text


def test_actions_list_without_an_audit_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN), "actions", "list", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "no actions recorded" in result.stderr


async def test_policies_refuse_live_rules_without_a_client(tmp_path: Path) -> None:
    log = SQLiteLedger(tmp_path / "actions.db")
    with pytest.raises(ConfigError, match="credentials"):
        Policies(PolicyConfig(DEFAULT_RULES), log, None)
    track = TrackClient("s", "k")
    policies = Policies(PolicyConfig(DEFAULT_RULES, dry_run=True), log, track)
    assert [r.name for r in policies.router().routes] == [
        "policy:spam-complaint-unsubscribe",
        "policy:bounce-mark",
        "policy:repeated-bounces-unsubscribe",
    ]
    await policies.close()


async def test_a_call_whose_audit_row_could_not_be_written_is_not_made_again(
    defaults: Pipeline,
) -> None:
    # Customer.io took the unsubscribe, then the audit write failed (a full disk, say):
    # the retry must record it, not call a second time.
    [rule] = [r for r in DEFAULT_RULES if r.action == "unsubscribe" and r.threshold is None]
    event = parse_event(json.dumps(spam("s1")).encode())
    assert await defaults.ledger.recent() == []  # the audit file and its tables exist
    with sqlite3.connect(defaults.ledger.path) as db:
        db.execute(
            "CREATE TRIGGER audit_fails BEFORE INSERT ON actions"
            " BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    with pytest.raises(sqlite3.DatabaseError, match="disk full"):
        await defaults.policies.apply(rule, event)
    assert len(unsubscribes(defaults.fake)) == 1
    with sqlite3.connect(defaults.ledger.path) as db:
        db.execute("DROP TRIGGER audit_fails")
    await defaults.policies.apply(rule, event)  # the dispatcher's retry
    assert len(unsubscribes(defaults.fake)) == 1
    assert await defaults.ledger.decision(rule.name, "s1") == "ok"
    [row] = await defaults.ledger.recent()
    assert (row.event_id, row.status) == ("s1", "ok")
