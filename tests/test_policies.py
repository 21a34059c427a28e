"""Policies through the real pipeline: signed POST -> inbox -> dispatcher -> fake Track API."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import pytest

from cio_webhooks import ConfigError, Dispatcher, JobState, RetryPolicy, SQLiteInbox, create_app
from cio_webhooks._service import Settings, build_policies
from cio_webhooks.customerio import TrackClient
from cio_webhooks.customerio.fake import FakeCustomerIO
from cio_webhooks.policies import (
    DEFAULT_RULES,
    ActionLog,
    Policies,
    PolicyConfig,
    Rule,
    load_policies,
    render,
)
from cio_webhooks.testing import FixedClock, make_event, signed_request

from .conftest import KEY, NOW
from .test_server import BIN, Server


async def no_sleep(_: float) -> None:
    return None


@dataclass
class Pipeline:
    """Receiver + inbox + dispatcher with policies, the Track API being the fake."""

    client: httpx2.AsyncClient
    inbox: SQLiteInbox
    dispatcher: Dispatcher
    log: ActionLog
    fake: FakeCustomerIO
    clock: FixedClock

    async def post(self, event: dict[str, Any]) -> int:
        body, headers = signed_request(event, key=KEY, timestamp=int(self.clock()))
        response = await self.client.post("/webhooks/customerio", content=body, headers=headers)
        return response.status_code

    async def drain(self) -> None:
        while await self.dispatcher.run_once():
            pass


@pytest.fixture
async def fake() -> AsyncIterator[FakeCustomerIO]:
    async with FakeCustomerIO(site_id="site", track_key="track-secret") as server:
        yield server


def pipeline_factory(tmp_path: Path, fake: FakeCustomerIO):  # type: ignore[no-untyped-def]
    async def make(
        rules: tuple[Rule, ...] = DEFAULT_RULES, *, dry_run: bool = False
    ) -> AsyncIterator[Pipeline]:
        clock = FixedClock(float(NOW))
        inbox = SQLiteInbox(tmp_path / "inbox.db")
        await inbox.open()
        track = TrackClient(
            "site", "track-secret", base_url=fake.track_url, sleep=no_sleep, max_retries=0
        )
        log = ActionLog(tmp_path / "actions.db")
        policies = Policies(PolicyConfig(rules, dry_run=dry_run), log, track, clock=clock)
        dispatcher = Dispatcher(
            inbox,
            policies.router(),
            clock=clock,
            rng=random.Random(0),
            retry=RetryPolicy(max_attempts=5, base=10),
        )
        app = create_app(inbox, [KEY], clock=clock)
        async with httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app), base_url="http://t"
        ) as client:
            yield Pipeline(client, inbox, dispatcher, log, fake, clock)
        await policies.close()
        await inbox.close()

    return make


@pytest.fixture
async def pipeline(tmp_path: Path, fake: FakeCustomerIO) -> AsyncIterator[Pipeline]:
    async for p in pipeline_factory(tmp_path, fake)():
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


async def test_spam_complaint_becomes_one_unsubscribe(pipeline: Pipeline) -> None:
    assert await pipeline.post(spam("s1")) == 200
    await pipeline.drain()
    [call] = pipeline.fake.calls()
    assert (call.method, call.path) == ("PUT", "/api/v1/customers/42")
    assert call.body == {
        "unsubscribed": True,
        "spam_complaint_at": "2023-11-14T22:13:20.000Z",
        "spam_complaint_campaign_id": "12",
    }
    [action] = await pipeline.log.recent()
    assert (action["rule"], action["status"], action["person"]) == (
        "spam-complaint-unsubscribe",
        "ok",
        "42",
    )


async def test_event_delivered_twice_calls_customerio_once(pipeline: Pipeline) -> None:
    assert await pipeline.post(spam("s1")) == 200
    await pipeline.drain()
    assert await pipeline.post(spam("s1")) == 200  # Customer.io retried after a lost 2xx
    await pipeline.drain()
    assert len(pipeline.fake.calls()) == 1


async def test_failed_call_is_retried_and_succeeds_once(pipeline: Pipeline) -> None:
    pipeline.fake.fail_next(1, status=503)
    await pipeline.post(bounce("b1"))
    await pipeline.drain()
    stored = await pipeline.inbox.get_event("b1")
    assert stored is not None
    assert stored.state is JobState.RETRYING
    assert [r.status for r in pipeline.fake.requests] == [503]
    pipeline.clock.advance(60)
    await pipeline.drain()
    stored = await pipeline.inbox.get_event("b1")
    assert stored is not None
    assert stored.state is JobState.DONE
    [ok] = pipeline.fake.calls()
    assert ok.body == {
        "email_bounced": True,
        "email_bounced_at": "2023-11-14T22:13:20.000Z",
        "email_bounce_reason": "550 5.1.1 no such user",
    }
    statuses = [a["status"] for a in await pipeline.log.recent(event_id="b1")]
    assert sorted(statuses) == ["failed", "ok"]


async def test_replay_does_not_repeat_a_call_that_went_through(pipeline: Pipeline) -> None:
    from cio_webhooks import EventFilter

    await pipeline.post(spam("s1"))
    await pipeline.drain()
    await pipeline.inbox.requeue(EventFilter(kinds=("*",)), now=pipeline.clock(), rerun="*")
    await pipeline.drain()
    assert len(pipeline.fake.calls()) == 1


async def test_third_bounce_within_the_window_unsubscribes_once(pipeline: Pipeline) -> None:
    day = 86400
    for i, at in enumerate([NOW - 20 * day, NOW - 10 * day, NOW, NOW + day]):
        await pipeline.post(bounce(f"b{i}", at=at))
        await pipeline.drain()
    unsubscribes = [c for c in pipeline.fake.calls() if c.body.get("unsubscribed")]
    assert len(unsubscribes) == 1
    assert len(pipeline.fake.calls()) == 4 + 1  # one bounce mark per bounce, one unsubscribe


async def test_bounces_outside_the_window_do_not_count(pipeline: Pipeline) -> None:
    day = 86400
    for i, at in enumerate([NOW - 90 * day, NOW - 60 * day, NOW]):
        await pipeline.post(bounce(f"b{i}", at=at))
        await pipeline.drain()
    assert not [c for c in pipeline.fake.calls() if c.body.get("unsubscribed")]


async def test_dry_run_records_and_calls_nothing(tmp_path: Path, fake: FakeCustomerIO) -> None:
    async for p in pipeline_factory(tmp_path, fake)(dry_run=True):
        await p.post(spam("s1"))
        await p.drain()
        assert fake.requests == []
        [action] = await p.log.recent()
        assert action["status"] == "dry_run"
        assert action["dry_run"] == 1
        assert json.loads(action["request"])["attributes"]["spam_complaint_campaign_id"] == "12"


async def test_event_without_a_person_is_skipped_not_retried(pipeline: Pipeline) -> None:
    event = spam("anon")
    event["data"]["identifiers"] = {"id": None, "email": None, "cio_id": None}
    event["data"]["customer_id"] = ""
    await pipeline.post(event)
    await pipeline.drain()
    assert pipeline.fake.requests == []
    [action] = await pipeline.log.recent()
    assert action["status"] == "skipped"
    stored = await pipeline.inbox.get_event("anon")
    assert stored is not None
    assert stored.state is JobState.DONE


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policies.toml"
    path.write_text(text)
    return path


def test_suppress_needs_explicit_confirmation(tmp_path: Path) -> None:
    text = '[[rule]]\nname = "x"\non = ["*.spammed"]\naction = "suppress"\n'
    with pytest.raises(ConfigError, match="permanently deletes"):
        load_policies(write(tmp_path, text))
    config = load_policies(write(tmp_path, text + "confirm_deletes_person = true\n"))
    assert config.rules[0].action == "suppress"


async def test_confirmed_suppress_calls_suppress(tmp_path: Path, fake: FakeCustomerIO) -> None:
    rule = Rule(name="delete", on=("*.spammed",), action="suppress", confirm_deletes_person=True)
    async for p in pipeline_factory(tmp_path, fake)((rule,)):
        await p.post(spam("s1", person="ada@example.com"))
        await p.drain()
        [call] = fake.calls()
        assert (call.method, call.path) == ("POST", "/api/v1/customers/ada@example.com/suppress")


def test_no_default_rule_deletes_anyone() -> None:
    assert all(rule.action != "suppress" for rule in DEFAULT_RULES)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[rule]]\nname='a'\non=['*.spammed']\naction='explode'\n", "'action' must be one of"),
        ("[[rule]]\nname='a'\non=[]\naction='identify'\n", "'on' must list"),
        ("[[rule]]\nname='a'\non=['a.b.c']\naction='identify'\n", "bad event pattern"),
        ("[[rule]]\nname='a'\non=['*']\naction='track'\n", "needs event_name"),
        ("[[rule]]\nname='a'\non=['*']\naction='identify'\ncolour=1\n", "unknown key"),
        (
            "[[rule]]\nname='a'\non=['*']\naction='identify'\nthreshold={count=0,within_days=1}\n",
            "must be positive",
        ),
        ("[[rule", "policies"),
    ],
)
def test_bad_policy_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_policies(write(tmp_path, text))


def test_defaults_only_with_track_credentials(tmp_path: Path) -> None:
    base = Settings(db=tmp_path / "inbox.db", warehouse=tmp_path / "wh.db")
    assert build_policies(base) is None
    with_creds = Settings(
        db=tmp_path / "inbox.db", warehouse=tmp_path / "wh.db", track_site_id="s", track_api_key="k"
    )
    policies = build_policies(with_creds)
    assert policies is not None
    assert policies.config.rules == DEFAULT_RULES
    file_only = Settings(
        db=tmp_path / "inbox.db",
        warehouse=tmp_path / "wh.db",
        policies=write(tmp_path, "[[rule]]\nname='a'\non=['*']\naction='identify'\n"),
    )
    with pytest.raises(ConfigError, match="Track API credentials"):
        build_policies(file_only)


def test_templates_fill_event_fields_and_keep_types() -> None:
    fields = {"occurred_at": "2023-11-14T22:13:20.000Z", "machine": True, "subject": None}
    assert render("{occurred_at}", fields) == "2023-11-14T22:13:20.000Z"
    assert render("{machine}", fields) is True
    assert render("at {occurred_at} ({subject})", fields) == "at 2023-11-14T22:13:20.000Z ()"
    assert render(7, fields) == 7
    assert render("{__class__}", fields) == ""  # only event fields, no attribute access


async def test_served_process_unsubscribes_a_spam_complaint(tmp_path: Path) -> None:
    """End to end: `cio-webhooks serve` as a subprocess with Track credentials in env."""
    async with FakeCustomerIO(site_id="site", track_key="track-secret") as fake:
        srv = Server(
            tmp_path / "data",
            env={
                "CIO_WEBHOOKS_TRACK_SITE_ID": "site",
                "CIO_WEBHOOKS_TRACK_API_KEY": "track-secret",
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
                if fake.calls():
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
        finally:
            _, err = await asyncio.to_thread(srv.stop)
        [call] = fake.calls()
        assert call.path == "/api/v1/customers/42"
        assert call.body["unsubscribed"] is True
        assert "track-secret" not in err
    listed = subprocess.run(
        [str(BIN), "actions", "list", "--data-dir", str(tmp_path / "data"), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ},
    )
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert row["event_id"] == "served-1"
    assert row["status"] == "ok"
