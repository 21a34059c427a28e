"""``alerts test`` and ``alerts prometheus-rules`` in-process (CliRunner), against a
fake Slack / webhook server on loopback; ``--alerts`` of ``serve`` and ``worker``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from cio_webhooks import Dispatcher, RetryPolicy, Router, parse_event
from cio_webhooks.cli import main
from cio_webhooks.store.sqlite import SQLiteStore
from cio_webhooks.testing import FakeNotificationServer, free_port, make_event

from ..alerts.test_prometheus import alerts_of


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False, env=env)
    return result.exit_code, result.stdout, result.stderr


def alerts_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "alerts.toml"
    path.write_text(text)
    return path


def test_alerts_test_reaches_every_notifier(tmp_path: Path) -> None:
    with FakeNotificationServer() as hooks:
        path = alerts_file(
            tmp_path,
            f'[notify]\nslack = "{hooks.url("/slack")}"\nwebhook = "{hooks.url("/hook")}"\n',
        )
        code, _, err = invoke("alerts", "test", "--alerts", str(path))
        assert code == 0, err
        assert "log: sent" in err
        assert "slack: sent" in err
        assert "webhook: sent" in err
        assert hooks.received("/hook")[0]["url"] == "http://127.0.0.1:8000/ui"
        assert len(hooks.received("/slack")) == 1


def test_alerts_test_exits_1_naming_the_notifiers_that_failed(tmp_path: Path) -> None:
    with FakeNotificationServer() as hooks:
        hooks.fail("/slack-secret", 404)
        gone = f"http://127.0.0.1:{free_port()}/hook-secret"
        path = alerts_file(
            tmp_path, f'[notify]\nslack = "{hooks.url("/slack-secret")}"\nwebhook = "{gone}"\n'
        )
        code, _, err = invoke("alerts", "test", "--alerts", str(path))
    assert code == 1
    assert "error: alert notifier(s) failed: slack, webhook" in err
    assert "slack: failed: slack: answered HTTP 404" in err
    assert "secret" not in err


def test_alerts_test_with_no_file_logs_only() -> None:
    code, _, err = invoke("alerts", "test")
    assert code == 0
    assert "log: sent" in err


def test_prometheus_rules_prints_a_rules_file(tmp_path: Path) -> None:
    path = alerts_file(tmp_path, '[rules.sink_lag]\nlimit = "1h"\n')
    code, out, err = invoke("alerts", "prometheus-rules", "--alerts", str(path))
    assert code == 0, err
    rules = alerts_of(out)
    assert rules["CioWebhooksSinkLag"]["expr"].endswith("> 3600")


def test_a_bad_alerts_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = alerts_file(tmp_path, "[rules.sink_lag]\nlimt = '1h'\n")
    for command in (["alerts", "test"], ["alerts", "prometheus-rules"]):
        code, _, err = invoke(*command, "--alerts", str(path))
        assert code == 2
        assert f"error: alerts {path}: rules.sink_lag: unknown key(s) limt" in err
        assert "Traceback" not in err


def test_serve_and_worker_refuse_a_bad_alerts_file_before_starting(tmp_path: Path) -> None:
    path = alerts_file(tmp_path, "[notify]\nslack = 'not a url'\n")
    env = {"CIO_WEBHOOKS_ALERTS": str(path)}
    for command in (
        ["worker", "--data-dir", str(tmp_path), "--create"],
        ["serve", "--data-dir", str(tmp_path), "--port", "0", "--signing-key", "k"],
    ):
        code, _, err = invoke(*command, env=env)
        assert code == 2, err
        assert "notify.slack: must be an http:// or https:// URL" in err


def test_a_worker_sends_the_alerts_of_its_file(tmp_path: Path) -> None:
    async def one_dead_letter() -> None:
        async with SQLiteStore(tmp_path / "inbox.db") as inbox:
            body = json.dumps(make_event("dead1", "sms", "failed")).encode()
            await inbox.put(parse_event(body, received_at=time.time()))
            router = Router()

            @router.on("sms.failed", name="always_fails")
            def fail(event: object) -> None:
                raise ValueError("no route to host")

            dispatcher = Dispatcher(inbox, router, retry=RetryPolicy(max_attempts=1))
            while await dispatcher.run_once():
                pass

    asyncio.run(one_dead_letter())
    with FakeNotificationServer() as hooks:
        path = alerts_file(tmp_path, f'[notify]\nwebhook = "{hooks.url("/hook")}"\n')
        worker = subprocess.Popen(
            [sys.executable, "-m", "cio_webhooks", "worker", "--data-dir", str(tmp_path)],
            env={**os.environ, "CIO_WEBHOOKS_ALERTS": str(path)},
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while not hooks.received("/hook") and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            worker.send_signal(signal.SIGTERM)
            _, err = worker.communicate(timeout=60)
        [body] = hooks.received("/hook")
    assert (body["rule"], body["status"], body["value"]) == ("dead_letters", "firing", 1)
    assert body["url"] == "http://127.0.0.1:8000/ui/dead-letters"
    assert "event=alerts_started" in err
    assert "event=alert rule=dead_letters status=firing" in err
    assert worker.returncode == 0, err
