"""Events and batches the sink tests share."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from cio_webhooks.events import Event, iso, parse_event
from cio_webhooks.sinks import Batch, Privacy, delivery_rows, event_row
from cio_webhooks.sinks._rows import KEEP_ALL
from cio_webhooks.testing import make_event

from ..conftest import NOW, sample_files

LOADED = NOW + 60.0


def event(
    event_id: str,
    metric: str,
    at: int,
    *,
    delivery: str = "dlv-1",
    backfilled: bool = False,
    **data: Any,
) -> Event:
    body = make_event(event_id, "email", metric, timestamp=at, delivery_id=delivery, **data)
    return parse_event(json.dumps(body).encode(), received_at=at + 0.5, backfilled=backfilled)


def one_delivery() -> list[Event]:
    """Six events of one delivery: a backfilled `delivered` that a later real one
    supersedes, a prefetched (machine) open, a human open, a bounce with a message."""
    return [
        event("e1", "sent", NOW),
        event("e2", "delivered", NOW + 50, backfilled=True),
        event("e3", "delivered", NOW + 100),
        event("e4", "opened", NOW + 20, prefetched=True),
        event("e5", "opened", NOW + 300),
        event("e6", "bounced", NOW + 400, failure_message="550 mailbox unavailable"),
    ]


def samples() -> list[Event]:
    """The samples, each event_id once (as the store keeps them: the first)."""
    events: dict[str, Event] = {}
    for i, path in enumerate(sample_files()):
        parsed = parse_event(path.read_bytes(), received_at=NOW + i)
        events.setdefault(parsed.event_id, parsed)
    return list(events.values())


def batch(events: Sequence[Event], *, first_seq: int = 1, privacy: Privacy = KEEP_ALL) -> Batch:
    stamp = iso(LOADED)
    rows = [event_row(e, stamp, privacy) for e in events]
    return Batch(rows, delivery_rows(rows, stamp), first_seq, first_seq + len(rows) - 1, LOADED)
