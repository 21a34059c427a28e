"""The embedded warehouse: one normalised row per event, idempotent, batched, cursor-driven."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from cio_webhooks import SQLiteInbox, parse_event
from cio_webhooks.events import NORMALISED_FIELDS
from cio_webhooks.sinks import SQLiteWarehouse, WarehouseLoader
from cio_webhooks.testing import FixedClock, make_event

from .conftest import NOW, sample_files


def rows(path: Path) -> list[dict[str, object]]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM events ORDER BY received_at, event_id")]


async def test_every_event_lands_once_with_normalised_columns(
    inbox: SQLiteInbox, tmp_path: Path, clock: FixedClock
) -> None:
    for i, path in enumerate(sample_files()):
        await inbox.put(parse_event(path.read_bytes(), received_at=NOW + i))
    warehouse = SQLiteWarehouse(tmp_path / "warehouse.db")
    loader = WarehouseLoader(inbox, warehouse, batch_size=5, clock=clock)
    stored = (await inbox.stats())["events"]
    moved = 0
    while step := await loader.run_once():
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


async def test_reloading_from_an_old_cursor_does_not_duplicate_rows(
    inbox: SQLiteInbox, tmp_path: Path, clock: FixedClock
) -> None:
    for i in range(30):
        await inbox.put(parse_event(json.dumps(make_event(f"e{i}")).encode(), received_at=NOW))
    warehouse = SQLiteWarehouse(tmp_path / "warehouse.db")
    loader = WarehouseLoader(inbox, warehouse, batch_size=1000, clock=clock)
    assert await loader.run_once() == 30
    # A crash between a write and its cursor is simulated by writing the batch again.
    again = [parse_event(json.dumps(make_event(f"e{i}")).encode()) for i in range(30)]
    await warehouse.write(again, cursor=30, loaded_at=NOW)
    assert await loader.run_once() == 0
    assert len(rows(tmp_path / "warehouse.db")) == 30
    await warehouse.close()


async def test_loader_picks_up_where_it_left_off_after_restart(
    inbox: SQLiteInbox, tmp_path: Path, clock: FixedClock
) -> None:
    path = tmp_path / "warehouse.db"
    await inbox.put(parse_event(json.dumps(make_event("a")).encode(), received_at=NOW))
    first = SQLiteWarehouse(path)
    assert await WarehouseLoader(inbox, first, clock=clock).run_once() == 1
    await first.close()
    await inbox.put(parse_event(json.dumps(make_event("b")).encode(), received_at=NOW + 1))
    second = SQLiteWarehouse(path)
    assert await second.cursor() == 1
    assert await WarehouseLoader(inbox, second, clock=clock).run_once() == 1
    assert [r["event_id"] for r in rows(path)] == ["a", "b"]
    await second.close()


async def test_lag_columns_are_iso_timestamps(
    inbox: SQLiteInbox, tmp_path: Path, clock: FixedClock
) -> None:
    await inbox.put(parse_event(json.dumps(make_event("a")).encode(), received_at=NOW))
    clock.advance(1.25)
    warehouse = SQLiteWarehouse(tmp_path / "warehouse.db")
    await WarehouseLoader(inbox, warehouse, clock=clock).run_once()
    [row] = rows(tmp_path / "warehouse.db")
    assert row["received_at"] == "2023-11-14T22:13:20.000Z"
    assert row["loaded_at"] == "2023-11-14T22:13:21.250Z"
    assert row["occurred_at"] == "2023-11-14T22:13:20.000Z"
    await warehouse.close()
