"""cio_webhooks.testing: the helpers users test their own receivers with."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from cio_webhooks.testing import FakeNotificationServer, free_port, wait_until_listening


def test_nothing_listens_on_a_free_port() -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", free_port()), timeout=1).close()


def test_wait_until_listening_returns_once_the_port_accepts() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        wait_until_listening(server.getsockname()[1], timeout=5)


def test_wait_until_listening_says_when_the_server_exited_first() -> None:
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    exited.wait()
    with pytest.raises(RuntimeError, match="exited with 3 before listening"):
        wait_until_listening(free_port(), exited, timeout=5)


def test_wait_until_listening_gives_up_after_its_timeout() -> None:
    with pytest.raises(RuntimeError, match="nothing listened"):
        wait_until_listening(free_port(), timeout=0.3)


def test_the_fake_notification_server_records_posts_and_fails_on_request() -> None:
    def post(url: str, body: bytes) -> int:
        request = urllib.request.Request(url, data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    with FakeNotificationServer() as hooks:
        assert post(hooks.url("/slack"), b'{"text": "hi"}') == 200
        assert post(hooks.url("/other"), b"not json") == 200
        hooks.fail("/slack", 503)
        assert post(hooks.url("/slack"), b'{"text": "again"}') == 503
        assert hooks.received("/slack") == [{"text": "hi"}, {"text": "again"}]
        assert hooks.received() == [{"text": "hi"}, "not json", {"text": "again"}]
        hooks.clear()
        assert hooks.received() == []
    with pytest.raises(RuntimeError, match="not started"):
        _ = FakeNotificationServer().port
