"""Helpers for testing code that receives Customer.io webhooks.  Public API.

body, headers = signed_request({"event_id": "01H...", ...}, key="secret", timestamp=now)
clock = FixedClock(1_700_000_000); clock.advance(60)
port = free_port(); proc = subprocess.Popen([... "serve", "--port", str(port)])
wait_until_listening(port, proc)
with FakeNotificationServer() as hooks:   # a Slack / JSON webhook stand-in on loopback
    notify = {"slack": hooks.url("/slack")}; ...; hooks.received("/slack") -> [{"text": ...}]
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from .signature import signed_headers

__all__ = [
    "FakeNotificationServer",
    "FixedClock",
    "free_port",
    "make_event",
    "signed_request",
    "wait_until_listening",
]


@dataclass
class FixedClock:
    """A clock that moves only when told to; pass it wherever a ``clock`` is taken."""

    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def signed_request(
    event: dict[str, Any] | bytes, *, key: str, timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers Customer.io would send for ``event`` (a dict or exact bytes)."""
    body = event if isinstance(event, bytes) else json.dumps(event, separators=(",", ":")).encode()
    ts = int(time.time()) if timestamp is None else timestamp
    return body, signed_headers(body, key, timestamp=ts)


def make_event(
    event_id: str,
    object_type: str = "email",
    metric: str = "delivered",
    *,
    timestamp: int = 1_700_000_000,
    **data: Any,
) -> dict[str, Any]:
    """A minimal, realistic event payload; ``data`` fields override the defaults."""
    person = data.pop("person_id", "person-1")
    payload_data: dict[str, Any] = {
        "identifiers": {"id": person, "email": f"{person}@example.com", "cio_id": "d9c106000001"},
        "customer_id": person,
        "delivery_id": f"dlv-{event_id}",
        "campaign_id": 12,
        "action_id": 34,
        "recipient": f"{person}@example.com",
        "subject": "Hello",
    }
    payload_data.update(data)
    return {
        "event_id": event_id,
        "object_type": object_type,
        "metric": metric,
        "timestamp": timestamp,
        "data": payload_data,
    }


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_until_listening(
    port: int,
    process: subprocess.Popen[bytes] | None = None,
    *,
    host: str = "127.0.0.1",
    timeout: float = 30.0,
) -> None:
    """Return once ``host:port`` accepts connections; raise ``RuntimeError`` if
    ``process`` exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on {host}:{port} within {timeout:g} s")


class FakeNotificationServer:
    """A Slack incoming webhook / JSON webhook stand-in on loopback, in a thread (so it
    serves sync code, ``CliRunner`` and any event loop alike).

    Every POST is answered ``status`` (200 unless ``fail(path, status)`` was called for
    its path) and its JSON body recorded: ``received(path)`` lists them in order.  A
    body that is not JSON is recorded as its text."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._posts: list[tuple[str, Any]] = []
        self._statuses: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the server is not started")
        return int(self._server.server_address[1])

    def url(self, path: str = "/hook") -> str:
        """The URL of ``path`` on this server (any path is accepted)."""
        return f"http://{self.host}:{self.port}{path}"

    def fail(self, path: str, status: int = 500) -> None:
        """Answer POSTs to ``path`` with ``status`` from now on (200 again: ``fail(path, 200)``)."""
        with self._lock:
            self._statuses[path] = status

    def received(self, path: str | None = None) -> list[Any]:
        """The bodies POSTed (to ``path``, or anywhere), oldest first."""
        with self._lock:
            return [body for where, body in self._posts if path is None or where == path]

    def clear(self) -> None:
        with self._lock:
            self._posts.clear()

    def start(self) -> FakeNotificationServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                with owner._lock:
                    owner._posts.append((self.path, body))
                    status = owner._statuses.get(self.path, 200)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: tests read received(), not stderr

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> FakeNotificationServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
