"""Helpers for testing code that receives Customer.io webhooks.  Public API.

body, headers = signed_request({"event_id": "01H...", ...}, key="secret", timestamp=now)
clock = FixedClock(1_700_000_000); clock.advance(60)
port = free_port(); proc = subprocess.Popen([... "serve", "--port", str(port)])
wait_until_listening(port, proc)
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from .signature import signed_headers

__all__ = ["FixedClock", "free_port", "make_event", "signed_request", "wait_until_listening"]


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
