"""``store copy`` and ``migrate``, end to end on real stores (SQLite to SQLite, and
SQLite to the real PostgreSQL): the copy then works with ``stats``, ``dlq list`` and
``actions list``, a worker finishes its pending events, and policies do not act twice on
decisions that were copied."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cio_webhooks import Dispatcher, EventFilter, JobState, RetryPolicy, Router, parse_event
from cio_webhooks._service import build_policies, open_service_store
from cio_webhooks.cli import main
from cio_webhooks.customerio.fake import FakeCustomerIO
from cio_webhooks.settings import Settings
from cio_webhooks.store import Store, open_store, parse_store_url
from cio_webhooks.testing import FixedClock, make_event

from ..conftest import KEY, NOW


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[Store]:
    """The store ``url`` names, opened (and migrated), as ``serve`` opens it."""
    store = open_store(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    """The command in a thread: it runs its own event loop."""
    return await asyncio.to_thread(
        CliRunner().invoke, main, list(args), env=env, catch_exceptions=False
    )


def settings(url: str, data: Path, fake: FakeCustomerIO) -> Settings:
    return Settings(
        store=parse_store_url(url),
        warehouse=data / "warehouse.db",
        signing_keys=(KEY,),
        track_site_id="site",
        track_api_key="track-key",
        track_url=fake.track_url,
        retry=RetryPolicy(max_attempts=1),
    )


def event_body(event_id: str, object_type: str = "email", metric: str = "spammed") -> bytes:
    return json.dumps(make_event(event_id, object_type, metric)).encode()


async def run_worker_once(config: Settings, clock: FixedClock, extra: Router | None = None) -> None:
    """What ``worker`` runs, until nothing is due: the policies (and ``extra``) on the store."""
    store = open_service_store(config)
    await store.open()
    policies = build_policies(config, ledger=store.ledger(), clock=clock)
    assert policies is not None
    router = Router()
    if extra is not None:
        router.include(extra)
    router.include(policies.router())
    try:
        dispatcher = Dispatcher(store, router, clock=clock, retry=config.retry)
        while await dispatcher.run_once():
            pass
    finally:
        await policies.close()
        await store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_copy_moves_events_quarantine_and_ledger_and_the_copy_works(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    source = f"sqlite://{tmp_path / 'a' / 'inbox.db'}"
    target = (
        f"sqlite://{tmp_path / 'b' / 'inbox.db'}"
        if backend == "sqlite"
        else str(request.getfixturevalue("pg_url"))
    )
    clock = FixedClock(NOW + 100)
    async with FakeCustomerIO(site_id="site", track_key="track-key") as fake:
        # The source: a complaint the policies acted on, a dead letter, a pending event
        # and a quarantined body.
        async with opened(source) as store:
            await store.put(parse_event(event_body("spam1"), received_at=NOW))
            await store.put(parse_event(event_body("dead1", "sms", "failed"), received_at=NOW + 1))
            await store.quarantine(b"garbage", "body is not JSON", received_at=NOW)
        failing = Router()

        @failing.on("sms.failed", name="always_fails")
        def fail(event: object) -> None:
            raise ValueError("no route to host")

        await run_worker_once(settings(source, tmp_path / "a", fake), clock, failing)
        assert len(fake.calls()) == 1  # the complaint unsubscribed its person, once
        async with opened(source) as store:
            await store.put(parse_event(event_body("later", metric="delivered"), received_at=NOW))

        copied = await invoke("store", "copy", "--from", source, "--to", target)
        assert copied.exit_code == 0, copied.output
        assert "events 3 added (0 already there), quarantined 1 added" in copied.stdout
        assert "decisions 1" in copied.stdout
        assert "actions 1" in copied.stdout

        stats = await invoke("stats", "--json", "--store", target)
        assert stats.exit_code == 0, stats.output
        counts = json.loads(stats.stdout)
        assert counts["events"] == 3
        assert counts["quarantined"] == 1
        assert counts["states"]["done"] == 1
        assert counts["states"]["dead"] == 1
        assert counts["states"]["pending"] == 1
        dead = await invoke("dlq", "list", "--json", "--store", target)
        assert [row["event_id"] for row in json.loads(dead.stdout)] == ["dead1"]
        assert json.loads(dead.stdout)[0]["attempts"] == 1
        listed = await invoke("actions", "list", "--json", "--store", target)
        assert [row["event_id"] for row in json.loads(listed.stdout)] == ["spam1"]

        # Again: refused without --force; with it, nothing is added twice.
        again = await invoke("store", "copy", "--from", source, "--to", target)
        assert again.exit_code == 2
        assert "already holds 3 event(s): pass --force" in again.stderr
        forced = await invoke("store", "copy", "--from", source, "--to", target, "--force")
        assert forced.exit_code == 0, forced.output
        assert "events 0 added (3 already there), quarantined 0 added" in forced.stdout

        # A worker on the copy finishes its pending event; replayed, the complaint is
        # not acted on again: its decision came with the copy.
        await run_worker_once(settings(target, tmp_path / "b", fake), clock)
        async with opened(target) as store:
            later = await store.get_event("later")
            assert later is not None
            assert later.state is JobState.DONE
            assert (
                await store.requeue(EventFilter(event_ids=("spam1",)), now=clock(), rerun="*") == 1
            )
        await run_worker_once(settings(target, tmp_path / "b", fake), clock)
        async with opened(target) as store:
            spam = await store.get_event("spam1")
            assert spam is not None
            assert spam.state is JobState.DONE
        assert len(fake.calls()) == 1


async def test_copy_refuses_the_same_store_and_a_missing_source(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'inbox.db'}"
    for other in (url, f"sqlite:{os.path.relpath(tmp_path / 'x' / '..' / 'inbox.db')}"):
        same = await invoke("store", "copy", "--from", url, "--to", other)
        assert same.exit_code == 2
        assert "name the same store" in same.stderr
    missing = await invoke("store", "copy", "--from", url, "--to", f"sqlite://{tmp_path / 'b.db'}")
    assert missing.exit_code == 2
    assert f"no inbox at {tmp_path / 'inbox.db'}" in missing.stderr
    assert not (tmp_path / "b.db").exists()


async def test_migrate_creates_or_upgrades_a_store_and_says_its_version(tmp_path: Path) -> None:
    inbox = tmp_path / "new" / "inbox.db"
    done = await invoke("migrate", "--db", str(inbox))
    assert done.exit_code == 0, done.output
    assert done.stdout.strip().startswith(f"sqlite://{inbox}: schema version ")
    assert done.stdout.strip().split()[-1].isdigit()
    assert inbox.is_file()
    again = await invoke("migrate", env={"CIO_WEBHOOKS_STORE": f"sqlite://{inbox}"})
    assert again.stdout == done.stdout
