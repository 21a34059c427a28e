"""The embedded warehouse: one normalised row per event, idempotent, batched, cursor-driven."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cio_webhooks import StoreUnavailable, normalise, parse_event
from cio_webhooks.events import NORMALISED_FIELDS
from cio_webhooks.sinks import SQLiteWarehouse
from cio_webhooks.store import Store, open_store
from cio_webhooks.store.sqlite import SQLiteStore
from cio_webhooks.testing import FixedClock, make_event

from .conftest import NOW, sample_files


def rows(path: Path) -> list[dict[str, object]]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM events ORDER BY received_at, event_id")]


def warehouse_for(
    inbox: SQLiteStore, tmp_path: Path, clock: FixedClock, *, batch_size: int = 2000
) -> SQLiteWarehouse:
    return SQLiteWarehouse(
        tmp_path / "warehouse.db", inbox=inbox.path, clock=clock, batch_size=batch_size
    )


async def test_every_event_lands_once_with_normalised_columns(
    inbox: SQLiteStore, tmp_path: Path, clock: FixedClock
) -> None:
    for i, path in enumerate(sample_files()):
        await inbox.put(parse_event(path.read_bytes(), received_at=NOW + i))
    warehouse = warehouse_for(inbox, tmp_path, clock, batch_size=5)
    stored = (await inbox.stats()).events
    moved = 0
    while step := await warehouse.load():
        moved += step
    assert moved == stored
    landed = rows(tmp_path / "warehouse.db")
    assert len(landed) == stored
    assert set(landed[0]) == {*NORMALISED_FIELDS, "loaded_at"}
    bounce = next(r for r in landed if r["metric"] == "bounced")
    assert bounce["failure_message"] == "550 5.5.0 Requested action not taken: mailbox unavailable"
    assert bounce["newsletter_id"] == "736"
    assert bounce["person_id"] == "0200102"
    await warehouse.close()


EDGE_CASES = [
    {
        "event_id": "num-ids",
        "object_type": "email",
        "metric": "clicked",
        "timestamp": 5,
        "data": {
            "identifiers": {"id": 42, "cio_id": 7},
            "campaign_id": "9",
            "link_id": 3,
            "machine": True,
            "href": "https://x",
        },
    },
    {
        "event_id": "fallbacks",
        "object_type_type": "customer",
        "metric": "cio_subscription_preferences_changed",
        "data": {
            "identifiers": {"id": "", "email": None},
            "customer_id": "c1",
            "email_address": "a@example.com",
        },
    },
    {
        "event_id": "blank",
        "object_type": "email",
        "metric": "opened",
        "timestamp": None,
        "data": {
            "identifiers": {"id": None},
            "customer_id": "",
            "prefetched": False,
            "proxied": True,
            "synthetic": None,
        },
    },
    {"event_id": "no-data", "object_type": "sms", "metric": "sent"},
]


@pytest.mark.parametrize(
    "body",
    [p.read_bytes() for p in sample_files()] + [json.dumps(e).encode() for e in EDGE_CASES],
)
async def test_sql_normalisation_matches_python_normalise(
    inbox: SQLiteStore, tmp_path: Path, clock: FixedClock, body: bytes
) -> None:
    event = parse_event(body, received_at=NOW + 0.25)
    await inbox.put(event)
    warehouse = warehouse_for(inbox, tmp_path, clock)
    await warehouse.load()
    [row] = rows(tmp_path / "warehouse.db")
    row.pop("loaded_at")
    expected = {k: (int(v) if isinstance(v, bool) else v) for k, v in normalise(event).items()}
    assert row == expected
    await warehouse.close()


async def test_reloading_does_not_duplicate_rows(
    inbox: SQLiteStore, tmp_path: Path, clock: FixedClock
) -> None:
    for i in range(30):
        await inbox.put(parse_event(json.dumps(make_event(f"e{i}")).encode(), received_at=NOW))
    warehouse = warehouse_for(inbox, tmp_path, clock)
    assert await warehouse.load() == 30
    # A crash between rows and cursor is simulated by writing the batch again.
    again = [parse_event(json.dumps(make_event(f"e{i}")).encode()) for i in range(30)]
    await warehouse.write(again, cursor=0, loaded_at=NOW)
    assert await warehouse.load() == 30
    assert await warehouse.load() == 0
    assert len(rows(tmp_path / "warehouse.db")) == 30
    await warehouse.close()


async def test_picks_up_where_it_left_off_after_restart(
    inbox: SQLiteStore, tmp_path: Path, clock: FixedClock
) -> None:
    await inbox.put(parse_event(json.dumps(make_event("a")).encode(), received_at=NOW))
    first = warehouse_for(inbox, tmp_path, clock)
    assert await first.load() == 1
    await first.close()
    await inbox.put(parse_event(json.dumps(make_event("b")).encode(), received_at=NOW + 1))
    second = warehouse_for(inbox, tmp_path, clock)
    assert await second.cursor() == 1
    assert await second.load() == 1
    assert [r["event_id"] for r in rows(tmp_path / "warehouse.db")] == ["a", "b"]
    await second.close()


async def test_lag_columns_are_iso_timestamps(
    inbox: SQLiteStore, tmp_path: Path, clock: FixedClock
) -> None:
    await inbox.put(parse_event(json.dumps(make_event("a")).encode(), received_at=NOW))
    clock.advance(1.25)
    warehouse = warehouse_for(inbox, tmp_path, clock)
    await warehouse.load()
    [row] = rows(tmp_path / "warehouse.db")
    assert row["received_at"] == "2023-11-14T22:13:20.000Z"
    assert row["loaded_at"] == "2023-11-14T22:13:21.250Z"
    assert row["occurred_at"] == "2023-11-14T22:13:20.000Z"
    await warehouse.close()


async def test_loading_never_blocks_the_inbox_writer(
    inbox: SQLiteStore, tmp_path: Path, clock: FixedClock
) -> None:
    await inbox.put(parse_event(json.dumps(make_event("a")).encode(), received_at=NOW))
    warehouse = warehouse_for(inbox, tmp_path, clock)
    await warehouse.load()
    # The warehouse holds the inbox attached; the inbox must still take writes.
    await inbox.put(parse_event(json.dumps(make_event("b")).encode(), received_at=NOW))
    assert await warehouse.load() == 1
    await warehouse.close()


async def test_an_older_warehouse_gains_new_columns(
    inbox: SQLiteStore, tmp_path: Path, clock: FixedClock
) -> None:
    path = tmp_path / "warehouse.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE events (event_id TEXT PRIMARY KEY, metric TEXT)")
    await inbox.put(parse_event(json.dumps(make_event("a")).encode(), received_at=NOW))
    warehouse = SQLiteWarehouse(path, inbox=inbox.path, clock=clock)
    assert await warehouse.load() == 1
    await warehouse.close()
    [row] = rows(path)
    assert set(row) == {*NORMALISED_FIELDS, "loaded_at"}


async def test_a_reader_finds_every_received_metric_of_the_deliveries_asked_for(
    inbox: SQLiteStore, tmp_path: Path, clock: FixedClock
) -> None:
    for event_id, delivery, metric, backfilled in [
        ("e1", "d1", "sent", False),
        ("e2", "d2", "opened", False),
        ("backfill:d1:delivered", "d1", "delivered", True),
        ("e3", "other", "sent", False),
    ]:
        body = json.dumps(make_event(event_id, "email", metric, delivery_id=delivery)).encode()
        await inbox.put(parse_event(body, received_at=NOW, backfilled=backfilled))
    warehouse = warehouse_for(inbox, tmp_path, clock)
    await warehouse.load()
    await warehouse.close()
    before = (tmp_path / "warehouse.db").read_bytes()
    files = {p.name for p in tmp_path.iterdir()}

    reader = SQLiteWarehouse.reader(tmp_path / "warehouse.db")
    found = await reader.delivery_metrics(["d1", "d2", "never"])
    await reader.close()
    assert found == {("d1", "sent"), ("d1", "delivered"), ("d2", "opened")}
    assert (tmp_path / "warehouse.db").read_bytes() == before
    assert {p.name for p in tmp_path.iterdir()} == files  # no -wal or -shm left behind


async def test_a_reader_of_a_warehouse_never_loaded_finds_nothing(tmp_path: Path) -> None:
    (tmp_path / "warehouse.db").touch()  # what `serve --no-dispatch` leaves
    reader = SQLiteWarehouse.reader(tmp_path / "warehouse.db")
    assert await reader.delivery_metrics(["d1"]) == set()
    await reader.close()
    assert (tmp_path / "warehouse.db").read_bytes() == b""


async def test_a_reader_never_creates_a_warehouse(tmp_path: Path) -> None:
    reader = SQLiteWarehouse.reader(tmp_path / "nowhere.db")
    with pytest.raises(StoreUnavailable):
        await reader.delivery_metrics(["d1"])
    await reader.close()
    assert list(tmp_path.iterdir()) == []


# The generic path: any store, read through the contract (``source=``), no ATTACH.


@pytest.fixture(params=["sqlite", "postgresql"])
async def source(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A new store of each backend for the generic path: it exists for PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'inbox.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    store = open_store(url)
    await store.open()
    yield store
    await store.close()


def generic_for(
    inbox: Store, tmp_path: Path, clock: FixedClock, *, batch_size: int = 2000
) -> SQLiteWarehouse:
    """Forced onto the generic path: any store read through the contract."""
    return SQLiteWarehouse(
        tmp_path / "generic.db", source=inbox, clock=clock, batch_size=batch_size
    )


async def load_all(warehouse: SQLiteWarehouse) -> int:
    moved = 0
    while step := await warehouse.load():
        moved += step
    return moved


def test_a_warehouse_following_a_sqlite_store_takes_the_fast_path(
    inbox: SQLiteStore, tmp_path: Path
) -> None:
    warehouse = SQLiteWarehouse.following(tmp_path / "warehouse.db", inbox)
    assert warehouse.inbox == inbox.path.resolve()
    assert warehouse.source is inbox


async def test_a_warehouse_following_a_postgresql_store_takes_the_generic_path(
    pg_url: str, tmp_path: Path
) -> None:
    store = open_store(pg_url)
    warehouse = SQLiteWarehouse.following(tmp_path / "warehouse.db", store)
    assert warehouse.inbox is None
    assert warehouse.source is store


async def test_the_generic_path_gives_the_same_rows_as_the_fast_path(
    inbox: SQLiteStore, tmp_path: Path, clock: FixedClock
) -> None:
    bodies = [p.read_bytes() for p in sample_files()] + [json.dumps(e).encode() for e in EDGE_CASES]
    for i, body in enumerate(bodies):
        await inbox.put(parse_event(body, received_at=NOW + i + 0.125))
    backfill = json.dumps(make_event("backfill:d1:opened", metric="opened")).encode()
    await inbox.put(parse_event(backfill, received_at=NOW, backfilled=True))
    fast = warehouse_for(inbox, tmp_path, clock, batch_size=7)
    generic = generic_for(inbox, tmp_path, clock, batch_size=7)
    stored = (await inbox.stats()).events  # samples may share an event_id: stored once
    assert await load_all(fast) == await load_all(generic) == stored
    assert await fast.cursor() == await generic.cursor()
    await fast.close()
    await generic.close()
    fast_rows = rows(tmp_path / "warehouse.db")
    assert fast_rows == rows(tmp_path / "generic.db")  # every column, loaded_at included
    assert any(r["backfilled"] == 1 for r in fast_rows)


async def test_the_generic_path_resumes_from_its_cursor_after_a_restart(
    source: Store, tmp_path: Path, clock: FixedClock
) -> None:
    for i in range(5):
        await source.put(parse_event(json.dumps(make_event(f"a{i}")).encode(), received_at=NOW))
    first = generic_for(source, tmp_path, clock, batch_size=3)
    assert await first.load() == 3
    await first.close()  # stops mid-way
    for i in range(4):
        await source.put(parse_event(json.dumps(make_event(f"b{i}")).encode(), received_at=NOW))
    second = generic_for(source, tmp_path, clock, batch_size=3)
    assert await second.cursor() == 3
    assert await load_all(second) == 6
    await second.close()
    landed = [str(r["event_id"]) for r in rows(tmp_path / "generic.db")]
    assert sorted(landed) == sorted([f"a{i}" for i in range(5)] + [f"b{i}" for i in range(4)])


async def test_the_generic_path_skips_nothing_stored_while_it_loads(
    source: Store, tmp_path: Path, clock: FixedClock
) -> None:
    warehouse = generic_for(source, tmp_path, clock, batch_size=4)
    stored = asyncio.Event()
    total = 200

    async def receive() -> None:
        for i in range(total):
            body = json.dumps(make_event(f"e{i}")).encode()
            await source.put(parse_event(body, received_at=NOW + i))
            if i % 7 == 0:
                await asyncio.sleep(0)  # let the loader in between writes
        stored.set()

    async def follow() -> int:
        moved = 0
        while True:
            done = stored.is_set()  # read before the load: a later put is caught next round
            step = await warehouse.load()
            moved += step
            if not step and done:
                return moved
            await asyncio.sleep(0)

    _, moved = await asyncio.gather(receive(), follow())
    await warehouse.close()
    assert moved == total
    landed = [str(r["event_id"]) for r in rows(tmp_path / "generic.db")]
    assert sorted(landed) == sorted(f"e{i}" for i in range(total))  # each once


async def test_the_generic_path_skips_a_body_that_no_longer_parses_and_goes_on(
    source: Store, tmp_path: Path, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    good = parse_event(json.dumps(make_event("good-1")).encode(), received_at=NOW)
    await source.put(good)
    # As stored by an older version with looser checks: the routing columns are
    # there, the body is no event any more.
    await source.put(dataclasses.replace(good, event_id="old-1", raw=b"not json"))
    await source.put(parse_event(json.dumps(make_event("good-2")).encode(), received_at=NOW))
    warehouse = generic_for(source, tmp_path, clock)
    with caplog.at_level(logging.WARNING, logger="cio_webhooks.sinks"):
        assert await warehouse.load() == 3
    assert await warehouse.load() == 0  # past it: never stalls
    assert await warehouse.cursor() == 3
    await warehouse.close()
    assert [r["event_id"] for r in rows(tmp_path / "generic.db")] == ["good-1", "good-2"]
    assert "event=warehouse_skipped seq=2 event_id=old-1" in caplog.text


async def test_a_warehouse_with_neither_inbox_nor_source_cannot_load(tmp_path: Path) -> None:
    warehouse = SQLiteWarehouse(tmp_path / "warehouse.db")
    with pytest.raises(ValueError, match="inbox path or a source store"):
        await warehouse.load()
    await warehouse.close()
