"""The operations commands, run in-process with click's CliRunner against a real inbox file."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cio_webhooks import Dispatcher, JobState, RetryPolicy, Router, SQLiteInbox, parse_event
from cio_webhooks.cli import main, parse_since
from cio_webhooks.testing import FixedClock, make_event

NOW = 1_700_000_000.0


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An inbox with 3 done events, 1 dead letter and 1 quarantined body."""

    async def build() -> None:
        async with SQLiteInbox(tmp_path / "inbox.db") as inbox:
            for i, metric in enumerate(["delivered", "opened", "bounced"]):
                body = json.dumps(make_event(f"ok{i}", metric=metric)).encode()
                await inbox.put(parse_event(body, received_at=NOW + i))
            dead = json.dumps(make_event("dead1", "sms", "failed")).encode()
            await inbox.put(parse_event(dead, received_at=NOW + 10))
            await inbox.quarantine(b"garbage", "body is not JSON", received_at=NOW)
            router = Router()

            @router.on("sms.failed", name="always_fails")
            def fail(event: object) -> None:
                raise ValueError("no route to host")

            d = Dispatcher(
                inbox, router, clock=FixedClock(NOW + 20), retry=RetryPolicy(max_attempts=1)
            )
            while await d.run_once():
                pass

    asyncio.run(build())
    return tmp_path


def test_export_jsonl_has_every_event_with_normalised_fields(data_dir: Path) -> None:
    code, out, _ = invoke("events", "export", "--data-dir", str(data_dir))
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["event_id"] for r in rows] == ["ok0", "ok1", "ok2", "dead1"]
    assert rows[0]["person_id"] == "person-1"
    assert rows[0]["received_at"] == "2023-11-14T22:13:20.000Z"


def test_export_csv_filters_by_metric_and_since(data_dir: Path) -> None:
    code, out, _ = invoke(
        "events",
        "export",
        "--data-dir",
        str(data_dir),
        "--format",
        "csv",
        "--metric",
        "email.*",
        "--since",
        str(NOW + 1),
    )
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["event_id"], r["metric"]) for r in rows] == [("ok1", "opened"), ("ok2", "bounced")]


def test_dlq_list_show_retry_discard(data_dir: Path) -> None:
    code, out, _ = invoke("dlq", "list", "--data-dir", str(data_dir), "--json")
    assert code == 0
    [dead] = json.loads(out)
    assert dead["event_id"] == "dead1"
    assert dead["last_error"] == "always_fails: ValueError: no route to host"

    code, out, _ = invoke("dlq", "show", "dead1", "--data-dir", str(data_dir))
    shown = json.loads(out)
    assert shown["handlers"][0]["status"] == "failed"
    assert shown["payload"]["metric"] == "failed"

    assert invoke("dlq", "retry", "--data-dir", str(data_dir))[0] == 2  # needs ids or --all
    code, out, _ = invoke("dlq", "retry", "dead1", "--data-dir", str(data_dir))
    assert (code, out.strip()) == (0, "requeued 1 event(s)")
    assert json.loads(invoke("dlq", "list", "--data-dir", str(data_dir), "--json")[1]) == []

    stats = json.loads(invoke("stats", "--data-dir", str(data_dir), "--json")[1])
    assert stats["states"][JobState.PENDING] == 1
    code, out, _ = invoke("dlq", "discard", "--all", "--data-dir", str(data_dir))
    assert out.strip() == "discarded 0 event(s)"  # it is pending now, not dead


def test_dlq_list_as_a_table(data_dir: Path) -> None:
    code, out, _ = invoke("dlq", "list", "--data-dir", str(data_dir))
    assert code == 0
    assert "dead1" in out
    assert "sms.failed" in out


def test_quarantine_list_and_show_raw_bytes(data_dir: Path) -> None:
    [item] = json.loads(invoke("quarantine", "list", "--data-dir", str(data_dir), "--json")[1])
    assert item["reason"] == "body is not JSON"
    code, out, _ = invoke("quarantine", "show", str(item["id"]), "--data-dir", str(data_dir))
    assert code == 0
    assert out == "garbage\n"


def test_replay_requires_a_selection_and_queues_matching_events(data_dir: Path) -> None:
    code, _, err = invoke("replay", "--data-dir", str(data_dir))
    assert code == 2
    assert "--since and/or --metric" in err
    code, out, _ = invoke(
        "replay", "--data-dir", str(data_dir), "--metric", "opened", "--handler", "h"
    )
    assert code == 0
    assert out.strip() == "queued 1 event(s) for replay of handler h"


def test_stats_table_and_json(data_dir: Path) -> None:
    stats = json.loads(invoke("stats", "--data-dir", str(data_dir), "--json")[1])
    assert stats["events"] == 4
    assert stats["states"]["done"] == 3
    assert stats["states"]["dead"] == 1
    assert stats["kinds"]["email.opened"] == 1
    assert stats["quarantined"] == 1
    code, out, _ = invoke("stats", "--data-dir", str(data_dir))
    assert code == 0
    assert "email.bounced" in out


def test_missing_inbox_is_a_clear_error(tmp_path: Path) -> None:
    code, _, err = invoke("stats", "--data-dir", str(tmp_path / "nowhere"))
    assert code == 2
    assert "no inbox at" in err
    assert "Traceback" not in err


def test_bad_since_is_a_clear_error(data_dir: Path) -> None:
    code, _, err = invoke("events", "export", "--data-dir", str(data_dir), "--since", "soon")
    assert code == 2
    assert "--since 'soon'" in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", NOW - 7 * 86400),
        ("12h", NOW - 12 * 3600),
        ("30m", NOW - 1800),
        ("1700000000", 1_700_000_000.0),
        ("2023-11-14T22:13:20Z", 1_700_000_000.0),
        ("2023-11-14", 1_699_920_000.0),
    ],
)
def test_parse_since(text: str, expected: float) -> None:
    assert parse_since(text, NOW) == expected


def test_worker_on_unusable_paths_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = invoke("worker", "--data-dir", str(blocker))
    assert code == 2
    assert "is a file" in err
    code, _, err = invoke("worker", "--db", str(blocker / "inbox.db"))
    assert code == 1
    assert f"cannot open {blocker / 'inbox.db'}: a parent is not a directory" in err


def _blocked_db(tmp_path: Path) -> str:
    """A --db that cannot be opened: past option checks, the command fails with exit 1."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    return str(blocker / "inbox.db")


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--signing-key", ""], {}),
        (["--signing-key", " , "], {}),
        ([], {"CIO_WEBHOOKS_SIGNING_KEYS": " , "}),
        ([], {"CIO_WEBHOOKS_SIGNING_KEYS": ""}),
    ],
)
def test_a_blank_signing_key_setting_is_an_error_not_a_generated_key(
    tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    data = tmp_path / "data"
    result = CliRunner(env=env).invoke(
        main,
        ["serve", "--port", "0", "--data-dir", str(data), "--db", _blocked_db(tmp_path), *args],
        catch_exceptions=False,
    )
    assert result.exit_code == 2
    assert "signing key setting (--signing-key / CIO_WEBHOOKS_SIGNING_KEYS) is blank" in (
        result.stderr
    )
    assert not (data / "signing-key").exists()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--tolerance", "-1"], "--tolerance"),
        (["--dedupe-days", "6.5"], "--dedupe-days"),
        (["--retry-base", "0"], "--retry-base"),
        (["--retry-max-delay", "-5"], "--retry-max-delay"),
        (["--retry-base", "10", "--retry-max-delay", "5"], "--retry-max-delay 5 is shorter"),
        (["--max-attempts", "0"], "--max-attempts"),
        (["--max-body", "0"], "--max-body"),
    ],
)
def test_out_of_range_service_options_are_errors(
    tmp_path: Path, args: list[str], named: str
) -> None:
    code, _, err = invoke("worker", "--db", _blocked_db(tmp_path), *args)
    assert code == 2
    assert named in err
    assert "Traceback" not in err


@pytest.mark.parametrize("region", ["eu", "EU", "Eu", "US"])
def test_region_is_accepted_in_any_case(tmp_path: Path, region: str) -> None:
    code, _, err = invoke("worker", "--db", _blocked_db(tmp_path), "--region", region)
    assert code == 1, err  # past the options: only the blocked --db fails
    assert "cannot open" in err


def test_serve_port_out_of_range_is_an_error(tmp_path: Path) -> None:
    done = subprocess.run(  # a subprocess: were the port taken as valid, serve would run
        [
            sys.executable,
            "-m",
            "cio_webhooks",
            "serve",
            "--port",
            "99999",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "'--port': 99999 is not in the range 0<=x<=65535" in done.stderr
    assert not (tmp_path / "signing-key").exists()


def test_serve_on_an_unusable_data_dir_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = invoke("serve", "--port", "0", "--data-dir", str(blocker / "data"))
    assert code == 1
    assert err.strip() == (
        f"error: cannot read {blocker / 'data' / 'signing-key'}: a parent is not a directory"
    )


def test_send_without_a_key_uses_the_generated_one_or_says_how_to_get_one(tmp_path: Path) -> None:
    sample = tmp_path / "event.json"
    sample.write_text("{}")
    code, _, err = invoke("send", str(sample), "--data-dir", str(tmp_path))
    assert code == 2
    assert (
        f"no signing key: pass --signing-key, or run serve once to generate one in {tmp_path}"
        in (err)
    )
    code, _, err = invoke("send", str(sample), "--signing-key", " ")
    assert code == 2
    assert "is blank" in err


def test_python_dash_m_runs_the_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cio_webhooks", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("python -m cio_webhooks, version ")
