"""``alerts test`` and ``alerts prometheus-rules`` in-process (CliRunner), against a
fake Slack / webhook server on loopback; ``--alerts`` of ``serve`` and ``worker``."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from cio_webhooks.cli import main
from cio_webhooks.testing import FakeNotificationServer, free_port

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
