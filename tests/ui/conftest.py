"""A real ``serve`` on 127.0.0.1 with real signed events, for the dashboard's browser
tests: a handler that fails until a file exists (so an event becomes a dead letter,
and a retry from the page succeeds), a body that is not an event (quarantined), a
dry-run policy (audit rows), and enough email deliveries for the Deliverability page
to show rates.  And headless Chromium (Debian's) through Playwright."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from cio_webhooks.testing import free_port, make_event, signed_request, wait_until_listening

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
KEY = "ui-test-signing-key"
PASSWORD = "correct horse battery staple"
TOKEN = "ui-test-token-0123456789"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: A word only the one event's body holds: the body search must find exactly it.
NEEDLE = "zebrafinch"

HOOKS = '''
import os
from pathlib import Path

from cio_webhooks import Router

router = Router()


@router.on("email.bounced")
def bounce_handler(event):
    """Fails until the test creates the file: the event dies, then a retry succeeds."""
    if not Path(os.environ["UI_TEST_OK_FILE"]).exists():
        raise RuntimeError("the mail system is down <script>alert(1)</script>")
'''

POLICIES = """
dry_run = true

[[rule]]
name = "spam-complaint-unsubscribe"
on = ["*.spammed"]
action = "unsubscribe"
attributes = { spam_complaint_at = "{timestamp}" }
"""


@dataclass
class Service:
    """The running ``serve``: where it listens, and the files the tests use."""

    url: str
    ok_file: Path
    dead_event_id: str
    needle_event_id: str
    delivery_id: str
    log: Path

    @property
    def ui(self) -> str:
        return f"{self.url}/ui"


def _events(now: int) -> list[tuple[str, dict[str, Any] | bytes]]:
    """What the tests post: samples, deliveries by domain, one to find by body text."""
    posts: list[tuple[str, dict[str, Any] | bytes]] = []
    for name in ("email_sent.json", "email_opened.json", "email_clicked.json", "sms_clicked.json"):
        posts.append((name, (SAMPLES / name).read_bytes()))
    domains = ("gmail.com", "yahoo.com", "outlook.com")
    for i in range(130):  # enough deliveries for the rates to show (RATE_MIN_VOLUME)
        person = f"p{i}"
        recipient = f"{person}@{domains[i % 3]}"
        common: dict[str, Any] = {
            "person_id": person,
            "recipient": recipient,
            "campaign_id": 7 + i % 2,
            "delivery_id": f"dlv-{i}",
        }
        for metric in ("sent", "delivered"):
            event = make_event(f"ev-{metric}-{i}", metric=metric, timestamp=now, **common)
            posts.append((f"{metric} {i}", event))
    # delivery 1 is also marked as spam and opened
    for name, metric in (("spam", "spammed"), ("open", "opened")):
        later = make_event(
            f"ev-{metric}-1",
            metric=metric,
            timestamp=now,
            person_id="p1",
            recipient="p1@yahoo.com",
            campaign_id=8,
            delivery_id="dlv-1",
        )
        posts.append((name, later))
    needle = make_event(
        "ev-needle",
        metric="clicked",
        timestamp=now,
        person_id="p-needle",
        href=f"https://example.com/{NEEDLE}",
    )
    posts.append(("needle", needle))
    dead = make_event(
        "ev-dead",
        metric="bounced",
        timestamp=now,
        person_id="p-dead",
        failure_message="550 mailbox unavailable",
    )
    posts.append(("bounce", dead))
    posts.append(("not an event", b'{"hello": "<b>not an event</b>"}'))
    return posts


def _post_all(url: str) -> None:
    now = int(time.time())
    with httpx2.Client(base_url=url, timeout=10) as client:
        for name, event in _events(now):
            body, headers = signed_request(event, key=KEY)
            answer = client.post("/webhooks/customerio", content=body, headers=headers)
            assert answer.status_code == 200, (name, answer.text)
        bad = client.post(
            "/webhooks/customerio",
            content=b"{}",
            headers={"x-cio-signature": "00", "x-cio-timestamp": str(now)},
        )
        assert bad.status_code == 401


def wait_for(condition: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("ui-service")
    (root / "ui_test_hooks.py").write_text(HOOKS)
    (root / "policies.toml").write_text(POLICIES)
    ok_file = root / "handler-ok"
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
        "UI_TEST_OK_FILE": str(ok_file),
        "CIO_WEBHOOKS_UI_PASSWORD": PASSWORD,
        "CIO_WEBHOOKS_UI_TOKEN": TOKEN,
    }
    log = root / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cio_webhooks",
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(root / "data"),
                "--signing-key",
                KEY,
                "--handlers",
                "ui_test_hooks:router",
                "--max-attempts",
                "1",
                "--policies",
                str(root / "policies.toml"),
            ],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_listening(port, proc)
        url = f"http://127.0.0.1:{port}"
        _post_all(url)
        service = Service(
            url=url,
            ok_file=ok_file,
            dead_event_id="ev-dead",
            needle_event_id="ev-needle",
            delivery_id="dlv-1",
            log=log,
        )
        yield service
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one module: Playwright's sync API runs an event loop in this thread
    while it is open, and the asyncio tests of later modules cannot start beside it."""
    if not CHROMIUM.exists():
        pytest.fail("Debian's /usr/bin/chromium is missing: `make test` installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
