"""The operations commands, run in-process with click's CliRunner against a real inbox file."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import pwd
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cio_webhooks import Dispatcher, EventFilter, JobState, RetryPolicy, Router, parse_event
from cio_webhooks.cli import main, parse_since
from cio_webhooks.cli._audit import cli_user
from cio_webhooks.handlers import load_router
from cio_webhooks.store.sqlite import SQLiteLedger, SQLiteStore
from cio_webhooks.testing import FixedClock, make_event

from ..test_reports import EVENTS, write_warehouse
from .test_store_copy import opened

NOW = 1_700_000_000.0


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An inbox with 3 done events, 1 dead letter and 1 quarantined body."""

    async def build() -> None:
        async with SQLiteStore(tmp_path / "inbox.db") as inbox:
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


def _operator_actions(data_dir: Path) -> list[tuple[str, str, int, str]]:
    async def run() -> list[tuple[str, str, int, str]]:
        async with SQLiteStore(data_dir / "inbox.db", readonly=True) as inbox:
            return [(a.user, a.action, a.count, a.detail) for a in await inbox.operator_actions()]

    return asyncio.run(run())


def test_dlq_and_quarantine_actions_are_recorded_with_who_did_them(data_dir: Path) -> None:
    ann = {"LOGNAME": "ann"}
    [body] = _quarantine(data_dir, (json.dumps(make_event("now-ok")).encode(), "old", None, NOW))
    runner = CliRunner()
    for args, env in [
        (("dlq", "retry", "dead1"), ann),
        (("dlq", "discard", "--all"), {"LOGNAME": "bob"}),
        (("quarantine", "reingest", str(body)), ann),
        (("quarantine", "reingest", "--all"), ann),
        (("dlq", "retry", "ok0"), ann),  # refused (not a dead letter): nothing to record
    ]:
        runner.invoke(main, [*args, "--data-dir", str(data_dir)], env=env, catch_exceptions=False)
    assert _operator_actions(data_dir) == [
        (
            "cli:ann",
            "quarantine_reingest",
            0,
            "every quarantined body: stored=0 duplicate=0 still_invalid=1 stale_left=0",
        ),
        (
            "cli:ann",
            "quarantine_reingest",
            1,
            f"quarantined body {body}: stored=1 duplicate=0 still_invalid=0 stale_left=0",
        ),
        ("cli:bob", "dlq_discard", 0, "every dead letter"),
        ("cli:ann", "dlq_retry", 1, "dead letter dead1"),
    ]


def test_the_cli_user_is_the_login_name() -> None:
    with CliRunner().isolation(env={"LOGNAME": "ann", "USER": "root"}):
        assert cli_user() == "cli:ann"
    # no login name in the environment: the account of the process's uid
    blank = {"LOGNAME": "", "USER": "", "LNAME": "", "USERNAME": ""}
    with CliRunner().isolation(env=blank):
        assert cli_user() == f"cli:{pwd.getpwuid(os.getuid()).pw_name}"


def test_an_action_the_store_cannot_record_is_done_and_the_command_succeeds(
    data_dir: Path,
) -> None:
    with sqlite3.connect(data_dir / "inbox.db") as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON operator_actions"
            " BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    code, out, err = invoke("dlq", "retry", "dead1", "--data-dir", str(data_dir))
    assert (code, out) == (0, "requeued 1 event(s)\n")
    assert err == "note: done, but not recorded for the dashboard: disk full\n"
    assert _inbox_state(data_dir)[0]["dead1"] == "pending"
    assert _operator_actions(data_dir) == []


@pytest.mark.parametrize("command", ["retry", "discard"])
def test_dlq_naming_an_event_that_is_no_dead_letter_is_refused(
    data_dir: Path, command: str
) -> None:
    code, out, err = invoke("dlq", command, "dead1", "ok0", "typo", "--data-dir", str(data_dir))
    assert code == 2
    assert out == ""
    assert err == ("error: not dead letters, nothing done: 'ok0' (done), 'typo' (no such event)\n")
    [still] = json.loads(invoke("dlq", "list", "--data-dir", str(data_dir), "--json")[1])
    assert still["event_id"] == "dead1"


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
    code, out, _ = invoke("replay", "--data-dir", str(data_dir), "--metric", "opened")
    assert code == 0
    assert out.strip() == "queued 1 event(s) for replay"


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
    code, _, err = invoke("worker", "--create", "--db", str(blocker / "inbox.db"))
    assert code == 3  # the store is unavailable
    assert f"cannot open {blocker / 'inbox.db'}: a parent is not a directory" in err


def _quarantine(data_dir: Path, *bodies: tuple[bytes, str, str | None, float]) -> list[int]:
    async def run() -> list[int]:
        async with SQLiteStore(data_dir / "inbox.db") as inbox:
            return [
                await inbox.quarantine(body, reason, received_at=at, event_id=event_id)
                for body, reason, event_id, at in bodies
            ]

    return asyncio.run(run())


def _inbox_state(data_dir: Path) -> tuple[dict[str, str], list[str]]:
    async def run() -> tuple[dict[str, str], list[str]]:
        async with SQLiteStore(data_dir / "inbox.db") as inbox:
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


def insert_raw(db: Path, event_id: str, body: bytes, *, occurred_at: object = None) -> None:
    """Store a row the way an older (or a future) receiver may have: no parsing, no checks."""
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO events (event_id, object_type, metric, occurred_at, received_at, body,"
            " next_attempt_at, updated_at, state) VALUES (?, 'email', 'bounced', ?, ?, ?, ?, ?,"
            " 'dead')",
            (event_id, occurred_at, NOW, body, NOW, NOW),
        )


EXTREME_TIMES = [1e30, 2**62, -(2**62), 253_402_300_800, -1e30, 1e308]


def test_export_prints_every_row_whatever_its_time(data_dir: Path) -> None:
    for i, ts in enumerate(EXTREME_TIMES):
        body = json.dumps(make_event(f"far{i}", metric="bounced") | {"timestamp": ts})
        insert_raw(data_dir / "inbox.db", f"far{i}", body.encode(), occurred_at=ts)
    insert_raw(
        data_dir / "inbox.db", "past", json.dumps(make_event("past") | {"timestamp": -5}).encode()
    )
    code, out, err = invoke("events", "export", "--data-dir", str(data_dir))
    assert (code, err) == (0, "")
    rows = {r["event_id"]: r for r in map(json.loads, out.splitlines())}
    assert len(rows) == 4 + len(EXTREME_TIMES) + 1
    # A time no ISO date can express exports as null; the raw body keeps the number.
    assert [rows[f"far{i}"]["occurred_at"] for i in range(len(EXTREME_TIMES))] == [None] * 6
    assert rows["far0"]["received_at"] == "2023-11-14T22:13:20.000Z"
    assert rows["past"]["occurred_at"] == "1969-12-31T23:59:55.000Z"

    code, out, _ = invoke("events", "export", "--data-dir", str(data_dir), "--format", "csv")
    assert code == 0
    assert len(list(csv.DictReader(io.StringIO(out)))) == 4 + len(EXTREME_TIMES) + 1


def test_export_keeps_a_body_that_no_longer_parses(data_dir: Path) -> None:
    insert_raw(data_dir / "inbox.db", "broken", b'{"event_id": "broken", "data": \xff')
    code, out, _ = invoke("events", "export", "--data-dir", str(data_dir))
    assert code == 0
    row = json.loads(out.splitlines()[-1])
    assert (row["event_id"], row["object_type"], row["metric"]) == ("broken", "email", "bounced")
    assert row["person_id"] is None


def test_dlq_show_a_body_with_invalid_utf8(data_dir: Path) -> None:
    body = b'{"event_id": "latin1", "metric": "bounced", "data": {"subject": "caf\xe9 [/]"}}'
    insert_raw(data_dir / "inbox.db", "latin1", body)
    code, out, err = invoke("dlq", "show", "latin1", "--data-dir", str(data_dir))
    assert (code, err) == (0, "")
    shown = json.loads(out)
    assert shown["payload"]["data"]["subject"] == "caf\ufffd [/]"
    assert "not valid UTF-8" in shown["payload_note"]


def invoke_at(columns: int, *args: str) -> tuple[int, str, str]:
    """Run a command as if in a terminal ``columns`` wide."""
    env = {"COLUMNS": str(columns)}
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def table_columns(output: str) -> tuple[list[str], list[str]]:
    """The header and the body of a rich table, column by column: each column's
    lines joined (a folded value comes back whole, less the spaces it wrapped at)."""
    header: list[str] = []
    body: list[str] = []
    for line in output.splitlines():
        if line.startswith(("┃", "│")):
            cells = [cell.strip() for cell in line.strip()[1:-1].split(line[0])]
            part = header if line.startswith("┃") else body
            part[:] = [a + b for a, b in zip(part, cells, strict=True)] if part else cells
    return header, body


def squeezed(value: object) -> str:
    return "".join(str(value).split())


def test_tables_show_every_column_whole_at_120_columns(tmp_path: Path) -> None:
    async def record() -> None:
        log = SQLiteLedger(tmp_path / "actions.db")
        await log.finish(
            event_id="01HF8YJ3Q6ZK2W7V9X4B5N8M2P",
            rule="repeated-bounces-unsubscribe",
            person="id:person-12345",
            action="unsubscribe",
            request={"person": "id:person-12345", "attributes": {"note": "[bold]3[/] bounces"}},
            status="failed",
            detail="CustomerIOServerError: PUT /customers/person-12345 answered 503 [/]",
            dry_run=False,
            at=NOW,
        )
        await log.close()

    asyncio.run(record())
    code, out, err = invoke_at(120, "actions", "list", "--data-dir", str(tmp_path))
    assert (code, err) == (0, "")
    assert max(map(len, out.splitlines())) <= 120
    header, row = table_columns(out)
    expected = {
        "created_at": "2023-11-14T22:13:20.000Z",
        "event_id": "01HF8YJ3Q6ZK2W7V9X4B5N8M2P",
        "rule": "repeated-bounces-unsubscribe",
        "person": "id:person-12345",
        "action": "unsubscribe",
        "request": '{"note": "[bold]3[/] bounces"}',
        "status": "failed",
        "detail": "CustomerIOServerError: PUT /customers/person-12345 answered 503 [/]",
        "dry_run": "False",
    }
    assert header == list(expected)
    assert list(map(squeezed, row)) == list(map(squeezed, expected.values()))


def test_dlq_list_shows_brackets_in_data(data_dir: Path) -> None:
    insert_raw(data_dir / "inbox.db", "[/]", b'{"event_id": "[/]"}')
    code, out, err = invoke_at(120, "dlq", "list", "--data-dir", str(data_dir))
    assert (code, err) == (0, "")
    header, columns = table_columns(out)
    assert header[0] == "event_id"
    assert columns[0] == "dead1[/]"


HOOKS = """
from cio_webhooks import Router

router = Router()


@router.on("*.bounced", name="mark")
def mark(event):
    open("runs.txt", "a").write(f"mark {event.event_id}\\n")


@router.on("email.bounced", "sms.*", name="notify")
def notify(event):
    open("runs.txt", "a").write(f"notify {event.event_id}\\n")
"""


@pytest.fixture
def hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """A handler module in the current directory, as a user's project has one:
    its ``module:attr`` (a name of its own, so that each test imports it afresh)."""
    name = f"hooks_{request.node.name.replace('[', '_').replace(']', '_').replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(HOOKS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_router adds the directory
    monkeypatch.delenv("CIO_WEBHOOKS_TRACK_SITE_ID", raising=False)
    monkeypatch.delenv("CIO_WEBHOOKS_TRACK_API_KEY", raising=False)
    monkeypatch.delenv("CIO_WEBHOOKS_POLICIES", raising=False)
    return f"{name}:router"


def test_handlers_lists_what_a_setup_registers(hooks: str) -> None:
    code, out, err = invoke("handlers", "--handlers", hooks, "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == [
        {"name": "mark", "patterns": "*.bounced", "backfilled": False, "async": False},
        {"name": "notify", "patterns": "email.bounced, sms.*", "backfilled": False, "async": False},
    ]
    env = {"CIO_WEBHOOKS_TRACK_SITE_ID": "site", "CIO_WEBHOOKS_TRACK_API_KEY": "key"}
    result = CliRunner().invoke(main, ["handlers", "--handlers", hooks, "--json"], env=env)
    names = [row["name"] for row in json.loads(result.stdout)]
    assert names == [
        "mark",
        "notify",
        "policy:spam-complaint-unsubscribe",
        "policy:bounce-mark",
        "policy:repeated-bounces-unsubscribe",
    ]
    assert "key" not in result.stdout


def test_a_blank_track_credential_turns_no_policy_on(hooks: str) -> None:
    env = {"CIO_WEBHOOKS_TRACK_SITE_ID": "site", "CIO_WEBHOOKS_TRACK_API_KEY": "  "}
    result = CliRunner().invoke(main, ["handlers", "--handlers", hooks, "--json"], env=env)
    assert [row["name"] for row in json.loads(result.stdout)] == ["mark", "notify"]


def test_handlers_with_a_module_that_does_not_load(hooks: str) -> None:
    code, _, err = invoke("handlers", "--handlers", "no_such_module:router")
    assert code == 2
    assert err.startswith("error: --handlers 'no_such_module:router': cannot import")
    assert len(err.splitlines()) == 1


def test_replay_refuses_a_handler_it_does_not_know(data_dir: Path, hooks: str) -> None:
    code, out, err = invoke(
        "replay",
        "--data-dir",
        str(data_dir),
        "--since",
        "0",
        "--handler",
        "mrak",
        "--handlers",
        hooks,
    )
    assert (code, out) == (2, "")
    assert err.strip() == "error: no handler named 'mrak'; registered: mark, notify"
    code, _, err = invoke("replay", "--data-dir", str(data_dir), "--since", "0", "--handler", "h")
    assert code == 2
    assert "registered: none" in err


def test_replay_of_one_handler_runs_only_that_handler(data_dir: Path, hooks: str) -> None:
    router = load_router(hooks)

    async def dispatch() -> None:
        async with SQLiteStore(data_dir / "inbox.db") as inbox:
            d = Dispatcher(inbox, router)  # replay queues events for now, by the real clock
            while await d.run_once():
                pass

    # ok2 (email.bounced) has gone through both handlers once: replay it for one of them.
    invoke("replay", "--data-dir", str(data_dir), "--metric", "bounced")
    asyncio.run(dispatch())
    assert sorted(Path("runs.txt").read_text().split("\n")) == ["", "mark ok2", "notify ok2"]
    Path("runs.txt").unlink()

    async def backfill() -> None:  # recovered by reconcile: no handler asked for those
        async with SQLiteStore(data_dir / "inbox.db") as inbox:
            body = json.dumps(make_event("recovered", metric="bounced")).encode()
            await inbox.put(parse_event(body, received_at=NOW, backfilled=True))

    asyncio.run(backfill())
    code, out, err = invoke(
        "replay",
        "--data-dir",
        str(data_dir),
        "--since",
        "0",
        "--handler",
        "notify",
        "--handlers",
        hooks,
    )
    assert (code, err) == (0, "")
    # dead1 (sms.failed) and ok2 are notify's; ok0 and ok1 are not queued at all.
    assert out.strip() == "queued 2 event(s) for replay of handler notify"
    asyncio.run(dispatch())
    assert sorted(Path("runs.txt").read_text().split()) == ["dead1", "notify", "notify", "ok2"]


BIN = Path(sys.executable).parent / "cio-webhooks"


def test_handlers_import_from_the_current_directory(tmp_path: Path) -> None:
    """As uvicorn does: `--handlers myapp.hooks:router` from the project's root, with no
    PYTHONPATH (the README's `examples.handlers:router` from the repository's)."""
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "hooks.py").write_text(HOOKS)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(BIN), "handlers", "--handlers", "myapp.hooks:router", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert [row["name"] for row in json.loads(done.stdout)] == ["mark", "notify"]


READ_ONLY = [
    ("events", "export"),
    ("events", "export", "--format", "csv"),
    ("dlq", "list"),
    ("dlq", "show", "dead1"),
    ("stats",),
    ("quarantine", "list"),
    ("quarantine", "show", "1"),
    ("report",),
    ("actions", "list"),
]


def files(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file below ``directory``: its size, modification time and bytes."""
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("command", [*READ_ONLY, ("reconcile", "--app-api-key", "k")])
@pytest.mark.parametrize("where", ["--data-dir", "--db"])
def test_read_only_commands_create_nothing_for_a_wrong_path(
    tmp_path: Path, command: tuple[str, ...], where: str
) -> None:
    wrong = tmp_path / "typo" / ("inbox.db" if where == "--db" else "")
    code, _, err = invoke(*command, where, str(wrong))
    assert code in (1, 2)
    assert len(err.splitlines()) == 1
    assert err.startswith("error: ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", READ_ONLY)
def test_read_only_commands_change_no_file(data_dir: Path, command: tuple[str, ...]) -> None:
    async def record_an_action() -> None:
        log = SQLiteLedger(data_dir / "actions.db")
        await log.finish(
            event_id="ok2",
            rule="bounce-mark",
            person="id:person-1",
            action="identify",
            request={},
            status="ok",
            detail=None,
            dry_run=False,
            at=NOW,
        )
        await log.close()

    asyncio.run(record_an_action())
    write_warehouse(data_dir / "warehouse.db", EVENTS)
    before = files(data_dir)
    assert set(before) == {"inbox.db", "actions.db", "warehouse.db"}
    code, _, err = invoke(*command, "--data-dir", str(data_dir))
    assert code == 0, err
    assert files(data_dir) == before


@pytest.mark.parametrize(
    "command", [*(c for c in READ_ONLY if c[0] in ("events", "dlq", "stats", "quarantine"))]
)
def test_a_file_that_is_not_an_inbox_is_refused_untouched(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    warehouse = write_warehouse(tmp_path / "warehouse.db", EVENTS)
    before = files(tmp_path)
    code, _, err = invoke(*command, "--db", str(warehouse))
    assert code == 2
    assert err == f"error: cannot read inbox {warehouse}: not a cio-webhooks inbox\n"
    assert files(tmp_path) == before


def test_a_command_that_writes_refuses_a_file_that_is_not_an_inbox(tmp_path: Path) -> None:
    warehouse = write_warehouse(tmp_path / "warehouse.db", EVENTS)
    before = files(tmp_path)
    code, _, err = invoke("dlq", "retry", "--all", "--db", str(warehouse))
    assert code == 2
    assert "not a cio-webhooks inbox" in err
    assert files(tmp_path) == before


def test_worker_refuses_a_missing_inbox_unless_told_to_create_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(BIN), "worker", "--data-dir", str(tmp_path / "typo")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: no inbox at {tmp_path / 'typo' / 'inbox.db'} " + (
        "(start `serve` first, or pass --create)"
    )
    assert list(tmp_path.iterdir()) == []


def test_quarantine_show_a_reason_with_brackets(data_dir: Path) -> None:
    with sqlite3.connect(data_dir / "inbox.db") as conn:
        conn.execute(
            "INSERT INTO quarantine (id, received_at, reason, body) VALUES (9, ?, ?, ?)",
            (NOW, "bad [/] body", b"{[}"),
        )
    code, out, err = invoke("quarantine", "show", "9", "--data-dir", str(data_dir))
    assert (code, out) == (0, "{[}\n")
    assert 'reason="bad [/] body"' in err


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
        (["--drain-timeout", "-1"], "--drain-timeout"),
        # Python reads these as floats, and NaN passes every range check by failing it.
        (["--retry-base", "nan", "--retry-max-delay", "nan"], "--retry-base"),
        (["--dedupe-days", "nan"], "--dedupe-days"),
        (["--tolerance", "inf"], "--tolerance"),
        (["--drain-timeout", "nan"], "--drain-timeout"),
        (["--track-rate", "nan"], "--track-rate"),
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
    code, _, err = invoke("worker", "--create", "--db", _blocked_db(tmp_path), "--region", region)
    assert code == 3, err  # past the options: only the blocked --db fails
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
    assert code == 3
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


@pytest.mark.parametrize("option", ["--read-timeout", "--shutdown-timeout"])
@pytest.mark.parametrize("value", ["nan", "inf", "-5"])
def test_serve_refuses_a_time_limit_that_is_not_a_finite_number(
    tmp_path: Path, option: str, value: str
) -> None:
    code, _, err = invoke("serve", "--data-dir", str(tmp_path), "--signing-key", "k", option, value)
    assert code == 2
    assert option in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("since", ["nan", "inf", "-inf", "1e3", "+5", "1_000"])
def test_a_time_argument_is_7d_an_iso_date_or_plain_unix_seconds(
    data_dir: Path, since: str
) -> None:
    code, _, err = invoke("events", "export", "--data-dir", str(data_dir), "--since", since)
    assert code == 2
    assert "use 7d, 12h, 30m, an ISO date or unix seconds" in err


def test_quarantine_purge_refuses_a_time_of_infinity(data_dir: Path) -> None:
    code, _, _ = invoke("quarantine", "purge", "--data-dir", str(data_dir), "--before", "inf")
    assert code == 2
    code, out, _ = invoke("quarantine", "list", "--data-dir", str(data_dir), "--json")
    assert (code, len(json.loads(out))) == (0, 1)  # nothing was purged


@pytest.mark.parametrize(
    "command",
    [
        ("dlq", "list", "--limit", "0"),
        ("dlq", "list", "--limit", "-1"),
        ("quarantine", "list", "--limit", "99999999999999999999"),
        ("quarantine", "show", "99999999999999999999"),
        ("quarantine", "reingest", "99999999999999999999"),
    ],
)
def test_out_of_range_numbers_are_one_line_errors(data_dir: Path, command: tuple[str, ...]) -> None:
    code, _, err = invoke(*command, "--data-dir", str(data_dir))
    assert code == 2
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["show", "retry", "discard"])
def test_an_event_id_argument_that_is_not_utf8_is_looked_up_not_a_crash(
    data_dir: Path, command: str
) -> None:
    not_utf8 = b"\xff\xfeabc".decode("utf-8", "surrogateescape")  # as Python reads argv
    code, _, err = invoke("dlq", command, not_utf8, "--data-dir", str(data_dir))
    assert "Traceback" not in err
    # No such event: one line, as for any unknown id.
    assert (code, err.count("\n")) == (2, 1)
    if command == "show":
        assert err.startswith("error: no stored event '\ufffd\ufffdabc'")
    else:
        assert err.startswith("error: not dead letters, nothing done: '\ufffd\ufffdabc'")


def test_serve_stopped_by_a_bad_policy_file_leaves_no_empty_store_behind(tmp_path: Path) -> None:
    # The storage probe created empty inbox/warehouse/actions files; `worker` then took
    # the empty inbox for one, and `report` called the warehouse "an older version".
    policies = tmp_path / "bad.toml"
    policies.write_text('[[rule]]\non = ["x"]\naction = "explode"\n')
    data = tmp_path / "data"
    code, _, err = invoke(
        "serve", "--data-dir", str(data), "--signing-key", "k", "--policies", str(policies)
    )
    assert code == 2
    assert "'action' must be one of" in err
    assert not data.exists() or list(data.iterdir()) == []


def test_quarantine_reingest_leaves_a_body_postgresql_cannot_hold_and_goes_on(
    pg_url: str,
) -> None:
    # PostgreSQL text cannot hold a NUL: reingest --all stopped on it ("unexpected
    # ValueError", exit 1) and left every later body in quarantine.
    nul = json.dumps(make_event("nul\x00id")).encode()
    good = json.dumps(make_event("good-now", delivery_id=7)).encode()

    async def build() -> None:
        async with opened(pg_url) as store:
            await store.quarantine(nul, "could not store the event", received_at=NOW)
            await store.quarantine(good, "old parser", received_at=NOW, event_id="good-now")

    asyncio.run(build())
    code, out, err = invoke("quarantine", "reingest", "--all", "--store", pg_url)
    assert code == 0, err
    assert out.split() == [
        "stored=1",
        "duplicate=0",
        "still_invalid=0",
        "stale_left=0",
        "refused=1",
    ]
    assert "stays" in err

    async def state() -> tuple[bool, int]:
        async with opened(pg_url) as store:
            stored = await store.get_event("good-now") is not None
            return stored, len(await store.quarantined(limit=10))

    assert asyncio.run(state()) == (True, 1)


def test_actions_list_reads_the_ledger_file_serve_was_given(tmp_path: Path) -> None:
    # serve/worker --actions-db put the ledger elsewhere: actions list must find it there.
    elsewhere = tmp_path / "audit" / "ledger.db"
    elsewhere.parent.mkdir()

    async def record() -> None:
        log = SQLiteLedger(elsewhere)
        await log.finish(
            event_id="ev-1",
            rule="r",
            person="id:p",
            action="unsubscribe",
            request={"person": "id:p", "attributes": {}},
            status="ok",
            detail="",
            dry_run=False,
            at=NOW,
        )
        await log.close()

    asyncio.run(record())
    code, out, err = invoke("actions", "list", "--data-dir", str(tmp_path), "--json")
    assert code == 2
    assert "--actions-db" in err
    code, out, err = invoke(
        "actions", "list", "--data-dir", str(tmp_path), "--actions-db", str(elsewhere), "--json"
    )
    assert (code, err) == (0, "")
    assert [row["event_id"] for row in json.loads(out)] == ["ev-1"]


def test_actions_list_refuses_actions_db_for_postgresql(pg_url: str) -> None:
    code, _, err = invoke("actions", "list", "--store", pg_url, "--actions-db", "a.db")
    assert code == 2
    assert "--actions-db is for a SQLite store" in err
