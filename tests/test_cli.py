"""The operations commands, run in-process with click's CliRunner against a real inbox file."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cio_webhooks import (
    Dispatcher,
    EventFilter,
    JobState,
    RetryPolicy,
    Router,
    SQLiteInbox,
    parse_event,
)
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


def _quarantine(data_dir: Path, *bodies: tuple[bytes, str, str | None, float]) -> list[int]:
    async def run() -> list[int]:
        async with SQLiteInbox(data_dir / "inbox.db") as inbox:
            return [
                await inbox.quarantine(body, reason, received_at=at, event_id=event_id)
                for body, reason, event_id, at in bodies
            ]

    return asyncio.run(run())


def _inbox_state(data_dir: Path) -> tuple[dict[str, str], list[str]]:
    async def run() -> tuple[dict[str, str], list[str]]:
        async with SQLiteInbox(data_dir / "inbox.db") as inbox:
            events = {e.event_id: e.state.value async for e in inbox.iter_events(EventFilter())}
            return events, [q.reason for q in await inbox.quarantined(limit=1000)]

    return asyncio.run(run())


def test_quarantine_reingest_all_turns_bodies_that_are_events_now_into_pending_events(
    data_dir: Path,
) -> None:
    # Bodies an older parser refused: one is an event now, one duplicates a stored event.
    odd = json.dumps(make_event("was-odd", metric="bounced", delivery_id=7)).encode()
    dup = json.dumps(make_event("ok0")).encode()
    stale = json.dumps(make_event("late-one")).encode()
    _quarantine(
        data_dir,
        (odd, "Expected `str | null`, got `int`", "was-odd", NOW),
        (dup, "old parser", "ok0", NOW),
        (stale, "stale: signed +3000000s from receipt", "late-one", NOW),
    )
    code, out, _ = invoke("quarantine", "reingest", "--all", "--data-dir", str(data_dir))
    assert code == 0
    assert out.split() == ["stored=1", "duplicate=1", "still_invalid=1", "stale_left=1"]
    events, reasons = _inbox_state(data_dir)
    assert events["was-odd"] == "pending"  # the dispatcher will run its handlers
    assert "late-one" not in events
    assert sorted(reasons) == ["body is not JSON", "stale: signed +3000000s from receipt"]
    code, out, _ = invoke("quarantine", "reingest", "--all", "--data-dir", str(data_dir))
    assert out.split() == ["stored=0", "duplicate=0", "still_invalid=1", "stale_left=1"]


def test_quarantine_reingest_by_id_takes_a_stale_body_too(data_dir: Path) -> None:
    stale = json.dumps(make_event("late-one")).encode()
    [ident] = _quarantine(data_dir, (stale, "stale: signed long ago", "late-one", NOW))
    code, out, _ = invoke("quarantine", "reingest", str(ident), "--data-dir", str(data_dir))
    assert code == 0
    assert "stored=1" in out
    assert _inbox_state(data_dir)[0]["late-one"] == "pending"


@pytest.mark.parametrize("args", [(), ("999",), ("1", "--all")])
def test_quarantine_reingest_needs_existing_ids_or_all(
    data_dir: Path, args: tuple[str, ...]
) -> None:
    code, _, err = invoke("quarantine", "reingest", *args, "--data-dir", str(data_dir))
    assert code == 2
    assert "Traceback" not in err
    assert _inbox_state(data_dir)[1] == ["body is not JSON"]  # nothing changed


def test_quarantine_purge_before_deletes_only_older_bodies(data_dir: Path) -> None:
    _quarantine(data_dir, (b"newer", "odd", None, NOW + 86400))
    code, out, _ = invoke(
        "quarantine", "purge", "--before", str(int(NOW + 3600)), "--data-dir", str(data_dir)
    )
    assert code == 0
    assert "purged 1" in out
    assert _inbox_state(data_dir)[1] == ["odd"]
    code, _, err = invoke("quarantine", "purge", "--before", "soon", "--data-dir", str(data_dir))
    assert code == 2
    assert "--before 'soon'" in err
