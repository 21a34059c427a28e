"""cio_webhooks.testing: the helpers users test their own receivers with."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from cio_webhooks.testing import free_port, wait_until_listening


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
