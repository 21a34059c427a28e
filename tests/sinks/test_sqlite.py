"""The SQLite warehouse: its tables, views and old files, and the reader reconcile uses."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from cio_webhooks import StoreUnavailable, normalise, parse_event
from cio_webhooks.events import NORMALISED_FIELDS
from cio_webhooks.sinks import (
    CHANNEL_VIEWS,
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    SQLiteWarehouse,
    open_sink,
    parse_sink_url,
)
from cio_webhooks.testing import make_event

from ..conftest import NOW, sample_files
from ._data import batch, event, samples

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


def table(path: Path, name: str) -> list[dict[str, object]]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(f"SELECT * FROM {name} ORDER BY 1")]


@pytest.mark.parametrize(
    "body",
    [p.read_bytes() for p in sample_files()] + [json.dumps(e).encode() for e in EDGE_CASES],
)
async def test_a_row_holds_what_normalise_gives_and_the_raw_body(
    tmp_path: Path, body: bytes
) -> None:
    parsed = parse_event(body, received_at=NOW + 0.25)
    sink = SQLiteWarehouse(tmp_path / "warehouse.db")
    await sink.write(batch([parsed]))
    await sink.close()
    [row] = table(tmp_path / "warehouse.db", "events")
    assert row.pop("raw") == body.decode()
    assert row.pop("loaded_at") == "2023-11-14T22:14:20.000Z"
    expected = {k: (int(v) if isinstance(v, bool) else v) for k, v in normalise(parsed).items()}
    assert row == expected


async def test_the_tables_have_every_column_and_the_channel_views_select_their_own(
    tmp_path: Path,
) -> None:
    sink = SQLiteWarehouse(tmp_path / "warehouse.db")
    events = samples()
    await sink.write(batch(events))
    await sink.close()
    path = tmp_path / "warehouse.db"
    assert set(table(path, "events")[0]) == {c.name for c in EVENT_COLUMNS}
    assert set(table(path, "deliveries")[0]) == {c.name for c in DELIVERY_COLUMNS}
    for view, object_type in CHANNEL_VIEWS.items():
        rows = table(path, view)
        assert {r["object_type"] for r in rows} <= {object_type}
        assert len(rows) == len({e.event_id for e in events if e.object_type == object_type})


async def test_a_prefix_names_every_table_and_view(tmp_path: Path) -> None:
    url = parse_sink_url(f"sqlite://{tmp_path}/w.db?table_prefix=cio_&name=mine")
    sink = open_sink(url)
    assert (sink.name, sink.url) == ("mine", f"sqlite://{tmp_path}/w.db")
    await sink.open()
    await sink.close()
    with sqlite3.connect(tmp_path / "w.db") as db:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    assert {"cio_events", "cio_deliveries", "cio_email_event", "cio_whatsapp_event"} <= names
    assert "events" not in names


async def test_an_older_warehouse_gains_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE events (event_id TEXT PRIMARY KEY, metric TEXT)")
        db.execute("CREATE TABLE loader_state (id INTEGER PRIMARY KEY, inbox_seq INTEGER)")
    sink = SQLiteWarehouse(path)
    await sink.write(batch([event("a", "sent", NOW)]))
    await sink.close()
    [row] = table(path, "events")
    assert set(row) == {*NORMALISED_FIELDS, "raw", "loaded_at"}


async def test_personal_data_options_apply_to_the_rows(tmp_path: Path) -> None:
    url = parse_sink_url(f"sqlite://{tmp_path}/w.db?email=drop&raw=drop")
    sink = open_sink(url)
    await sink.write(batch([event("a", "sent", NOW)], privacy=sink.privacy))
    await sink.close()
    [row] = table(tmp_path / "w.db", "events")
    assert (row["email"], row["recipient"], row["raw"]) == (None, None, None)
    [delivery] = table(tmp_path / "w.db", "deliveries")
    assert (delivery["email"], delivery["recipient"]) == (None, None)


async def test_a_reader_finds_every_received_metric_of_the_deliveries_asked_for(
    tmp_path: Path,
) -> None:
    events = [
        parse_event(
            json.dumps(make_event(event_id, "email", metric, delivery_id=delivery)).encode(),
            received_at=NOW,
            backfilled=backfilled,
        )
        for event_id, delivery, metric, backfilled in [
            ("e1", "d1", "sent", False),
            ("e2", "d2", "opened", False),
            ("backfill:d1:delivered", "d1", "delivered", True),
            ("e3", "other", "sent", False),
        ]
    ]
    sink = SQLiteWarehouse(tmp_path / "warehouse.db")
    await sink.write(batch(events))
    await sink.close()
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
