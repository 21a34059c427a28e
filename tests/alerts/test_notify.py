"""Notifiers against a real HTTP server on loopback (``FakeNotificationServer``): what
Slack and a JSON webhook receive, and a failing one logged without its URL, the
others served anyway."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from cio_webhooks.alerts import (
    LogNotifier,
    Message,
    NotifyConfig,
    SlackNotifier,
    WebhookNotifier,
    build_notifiers,
    send_all,
    send_test,
)
from cio_webhooks.testing import FakeNotificationServer, free_port

NOW = 1_700_000_000.0
MESSAGE = Message(
    rule="complaint_rate",
    status="firing",
    level="critical",
    value=0.0035,
    threshold=0.003,
    text="spam complaint rate 0.35% (35 of 10000 delivered in 1 d; warning 0.1%, critical 0.3%)",
    url="http://127.0.0.1:8000/ui/deliverability",
    at=NOW,
)


@pytest.fixture
def hooks() -> Iterator[FakeNotificationServer]:
    with FakeNotificationServer() as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_slack_gets_the_figure_the_threshold_and_a_link(
    hooks: FakeNotificationServer, session: aiohttp.ClientSession
) -> None:
    await SlackNotifier(hooks.url("/slack"), session).send(MESSAGE)
    [body] = hooks.received("/slack")
    assert body == {
        "text": ":rotating_light: *FIRING complaint_rate (critical)*: spam complaint rate 0.35%"
        " (35 of 10000 delivered in 1 d; warning 0.1%, critical 0.3%)"
        " <http://127.0.0.1:8000/ui/deliverability|Open the dashboard>"
    }


async def test_a_json_webhook_gets_every_field(
    hooks: FakeNotificationServer, session: aiohttp.ClientSession
) -> None:
    await WebhookNotifier(hooks.url("/hook"), session).send(MESSAGE)
    [body] = hooks.received("/hook")
    assert body == {
        "rule": "complaint_rate",
        "status": "firing",
        "level": "critical",
        "value": 0.0035,
        "threshold": 0.003,
        "message": f"FIRING complaint_rate (critical): {MESSAGE.text}",
        "url": "http://127.0.0.1:8000/ui/deliverability",
        "at": "2023-11-14T22:13:20Z",
        "repeat": False,
    }


async def test_a_failing_notifier_is_logged_without_its_url_and_stops_nobody(
    hooks: FakeNotificationServer,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooks.fail("/slack-secret-token", 500)
    gone = f"http://127.0.0.1:{free_port()}/webhook-secret-token"
    notify = NotifyConfig(slack=hooks.url("/slack-secret-token"), webhook=gone)
    notifiers = [*build_notifiers(notify, session), WebhookNotifier(hooks.url("/ok"), session)]
    caplog.set_level(logging.INFO, logger="cio_webhooks.alerts")
    failed = await send_all(notifiers, MESSAGE)
    assert failed == {
        "slack": "slack: answered HTTP 500",
        "webhook": "webhook: could not be reached (ClientConnectorError)",
    }
    assert len(hooks.received("/ok")) == 1  # the others got it
    assert "event=alert rule=complaint_rate status=firing severity=critical" in caplog.text
    assert "event=alert_notify_failed notifier=slack" in caplog.text
    assert "secret-token" not in caplog.text
    assert "secret-token" not in repr(notifiers)


async def test_a_notifier_that_does_not_answer_times_out(session: aiohttp.ClientSession) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        slow = WebhookNotifier(f"http://127.0.0.1:{port}/x", session, timeout=0.2)
        assert await send_all([slow], MESSAGE) == {"webhook": "webhook: no answer within 0.2 s"}
    finally:
        server.close()


async def test_the_log_notifier_writes_one_structured_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="cio_webhooks.alerts")
    resolved = Message("dead_letters", "resolved", "warning", 0, 1, "0 dead letter(s)", "u", NOW)
    await LogNotifier().send(resolved)
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert record.getMessage().startswith("event=alert rule=dead_letters status=resolved")


async def test_send_test_reaches_every_notifier(hooks: FakeNotificationServer) -> None:
    notify = NotifyConfig(slack=hooks.url("/slack"), webhook=hooks.url("/hook"))
    names, failed = await send_test(notify, "http://127.0.0.1:8000/ui", now=NOW)
    assert names == ["log", "slack", "webhook"]
    assert failed == {}
    assert hooks.received("/hook")[0]["status"] == "test"
    assert "TEST cio-webhooks alerts" in hooks.received("/slack")[0]["text"]
