"""Reconcile against the fake App API: find exactly the events never posted, backfill them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cio_webhooks import Dispatcher, Event, JobState, Router, parse_event
from cio_webhooks.cli import main
from cio_webhooks.customerio import AppClient
from cio_webhooks.customerio.fake import FakeCustomerIO
from cio_webhooks.reconcile import COMPARED_METRICS, reconcile
from cio_webhooks.reports import delivery_report
from cio_webhooks.sinks import Loader, SQLiteWarehouse
from cio_webhooks.store.sqlite import SQLiteStore
from cio_webhooks.testing import FixedClock, make_event

T0 = 1_700_000_000


async def no_sleep(_: float) -> None:
    return None


def delivery(n: int, **metrics: int) -> dict[str, Any]:
    return {
        "id": f"dlv-{n}",
        "type": "email",
        "campaign_id": 7,
        "action_id": 3,
        "customer_id": f"p{n}",
        "customer_identifiers": {"id": f"p{n}", "email": None, "cio_id": None},
        "recipient": f"p{n}@example.com",
        "subject": "Hi",
        "created": T0,
        "metrics": metrics,
    }


DELIVERIES = [
    delivery(1, sent=T0, delivered=T0 + 5, opened=T0 + 60),
    delivery(2, sent=T0, delivered=T0 + 5),
    delivery(3, sent=T0, bounced=T0 + 9, drafted=T0 - 5),  # drafted is not compared
]
# What Customer.io actually managed to post to us: dlv-1 opened and dlv-3 bounced never came,
# and we hold a clicked for dlv-2 that the API does not report.
POSTED = [
    ("dlv-1", "sent"),
    ("dlv-1", "delivered"),
    ("dlv-2", "sent"),
    ("dlv-2", "delivered"),
    ("dlv-2", "clicked"),
    ("dlv-3", "sent"),
]


@pytest.fixture
async def fake() -> AsyncIterator[FakeCustomerIO]:
    async with FakeCustomerIO(app_key="app-secret", page_size=2) as server:
        server.messages = [dict(d) for d in DELIVERIES]
        yield server


@pytest.fixture
async def inbox(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "inbox.db")
    await store.open()
    for i, (dlv, metric) in enumerate(POSTED):
        payload = make_event(
            f"real-{i}", "email", metric, timestamp=T0, delivery_id=dlv, campaign_id=7
        )
        await store.put(parse_event(json.dumps(payload).encode(), received_at=T0))
    yield store
    await store.close()


@pytest.fixture
async def app_api(fake: FakeCustomerIO) -> AsyncIterator[AppClient]:
    client = AppClient("app-secret", base_url=fake.app_url, sleep=no_sleep)
    yield client
    await client.close()


async def test_finds_exactly_the_missing_and_extra_events(
    app_api: AppClient, inbox: SQLiteStore
) -> None:
    result = await reconcile(app_api, inbox, since=T0 - 3600, now=T0 + 3600)
    assert result.deliveries == 3
    assert sorted((d.delivery_id, d.metric) for d in result.missing) == [
        ("dlv-1", "opened"),
        ("dlv-3", "bounced"),
    ]
    assert [(d.delivery_id, d.metric) for d in result.extra] == [("dlv-2", "clicked")]
    assert result.backfilled == 0
    assert (await inbox.stats()).events == len(POSTED)


async def test_backfill_stores_them_once_and_a_second_run_finds_nothing(
    app_api: AppClient, inbox: SQLiteStore, tmp_path: Path
) -> None:
    first = await reconcile(app_api, inbox, since=T0 - 3600, now=T0 + 3600, backfill=True)
    assert first.backfilled == 2
    stored = await inbox.get_event("backfill:dlv-3:bounced")
    assert stored is not None
    assert stored.backfilled
    assert stored.state is JobState.DONE
    event = parse_event(stored.body)
    assert (event.kind, event.timestamp, event.person_id) == ("email.bounced", T0 + 9, "p3")
    assert event.data.campaign_id == 7

    second = await reconcile(app_api, inbox, since=T0 - 3600, now=T0 + 7200, backfill=True)
    assert second.missing == []
    assert second.backfilled == 0

    # They reach the warehouse and the report, marked as backfilled.
    warehouse = SQLiteWarehouse(tmp_path / "warehouse.db")
    await Loader(inbox, [warehouse]).catch_up()
    await warehouse.close()
    [row] = delivery_report(tmp_path / "warehouse.db", by="campaign")
    assert (row.sent, row.delivered, row.opened, row.bounced) == (3, 2, 1, 1)


async def test_backfilled_events_do_not_run_policies_again(
    app_api: AppClient, inbox: SQLiteStore
) -> None:
    calls: Counter[str] = Counter()
    router = Router()

    @router.on("*", name="policy:count")
    async def count(event: Event) -> None:
        calls[event.event_id] += 1

    dispatcher = Dispatcher(inbox, router, clock=FixedClock(T0 + 10), rng=random.Random(0))
    while await dispatcher.run_once():
        pass
    assert sum(calls.values()) == len(POSTED)
    await reconcile(app_api, inbox, since=T0 - 3600, now=T0 + 3600, backfill=True)
    assert await dispatcher.run_once() == 0
    assert sum(calls.values()) == len(POSTED)


async def received_everything_then_pruned(tmp_path: Path) -> SQLiteStore:
    """An inbox that got every event ``DELIVERIES`` lists (dlv-1's open from a
    prefetcher), handed them to the warehouse, then pruned them all: the state a
    ``--dedupe-days 30`` inbox is in when ``reconcile --since 60d`` looks back."""
    inbox = SQLiteStore(tmp_path / "inbox.db")
    await inbox.open()
    for d in DELIVERIES:
        for metric, at in d["metrics"].items():
            if metric in COMPARED_METRICS:
                payload = make_event(
                    f"real-{d['id']}-{metric}",
                    "email",
                    metric,
                    timestamp=at,
                    delivery_id=d["id"],
                    campaign_id=7,
                    prefetched=metric == "opened",
                )
                await inbox.put(parse_event(json.dumps(payload).encode(), received_at=T0))
    dispatcher = Dispatcher(inbox, Router(), clock=FixedClock(T0 + 10), rng=random.Random(0))
    while await dispatcher.run_once():
        pass
    await load_warehouse(tmp_path, inbox)
    assert await inbox.prune(received_before=T0 + 1) == 7
    return inbox


async def load_warehouse(tmp_path: Path, inbox: SQLiteStore) -> int:
    """Load all the inbox holds into the warehouse next to it; the warehouse's row count."""
    warehouse = SQLiteWarehouse(tmp_path / "warehouse.db")
    await Loader(inbox, [warehouse]).catch_up()
    await warehouse.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "warehouse.db")) as db:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


async def test_backfill_never_copies_what_the_inbox_pruned(
    app_api: AppClient, tmp_path: Path
) -> None:
    inbox = await received_everything_then_pruned(tmp_path)
    try:
        warehouse = SQLiteWarehouse.reader(tmp_path / "warehouse.db")
        result = await reconcile(
            app_api,
            inbox,
            since=T0 - 3600,
            now=T0 + 40 * 86400,
            backfill=True,
            warehouse=warehouse,
        )
        await warehouse.close()
        assert (result.missing, result.extra, result.backfilled) == ([], [], 0)
        assert await load_warehouse(tmp_path, inbox) == 7
    finally:
        await inbox.close()
    [row] = delivery_report(tmp_path / "warehouse.db")
    assert (row.sent, row.opened, row.machine_opened) == (3, 0, 1)


async def invoke(*args: str) -> Result:
    # The CLI runs its own event loop; the fake serves from this one.
    return await asyncio.to_thread(CliRunner().invoke, main, list(args))


async def test_cli_reconcile_json_then_backfill(
    fake: FakeCustomerIO, inbox: SQLiteStore, tmp_path: Path
) -> None:
    common = ["--data-dir", str(tmp_path), "--app-url", fake.app_url, "--since", str(T0 - 3600)]
    result = await invoke("reconcile", *common, "--json", "--app-api-key", "app-secret")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [m["metric"] for m in report["missing"]] == ["opened", "bounced"]
    result = await invoke("reconcile", *common, "--backfill", "--app-api-key", "app-secret")
    assert result.exit_code == 0, result.output
    assert "2 missing event(s), 1 extra, 2 backfilled" in result.stdout
    wrong = await invoke("reconcile", *common, "--app-api-key", "not-the-key")
    assert wrong.exit_code == 1
    assert "HTTP 401" in wrong.stderr
    assert "not-the-key" not in wrong.stderr
    missing_key = await invoke("reconcile", *common)
    assert missing_key.exit_code == 2
    assert "App API key" in missing_key.stderr


async def test_cli_backfill_after_the_inbox_pruned_adds_nothing(
    fake: FakeCustomerIO, tmp_path: Path
) -> None:
    inbox = await received_everything_then_pruned(tmp_path)
    common = ["--data-dir", str(tmp_path), "--app-url", fake.app_url, "--app-api-key", "app-secret"]
    try:
        result = await invoke("reconcile", *common, "--since", str(T0 - 3600), "--backfill")
        assert result.exit_code == 0, result.output
        assert "0 missing event(s), 0 extra, 0 backfilled" in result.stdout
        assert await load_warehouse(tmp_path, inbox) == 7
    finally:
        await inbox.close()
    [row] = delivery_report(tmp_path / "warehouse.db")
    assert (row.opened, row.machine_opened) == (0, 1)


async def test_report_compare_api(fake: FakeCustomerIO, inbox: SQLiteStore, tmp_path: Path) -> None:
    fake.campaign_series["7"] = {"sent": [2, 1], "delivered": [2, 0], "opened": [1, 0]}
    warehouse = SQLiteWarehouse(tmp_path / "warehouse.db")
    await Loader(inbox, [warehouse]).catch_up()
    await warehouse.close()
    result = await invoke(
        "report",
        "--data-dir",
        str(tmp_path),
        "--compare-api",
        "--json",
        "--app-url",
        fake.app_url,
        "--app-api-key",
        "app-secret",
    )
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert (row["group"], row["sent"], row["api_sent"], row["api_delivered"]) == ("7", 3, 3, 2)
