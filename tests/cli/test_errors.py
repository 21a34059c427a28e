"""One table from errors to exit codes, applied to every command; one line on stderr,
no traceback, no password; ``--store`` and ``--db`` name the store."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from cio_webhooks import ConfigError, StoreUnavailable, parse_event
from cio_webhooks.cli import main
from cio_webhooks.cli._errors import ExitCode, exit_code, redact
from cio_webhooks.customerio import CustomerIOError
from cio_webhooks.testing import make_event

from ..test_server import BIN
from .test_commands import invoke
from .test_store_copy import opened

SECRET = "s3cret-pw"
#: Nothing listens on port 1: a PostgreSQL that cannot be reached.
UNREACHABLE = f"postgresql://cio:{SECRET}@127.0.0.1:1/cio?schema=t_x&password={SECRET}"


def test_the_table() -> None:
    assert [int(code) for code in ExitCode] == [0, 1, 2, 3]
    assert exit_code(ConfigError("x")) is ExitCode.USAGE
    assert exit_code(StoreUnavailable("x")) is ExitCode.STORE_UNAVAILABLE
    assert exit_code(CustomerIOError("x")) is ExitCode.FAILED
    assert exit_code(RuntimeError("x")) is ExitCode.FAILED


def test_redact_masks_passwords_in_urls_and_settings() -> None:
    text = f"cannot connect to postgresql://cio:{SECRET}@db:5432/x (password={SECRET} host=db)"
    assert SECRET not in redact(text)
    assert "postgresql://cio:***@db:5432/x" in redact(text)
    assert redact("no secret here: sqlite:///a/b.db") == "no secret here: sqlite:///a/b.db"


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    async def build() -> None:
        async with opened(f"sqlite://{tmp_path / 'inbox.db'}") as store:
            body = json.dumps(make_event("e1")).encode()
            await store.put(parse_event(body, received_at=1_700_000_000.0))

    asyncio.run(build())
    return tmp_path / "inbox.db"


STORE_COMMANDS = [
    ("stats",),
    ("dlq", "list"),
    ("dlq", "show", "e1"),
    ("dlq", "retry", "--all"),
    ("quarantine", "list"),
    ("events", "export"),
    ("replay", "--since", "1d"),
    ("actions", "list"),
    ("migrate",),
    ("reconcile", "--app-api-key", "k"),
]


# actions list needs policies and reconcile the App API: test_store_copy, test_reconcile
# run them against a --store.
@pytest.mark.parametrize(
    "command", [c for c in STORE_COMMANDS if c[0] not in ("actions", "reconcile")]
)
def test_store_url_names_the_store_of_every_command(inbox: Path, command: tuple[str, ...]) -> None:
    code, _, err = invoke(*command, "--store", f"sqlite://{inbox}")
    assert code == 0, err
    code, _, err = invoke(*command, "--store", f"sqlite://{inbox}", "--db", str(inbox))
    assert code == 2
    assert err == "error: --store and --db both name the store: pass one of them\n"


@pytest.mark.parametrize("command", STORE_COMMANDS)
def test_an_unreachable_postgres_is_one_line_without_the_password(
    command: tuple[str, ...],
) -> None:
    result = CliRunner().invoke(main, [*command, "--store", UNREACHABLE])
    assert result.exit_code == ExitCode.STORE_UNAVAILABLE, result.output
    *notes, error = result.stderr.splitlines()
    assert error.startswith("error: ")
    assert all(line.startswith("note: ") for line in notes)
    assert SECRET not in result.output + result.stderr
    assert "Traceback" not in result.stderr


def test_a_store_url_that_names_no_store_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = invoke("stats", "--store", "mysql://root@db/x")
    assert code == 2
    assert "is not supported: use sqlite:///PATH or postgresql://" in err
    code, _, err = invoke("stats", "--store", f"postgresql://u:{SECRET}@h/db?schema=no-dash")
    assert code == 2
    assert SECRET not in err


def test_the_store_variable_is_read(inbox: Path) -> None:
    result = CliRunner().invoke(
        main, ["stats", "--json"], env={"CIO_WEBHOOKS_STORE": f"sqlite://{inbox}"}
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["events"] == 1


def test_serve_and_worker_on_an_unreachable_postgres_say_so_in_one_line() -> None:
    for command in (["worker"], ["serve", "--port", "0", "--signing-key", "k", "--no-dispatch"]):
        done = subprocess.run(
            [str(BIN), *command, "--store", UNREACHABLE],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == ExitCode.STORE_UNAVAILABLE, done.stderr
        assert done.stderr.startswith("error: "), done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
        assert SECRET not in done.stderr + done.stdout


@pytest.mark.parametrize("option", [["--actions-db", "a.db"], ["--max-db-size", "1000"]])
def test_sqlite_file_options_are_refused_for_postgres(option: list[str]) -> None:
    code, _, err = invoke("worker", "--store", "postgresql://u@127.0.0.1:1/x", *option)
    assert code == 2
    assert f"{option[0]} is for a SQLite store, not postgresql" in err


def test_store_copy_to_an_unreachable_postgres_is_one_line_without_the_password(
    inbox: Path,
) -> None:
    result = CliRunner().invoke(
        main, ["store", "copy", "--from", f"sqlite://{inbox}", "--to", UNREACHABLE]
    )
    assert result.exit_code == ExitCode.STORE_UNAVAILABLE, result.output
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1
    assert SECRET not in result.output


def test_an_unexpected_error_is_one_line_too(inbox: Path) -> None:
    (inbox.parent / "actions.db").write_bytes(b"not a database, but not empty either" * 100)
    code, out, err = invoke("actions", "list", "--db", str(inbox))
    assert code == ExitCode.FAILED
    assert out == ""
    assert err.startswith("error: ")
    assert err.count("\n") == 1


@pytest.mark.parametrize("command", [("dlq", "retry", "--all"), ("stats",)])
def test_a_command_creates_no_postgres_store(pg_url: str, command: tuple[str, ...]) -> None:
    code, out, err = invoke(*command, "--store", pg_url)
    assert code == ExitCode.STORE_UNAVAILABLE
    assert out == ""
    assert "holds no cio-webhooks store" in err
    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(pg_url.split("?")[0]) as conn:
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema]).fetchone()
    assert found is None


def test_a_reader_that_stops_early_gets_no_error(tmp_path: Path) -> None:
    async def build() -> None:
        async with opened(f"sqlite://{tmp_path / 'inbox.db'}") as store:
            for i in range(2000):
                body = json.dumps(make_event(f"e{i}")).encode()
                await store.put(parse_event(body, received_at=1_700_000_000.0))

    asyncio.run(build())
    export = subprocess.Popen(
        [str(BIN), "events", "export", "--db", str(tmp_path / "inbox.db")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert export.stdout is not None
    assert export.stderr is not None
    export.stdout.readline()  # what `| head -1` reads
    export.stdout.close()
    assert export.wait(timeout=60) == ExitCode.FAILED
    assert export.stderr.read() == b""


def test_an_error_quoting_data_shows_it_as_written(inbox: Path) -> None:
    # rich turned ":ab:" (an event_id, a handler name, a piece of a URL) into an emoji.
    code, _, err = invoke("dlq", "show", ":ab:x", "--db", str(inbox))
    assert code != 0
    assert "':ab:x'" in err


@pytest.mark.parametrize("command", [("stats",), ("serve", "--port", "0"), ("worker",)])
def test_a_blank_store_variable_is_an_error_not_the_sqlite_default(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    # click reads CIO_WEBHOOKS_STORE= as unset: a receiver meant for PostgreSQL started
    # on a local SQLite file, acknowledging events no worker would ever read.
    result = CliRunner().invoke(
        main,
        [*command, "--data-dir", str(tmp_path / "data")],
        env={"CIO_WEBHOOKS_STORE": "", "CIO_WEBHOOKS_SIGNING_KEYS": "k"},
    )
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "CIO_WEBHOOKS_STORE is set but blank" in result.stderr
    assert not (tmp_path / "data" / "inbox.db").exists()
