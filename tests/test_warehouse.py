"""The embedded warehouse: one normalised row per event, idempotent, batched, cursor-driven."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from cio_webhooks import StoreUnavailable, normalise, parse_event
from cio_webhooks.events import NORMALISED_FIELDS
from cio_webhooks.sinks import SQLiteWarehouse
from cio_webhooks.store.sqlite import SQLiteStore
from cio_webhooks.testing import FixedClock, make_event

from .conftest import NOW, sample_files


def rows(path: Path) -> list[dict[str, object]]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM events ORDER BY received_at, event_id")]


def warehouse_for(
    inbox: SQLiteStore, tmp_path: Path, clock: FixedClock, **kw: int
) -> SQLiteWarehouse:
    return SQLiteWarehouse(tmp_path / "warehouse.db", inbox=inbox.path, clock=clock, **kw)


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
