"""Helpers for testing code that receives Customer.io webhooks.  Public API.

body, headers = signed_request({"event_id": "01H...", ...}, key="secret", timestamp=now)
clock = FixedClock(1_700_000_000); clock.advance(60)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from .signature import signed_headers

__all__ = ["FixedClock", "make_event", "signed_request"]


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
