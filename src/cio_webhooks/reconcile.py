"""Reconciliation: did we receive every event Customer.io says it produced?

The App API's ``GET /messages`` lists deliveries with a ``metrics`` map (metric ->
unix time).  Each (delivery, metric) there should have arrived as a webhook
event; ``reconcile`` lists those we never stored (missing) and those we stored
for a listed delivery that Customer.io does not report (extra).  With
``backfill``, each missing one is stored as an event marked ``backfilled``: it
reaches the warehouse and the reports, and is stored as already handled, so
policies do not act on it a second time.  Its ``event_id`` is derived from the
delivery and metric, so a second run finds nothing missing and stores nothing.

"Stored" is what the inbox holds *or* the warehouse holds.  The inbox forgets
events once their dedupe window ends (``--dedupe-days``); the warehouse keeps
them for good.  Comparing with the inbox alone would take every pruned event for
a missing one and backfill a second copy of it (a stand-in without the real
event's machine flags), so pass the ``warehouse`` whenever there is one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .customerio import AppClient
from .events import parse_event
from .sinks import SQLiteWarehouse
from .store import PutResult, Store

__all__ = ["COMPARED_METRICS", "Discrepancy", "ReconcileResult", "backfill_event", "reconcile"]

#: Metrics both the webhook and ``/messages`` report per delivery.
COMPARED_METRICS = frozenset(
    {
        "sent",
        "delivered",
        "opened",
        "clicked",
        "converted",
        "bounced",
        "spammed",
        "unsubscribed",
        "failed",
        "dropped",
        "undeliverable",
    }
)
#: How far before ``since`` our own events are looked up (a delivery sent before the
#: window can have an open inside it; its ``sent`` event happened earlier).
LOOKBACK = 7 * 86400
#: Deliveries looked up in the warehouse at a time.
CHUNK = 500


@dataclass(frozen=True)
class Discrepancy:
    delivery_id: str
    metric: str
    object_type: str
    occurred_at: int | None


@dataclass
class ReconcileResult:
    deliveries: int = 0
    missing: list[Discrepancy] = field(default_factory=list)
    extra: list[Discrepancy] = field(default_factory=list)
    backfilled: int = 0


def backfill_event(message: dict[str, Any], metric: str) -> bytes:
    """A webhook-shaped event body for ``metric`` of the App API delivery ``message``."""
    identifiers = message.get("customer_identifiers") or {"id": message.get("customer_id")}
    data = {
        "delivery_id": message["id"],
        "identifiers": identifiers,
        "customer_id": message.get("customer_id"),
        "recipient": message.get("recipient"),
        "subject": message.get("subject"),
    }
    for key in (
        "campaign_id",
        "action_id",
        "broadcast_id",
        "newsletter_id",
        "transactional_message_id",
        "journey_id",
        "content_id",
    ):
        if message.get(key) is not None:
            data[key] = message[key]
    body = {
        "event_id": f"backfill:{message['id']}:{metric}",
        "object_type": message.get("type") or "email",
        "metric": metric,
        "timestamp": message["metrics"][metric],
        "data": {k: v for k, v in data.items() if v is not None},
        "backfilled_from": "app_api_messages",
    }
    return json.dumps(body, separators=(",", ":")).encode()


async def reconcile(
    app: AppClient,
    inbox: Store,
    *,
    since: float,
    now: float,
    backfill: bool = False,
    progress: Callable[[int], None] | None = None,
    warehouse: SQLiteWarehouse | None = None,
) -> ReconcileResult:
    """Compare ``/messages`` since ``since`` with what we stored; optionally store what is missing.

    What we stored is the inbox's events (since ``since - LOOKBACK``) and, when
    ``warehouse`` is given, every row it holds for the listed deliveries, however old.
    """
    ours: dict[str, set[str]] = {}
    for delivery_id, metric in await inbox.delivery_metrics(occurred_since=since - LOOKBACK):
        ours.setdefault(delivery_id, set()).add(metric)
    result = ReconcileResult()
    chunk: list[dict[str, Any]] = []
    async for message in app.messages(start_ts=int(since)):
        result.deliveries += 1
        if progress is not None:
            progress(result.deliveries)
        chunk.append(message)
        if len(chunk) >= CHUNK:
            await _compare(chunk, ours, result, inbox, warehouse, backfill=backfill, now=now)
            chunk = []
    await _compare(chunk, ours, result, inbox, warehouse, backfill=backfill, now=now)
    return result


async def _compare(
    messages: list[dict[str, Any]],
    ours: dict[str, set[str]],
    result: ReconcileResult,
    inbox: Store,
    warehouse: SQLiteWarehouse | None,
    *,
    backfill: bool,
    now: float,
) -> None:
    """Compare one chunk of deliveries; add to ``result``."""
    received: dict[str, set[str]] = {}
    if warehouse is not None and messages:
        ids = [str(message["id"]) for message in messages]
        for delivery_id, metric in await warehouse.delivery_metrics(ids):
            received.setdefault(delivery_id, set()).add(metric)
    for message in messages:
        delivery = str(message["id"])
        object_type = str(message.get("type") or "email")
        theirs = {m for m in (message.get("metrics") or {}) if m in COMPARED_METRICS}
        stored = ours.get(delivery, set()) | received.get(delivery, set())
        for metric in sorted(theirs - stored):
            occurred = message["metrics"][metric]
            result.missing.append(Discrepancy(delivery, metric, object_type, occurred))
            if backfill:
                event = parse_event(
                    backfill_event(message, metric), received_at=now, backfilled=True
                )
                if await inbox.put(event) is PutResult.STORED:
                    result.backfilled += 1
        for metric in sorted((stored & COMPARED_METRICS) - theirs):
            result.extra.append(Discrepancy(delivery, metric, object_type, None))
