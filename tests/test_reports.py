"""Delivery reports: unique deliveries, human vs machine, rates, groupings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cio_webhooks import parse_event
from cio_webhooks.cli import main
from cio_webhooks.reports import delivery_report
from cio_webhooks.sinks import SQLiteWarehouse
from cio_webhooks.testing import make_event

DAY = 86400
T0 = 1_700_000_000  # 2023-11-14


def ev(
    n: int,
    metric: str,
    delivery: str,
    *,
    campaign: int | None = 1,
    at: int = T0,
    object_type: str = "email",
    **data: Any,
) -> bytes:
    payload = make_event(f"e{n}", object_type, metric, timestamp=at, delivery_id=delivery, **data)
    payload["data"]["campaign_id"] = campaign
    return json.dumps(payload).encode()


EVENTS = [
    # campaign 1, delivery a: sent, delivered, opened 3x (one by a human), clicked by a machine
    ev(1, "sent", "a"),
    ev(2, "delivered", "a"),
    ev(3, "opened", "a", prefetched=True),
    ev(4, "opened", "a"),
    ev(5, "opened", "a"),
    ev(6, "clicked", "a", machine=True),
    # delivery b: opened only by a proxy, opened BEFORE delivered (order is not guaranteed)
    ev(7, "opened", "b", proxied=True),
    ev(8, "delivered", "b"),
    ev(9, "sent", "b"),
    ev(10, "clicked", "b"),
    ev(11, "clicked", "b"),
    # delivery c: bounced
    ev(12, "sent", "c"),
    ev(13, "bounced", "c", failure_message="550"),
    # campaign 2, a day later: spam + unsubscribe
    ev(14, "sent", "d", campaign=2, at=T0 + DAY),
    ev(15, "delivered", "d", campaign=2, at=T0 + DAY),
    ev(16, "spammed", "d", campaign=2, at=T0 + DAY),
    ev(17, "unsubscribed", "d", campaign=2, at=T0 + DAY),
    # no campaign (a broadcast), and a person-level event that is not a delivery
    ev(18, "sent", "e", campaign=None, broadcast_id=5),
    ev(19, "failed", "f", campaign=None),
    ev(20, "unsubscribed", "", object_type="customer", campaign=None),
]


@pytest.fixture
async def warehouse(tmp_path: Path) -> Path:
    path = tmp_path / "warehouse.db"
    sink = SQLiteWarehouse(path)
    await sink.write([parse_event(body, received_at=T0) for body in EVENTS], cursor=0, loaded_at=T0)
    await sink.close()
    return path


async def test_counts_unique_deliveries_and_splits_machine_activity(warehouse: Path) -> None:
    rows = {r.group: r for r in delivery_report(warehouse, by="campaign")}
    one = rows["1"]
    assert (one.sent, one.delivered, one.bounced) == (3, 2, 1)
    assert (one.opened, one.machine_opened) == (1, 1)  # a: human among machines; b: proxy only
    assert (one.clicked, one.machine_clicked) == (1, 1)  # b twice counts once; a machine only
    assert one.rates["delivery_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert one.rates["open_rate"] == 0.5
    assert one.rates["bounce_rate"] == pytest.approx(1 / 3, abs=1e-4)
    two = rows["2"]
    assert (two.sent, two.delivered, two.spammed, two.unsubscribed) == (1, 1, 1, 1)
    assert two.rates["spam_rate"] == 1.0
    none = rows["(none)"]
    assert (none.sent, none.failed, none.unsubscribed) == (1, 1, 0)  # customer event left out
    assert none.rates["open_rate"] is None  # nothing delivered: no rate, not 0


async def test_by_day_and_since(warehouse: Path) -> None:
    rows = {r.group: r.sent for r in delivery_report(warehouse, by="day")}
    assert rows == {"2023-11-14": 4, "2023-11-15": 1}
    later = delivery_report(warehouse, by="campaign", since=T0 + DAY / 2)
    assert [(r.group, r.sent) for r in later] == [("2", 1)]


async def test_by_broadcast(warehouse: Path) -> None:
    rows = {r.group: r.sent for r in delivery_report(warehouse, by="broadcast")}
    assert rows["5"] == 1


def test_unknown_grouping_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="by must be one of"):
        delivery_report(tmp_path / "x.db", by="week")


async def test_cli_table_json_and_csv(warehouse: Path) -> None:
    runner = CliRunner()
    base = ["report", "--warehouse", str(warehouse)]
    table = runner.invoke(main, base)
    assert table.exit_code == 0, table.output
    assert "deliveries by campaign" in table.stdout
    assert "66.7%" in table.stdout
    as_json = json.loads(runner.invoke(main, [*base, "--json"]).stdout)
    assert as_json[0]["group"] == "(none)"
    assert "open_rate" in as_json[0]
    as_csv = runner.invoke(main, [*base, "--csv", "--by", "day"]).stdout.splitlines()
    assert as_csv[0].startswith("group,sent,delivered,opened,machine_opened")
    assert len(as_csv) == 3


def test_cli_without_a_warehouse_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["report", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "no warehouse at" in result.stderr
