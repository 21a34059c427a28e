"""``sinks status|replay|forget`` on a store whose sinks a loader has run."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cio_webhooks.cli import main
from cio_webhooks.events import parse_event
from cio_webhooks.sinks import Loader, SQLiteWarehouse
from cio_webhooks.store.sqlite import SQLiteStore
from cio_webhooks.testing import make_event


def invoke(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=stdin, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An inbox of 5 events (two received an hour ago), loaded into sink `local`; sink
    `broken` failed on its last attempt."""

    async def build() -> None:
        now = time.time()
        async with SQLiteStore(tmp_path / "inbox.db") as inbox:
            for i in range(5):
                body = json.dumps(make_event(f"e{i}")).encode()
                at = now - 3600 if i < 2 else now - 60
                await inbox.put(parse_event(body, received_at=at), handled=True)
            sink = SQLiteWarehouse(tmp_path / "warehouse.db", name="local")
            await Loader(inbox, [sink]).catch_up()
            await sink.close()
            await inbox.register_sink("broken", "bigquery://p/d", now=now)
            await inbox.lease_sink("broken", "me", now=now, until=now + 30)
            await inbox.sink_failed("broken", "me", "403 Access Denied", now=now)

    asyncio.run(build())
    return tmp_path


def test_status_shows_each_sink_its_backlog_and_last_error(data_dir: Path) -> None:
    code, out, _ = invoke("sinks", "status", "--data-dir", str(data_dir), "--json")
    assert code == 0
    sinks = {s["name"]: s for s in json.loads(out)}
    assert sinks["local"]["seq"] == 5
    assert sinks["local"]["rows_behind"] == 0
    assert sinks["local"]["error"] is None
    assert sinks["broken"]["rows_behind"] == 5
    assert sinks["broken"]["failures"] == 1
    assert sinks["broken"]["error"] == "403 Access Denied"
    assert sinks["broken"]["lag_seconds"] >= 3600
    code, out, _ = invoke("sinks", "status", "--data-dir", str(data_dir))
    assert code == 0
    assert "403 Access Denied" in out
    assert "bigquery://p/d" in out


def test_replay_rewinds_a_sink_to_the_events_received_since(data_dir: Path) -> None:
    code, out, _ = invoke("sinks", "replay", "local", "--since", "30m", "--data-dir", str(data_dir))
    assert code == 0, out
    assert "rewound to seq 2" in out
    _, out, _ = invoke("sinks", "status", "--data-dir", str(data_dir), "--json")
    local = next(s for s in json.loads(out) if s["name"] == "local")
    assert (local["seq"], local["rows_behind"]) == (2, 3)


def test_an_unknown_sink_is_a_usage_error_naming_the_known_ones(data_dir: Path) -> None:
    code, _, err = invoke("sinks", "replay", "nope", "--since", "1d", "--data-dir", str(data_dir))
    assert code == 2
    assert "no sink named 'nope'" in err
    assert "broken, local" in err


def test_forget_drops_a_sink_after_confirmation(data_dir: Path) -> None:
    code, _, _ = invoke("sinks", "forget", "local", "--data-dir", str(data_dir), stdin="n\n")
    assert code == 1  # aborted
    code, out, _ = invoke("sinks", "forget", "local", "--yes", "--data-dir", str(data_dir))
    assert code == 0, out
    _, out, _ = invoke("sinks", "status", "--data-dir", str(data_dir), "--json")
    assert [s["name"] for s in json.loads(out)] == ["broken"]


def test_forget_refuses_a_sink_a_live_process_is_loading(data_dir: Path) -> None:
    # Forgotten under a running loader, the sink stopped loading for good and vanished
    # from `sinks status` and /metrics: a silent stall.
    async def lease() -> None:
        now = time.time()
        async with SQLiteStore(data_dir / "inbox.db") as inbox:
            owner = f"{socket.gethostname()}:{os.getpid()}:loader"  # this live process
            await inbox.lease_sink("local", owner, now=now, until=now + 30)

    asyncio.run(lease())
    code, _, err = invoke("sinks", "forget", "local", "--yes", "--data-dir", str(data_dir))
    assert code == 2
    assert "being loaded by" in err
    _, out, _ = invoke("sinks", "status", "--data-dir", str(data_dir), "--json")
    assert "local" in [s["name"] for s in json.loads(out)]


def test_status_of_a_store_without_sinks_says_so(tmp_path: Path) -> None:
    async def build() -> None:
        async with SQLiteStore(tmp_path / "inbox.db"):
            pass

    asyncio.run(build())
    code, out, _ = invoke("sinks", "status", "--data-dir", str(tmp_path))
    assert code == 0
    assert "no sinks yet" in out


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///tmp/w.db?email=hash", "needs a salt"),
        ("ftp://lake", "expected one of"),
        ("postgresql://u:s3cret@h/db?sslmod=require", "sslmod"),
    ],
)
def test_a_worker_with_a_bad_sink_exits_2_before_it_starts(
    data_dir: Path, url: str, message: str
) -> None:
    code, _, err = invoke("worker", "--data-dir", str(data_dir), "--sink", url)
    assert code == 2
    assert message in err
    assert "s3cret" not in err
    assert "Traceback" not in err
