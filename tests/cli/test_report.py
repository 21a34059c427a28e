"""`cio-webhooks report`: the table, --json, --csv, and where it finds the warehouse."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cio_webhooks.cli import main
from cio_webhooks.customerio.fake import FakeCustomerIO
from cio_webhooks.reports import COUNTS, RATES

from ..test_reports import EVENTS, REDELIVERED, write_postgres_url, write_warehouse
from .test_commands import table_columns

# The campaign report of test_reports.EVENTS, as `report --json` gives it.
EXPECTED = [
    {
        "group": "1",
        "sent": 5,
        "delivered": 4,
        "opened": 2,
        "machine_opened": 2,
        "clicked": 1,
        "machine_clicked": 2,
        "converted": 1,
        "bounced": 1,
        "spammed": 0,
        "unsubscribed": 1,
        "failed": 0,
        "delivery_rate": 0.8,
        "open_rate": 0.5,
        "click_rate": 0.25,
        "bounce_rate": 0.2,
        "spam_rate": 0.0,
        "unsubscribe_rate": 0.25,
    },
    {
        "group": "2",
        "sent": 3,
        "delivered": 2,
        "opened": 2,
        "machine_opened": 0,
        "clicked": 0,
        "machine_clicked": 0,
        "converted": 0,
        "bounced": 0,
        "spammed": 1,
        "unsubscribed": 0,
        "failed": 1,
        "delivery_rate": 0.6667,
        "open_rate": 1.0,
        "click_rate": 0.0,
        "bounce_rate": 0.0,
        "spam_rate": 0.5,
        "unsubscribe_rate": 0.0,
    },
    {
        "group": "10",
        "sent": 1,
        **dict.fromkeys(COUNTS[1:], 0),
        "delivery_rate": 0.0,
        "open_rate": None,
        "click_rate": None,
        "bounce_rate": 0.0,
        "spam_rate": None,
        "unsubscribe_rate": None,
    },
    {
        "group": "(none)",
        "sent": 4,
        "delivered": 2,
        **dict.fromkeys(COUNTS[2:-1], 0),
        "failed": 1,
        "delivery_rate": 0.5,
        "open_rate": 0.0,
        "click_rate": 0.0,
        "bounce_rate": 0.0,
        "spam_rate": 0.0,
        "unsubscribe_rate": 0.0,
    },
]


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    return write_warehouse(tmp_path / "warehouse.db", EVENTS, REDELIVERED)


def report(*args: str, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(main, ["report", *args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def table_rows(output: str) -> dict[str, list[str]]:
    """The body rows of a rich table: first cell -> the other cells."""
    rows = {}
    for line in output.splitlines():
        if line.startswith("│"):
            cells = [cell.strip() for cell in line.strip("│").split("│")]
            rows[cells[0]] = cells[1:]
    return rows


def test_table_shows_counts_machine_activity_and_percentages(warehouse: Path) -> None:
    result = report("--warehouse", str(warehouse))
    assert result.exit_code == 0, result.output
    assert "deliveries by campaign" in result.stdout
    rows = table_rows(result.stdout)
    assert list(rows) == ["1", "2", "10", "(none)"]
    # sent delivered opened(+machine) clicked(+machine) converted bounced spammed
    # unsubscribed failed, then delivery/open/click/bounce/spam rates
    assert rows["1"][:9] == ["5", "4", "2 +2m", "1 +2m", "1", "1", "0", "1", "0"]
    assert rows["1"][9:15] == ["80.0%", "50.0%", "25.0%", "20.0%", "0.0%", "25.0%"]
    assert rows["2"][9:11] == ["66.7%", "100.0%"]
    assert rows["10"][9:14] == ["0.0%", "-", "-", "0.0%", "-"]  # nothing delivered


def test_json_is_a_list_of_flat_rows(warehouse: Path) -> None:
    result = report("--warehouse", str(warehouse), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == EXPECTED


def test_csv_has_a_header_and_one_line_per_group(warehouse: Path) -> None:
    result = report("--warehouse", str(warehouse), "--csv", "--by", "day")
    assert result.exit_code == 0, result.output
    reader = csv.DictReader(io.StringIO(result.stdout))
    assert reader.fieldnames == ["group", *COUNTS, *RATES]
    rows = {row["group"]: row for row in reader}
    assert list(rows) == ["2023-11-14", "2023-11-15"]
    assert rows["2023-11-14"]["sent"] == "10"
    assert rows["2023-11-14"]["machine_opened"] == "3"
    assert rows["2023-11-15"]["opened"] == "3"
    assert rows["2023-11-15"]["open_rate"] == "1.5"


def test_csv_writes_none_as_an_empty_cell(warehouse: Path) -> None:
    result = report("--warehouse", str(warehouse), "--csv")
    rows = {row["group"]: row for row in csv.DictReader(io.StringIO(result.stdout))}
    assert rows["10"]["open_rate"] == ""
    assert rows["10"]["delivery_rate"] == "0.0"


@pytest.mark.parametrize(
    ("since", "groups"),
    [
        ("2023-11-15", ["1", "2"]),  # an ISO date, UTC
        ("1700043200", ["1", "2"]),  # unix seconds: 2023-11-15T10:13:20Z
        ("2023-11-14", ["1", "2", "10", "(none)"]),
        ("1d", []),  # relative to now: all of this happened in 2023
    ],
)
def test_since(warehouse: Path, since: str, groups: list[str]) -> None:
    result = report("--warehouse", str(warehouse), "--since", since, "--json")
    assert result.exit_code == 0, result.output
    assert [row["group"] for row in json.loads(result.stdout)] == groups


def test_by_broadcast_and_newsletter(warehouse: Path) -> None:
    for by, group in (("broadcast", "5"), ("newsletter", "9")):
        rows: list[dict[str, Any]] = json.loads(
            report("--warehouse", str(warehouse), "--by", by, "--json").stdout
        )
        assert [row["group"] for row in rows] == [group, "(none)"]
        assert (rows[0]["sent"], rows[0]["delivered"]) == (1, 1)


def test_finds_the_warehouse_next_to_the_inbox(warehouse: Path, tmp_path: Path) -> None:
    by_dir = report("--data-dir", str(tmp_path), "--json")
    assert json.loads(by_dir.stdout) == EXPECTED
    by_db = report("--db", str(tmp_path / "inbox.db"), "--json")
    assert json.loads(by_db.stdout) == EXPECTED
    by_env = report("--json", env={"CIO_WEBHOOKS_WAREHOUSE": str(warehouse)})
    assert json.loads(by_env.stdout) == EXPECTED


def test_without_a_warehouse_is_a_clear_error(tmp_path: Path) -> None:
    result = report("--data-dir", str(tmp_path))
    assert result.exit_code == 2
    assert f"no warehouse at {tmp_path / 'warehouse.db'}" in result.stderr
    assert not (tmp_path / "warehouse.db").exists()


def test_bad_arguments_exit_2(warehouse: Path) -> None:
    bad_since = report("--warehouse", str(warehouse), "--since", "last tuesday")
    assert bad_since.exit_code == 2
    assert "--since 'last tuesday'" in bad_since.stderr
    assert report("--warehouse", str(warehouse), "--by", "week").exit_code == 2


def test_csv_of_an_empty_report_still_has_its_header(tmp_path: Path) -> None:
    empty = write_warehouse(tmp_path / "warehouse.db", [], [])
    result = report("--warehouse", str(empty), "--csv")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [",".join(["group", *COUNTS, *RATES])]


def test_a_file_that_is_not_a_warehouse_is_a_clear_error(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    import sqlite3

    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE unrelated (x)")
    result = report("--warehouse", str(other))
    assert result.exit_code == 3  # the data cannot be read
    assert "error:" in result.stderr
    assert "Traceback" not in result.output


def test_table_shows_every_number_whole_at_120_columns(warehouse: Path) -> None:
    result = report("--warehouse", str(warehouse), env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert max(map(len, result.stdout.splitlines())) <= 120
    assert "…" not in result.stdout
    rows = table_rows(result.stdout)
    assert list(rows) == ["1", "2", "10", "(none)"]
    counts = ["5", "4", "2 +2m", "1 +2m", "1", "1", "0", "1", "0"]
    rates = ["80.0%", "50.0%", "25.0%", "20.0%", "0.0%", "25.0%"]
    assert rows["1"] == [*counts, *rates]
    header, _ = table_columns(result.stdout)
    assert header[-1] == "unsubscribe%"  # folded over lines, but whole


async def test_compare_api_shows_na_for_a_group_the_api_does_not_know(warehouse: Path) -> None:
    async with FakeCustomerIO(app_key="app-secret") as fake:
        fake.campaign_series["1"] = {"sent": [3, 2], "delivered": [4, 0], "opened": [2, 0]}
        # Campaigns 2 and 10 are unknown to the API (404), as a deleted campaign is.
        args = ["--warehouse", str(warehouse), "--compare-api", "--app-url", fake.app_url]
        env = {"CIO_WEBHOOKS_APP_API_KEY": "app-secret", "COLUMNS": "200"}
        # The CLI runs its own event loop; the fake serves from this one.
        table, as_json = [
            await asyncio.to_thread(report, *args, *more, env=env) for more in ([], ["--json"])
        ]
    assert table.exit_code == 0, table.output
    rows = table_rows(table.stdout)
    assert rows["1"][:3] == ["5 (api 5)", "4 (api 4)", "2 +2m (api 2)"]
    assert rows["2"][:2] == ["3 (api n/a)", "2 (api n/a)"]
    assert rows["(none)"][0] == "4 (api n/a)"
    assert as_json.exit_code == 0, as_json.output
    by_group = {row["group"]: row for row in json.loads(as_json.stdout)}
    assert (by_group["1"]["api_sent"], by_group["10"]["api_sent"]) == (5, None)
    assert [call.path for call in fake.requests] == [
        "/v1/campaigns/1/metrics",
        "/v1/campaigns/2/metrics",
        "/v1/campaigns/10/metrics",
    ] * 2


def test_sink_reports_from_a_postgresql_sink(pg_database: str) -> None:
    # A prefix of its own in the default schema (cio_warehouse) of this run's database.
    url = f"{pg_database}?table_prefix=r{secrets.token_hex(4)}_"
    write_postgres_url(url, EVENTS, REDELIVERED)
    result = report("--sink", url, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == EXPECTED


def test_sink_reports_from_a_sqlite_sink(warehouse: Path) -> None:
    result = report("--sink", f"sqlite://{warehouse}", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == EXPECTED


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--sink", "bigquery://p/d"], "reads sqlite and postgresql sinks"),
        (["--sink", "sqlite:///x.db", "--warehouse", "x.db"], "pass one"),
    ],
)
def test_sink_refuses_what_it_cannot_read(args: list[str], says: str) -> None:
    result = report(*args)
    assert result.exit_code == 2
    assert says in result.output
