"""Who serves the dashboard, as real processes: ``serve`` on a public address without
credentials (webhooks served, /ui refused with a page saying why, one warning), ``worker
--port`` (the dashboard, /metrics and /healthz beside the worker's tasks, and a clean
stop on SIGTERM), and ``ui`` on its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2

from cio_webhooks.testing import free_port, make_event, signed_request, wait_until_listening

KEY = "ui-commands-key"


@contextmanager
def running(args: list[str], cwd: Path, port: int, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    log = cwd / f"{args[0]}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cio_webhooks", *args],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_listening(port, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_serve_on_a_public_address_without_credentials(tmp_path: Path) -> None:
    port = free_port("0.0.0.0")  # noqa: S104 (a test of exactly that)
    args = ["serve", "--host", "0.0.0.0", "--port", str(port), "--data-dir", "data"]  # noqa: S104
    with running([*args, "--signing-key", KEY], tmp_path, port) as proc:
        url = f"http://127.0.0.1:{port}"
        body, headers = signed_request(make_event("ev-public"), key=KEY)
        assert httpx2.post(f"{url}/webhooks/customerio", content=body, headers=headers).is_success
        page = httpx2.get(f"{url}/ui/")
        assert page.status_code == 403
        assert "CIO_WEBHOOKS_UI_PASSWORD" in page.text
        assert "ev-public" not in page.text
        proc.terminate()
        proc.wait(timeout=15)
    log = (tmp_path / "serve.log").read_text()
    assert log.count("event=ui_disabled") == 1
    assert KEY not in log


def test_worker_serves_the_dashboard_metrics_and_health(tmp_path: Path) -> None:
    port = free_port()
    args = ["worker", "--port", str(port), "--data-dir", "data", "--create"]
    with running(args, tmp_path, port, CIO_WEBHOOKS_UI_TOKEN="worker-token") as proc:
        url = f"http://127.0.0.1:{port}"
        assert httpx2.get(f"{url}/healthz").json() == {"status": "ok"}
        metrics = httpx2.get(f"{url}/metrics").text
        assert "cio_webhooks_store_up 1" in metrics
        assert "cio_webhooks_inbox_backlog 0" in metrics
        assert httpx2.get(f"{url}/ui/").status_code == 303  # to the login
        headers = {"authorization": "Bearer worker-token"}
        overview = httpx2.get(f"{url}/ui/", headers=headers)
        assert overview.status_code == 200
        assert "Overview" in overview.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_ui_command_serves_the_dashboard_alone(tmp_path: Path) -> None:
    # a store made by serve, then read by ui
    port = free_port()
    serve = ["serve", "--port", str(port), "--data-dir", "data", "--signing-key", KEY]
    with running(serve, tmp_path, port):
        body, headers = signed_request(make_event("ev-for-ui"), key=KEY)
        url = f"http://127.0.0.1:{port}/webhooks/customerio"
        assert httpx2.post(url, content=body, headers=headers).is_success
    port = free_port()
    ui = ["ui", "--port", str(port), "--data-dir", "data", "--ui-password", "pw"]
    with running(ui, tmp_path, port):
        url = f"http://127.0.0.1:{port}"
        assert httpx2.get(url).headers["location"] == "/ui/"
        assert httpx2.get(f"{url}/ui/events").status_code == 303
        with httpx2.Client(base_url=url) as client:
            login = client.post("/ui/login", data={"user": "admin", "password": "pw"})
            assert login.status_code == 303
            # the cookie is Secure: over plain http the client must be told to send it
            cookie = login.cookies["cio_ui_session"]
            page = client.get("/ui/events", headers={"cookie": f"cio_ui_session={cookie}"})
            assert "ev-for-ui" in page.text
            assert client.post("/webhooks/customerio", content=body).status_code == 404
