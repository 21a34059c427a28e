"""The pages that read: Overview (and its live fragment), Deliverability, Events,
Event, Policies.  Figures come from ``vitals``, ``search`` and ``reports``: a page
only lays them out."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .._exceptions import CioWebhooksError, ConfigError, InvalidEvent, StoreUnavailable
from ..events import METRICS_BY_OBJECT_TYPE, NORMALISED_FIELDS, normalise, parse_event
from ..policies import DEFAULT_RULES, PolicyConfig, load_policies
from ..reports import GROUPINGS, ReportRow, delivery_event_ids, delivery_report_for
from ..search import EventQuery, find_events, parse_since
from ..settings import (
    COMPLAINT_RATE_LIMIT,
    COMPLAINT_RATE_WARN,
    RATE_MIN_VOLUME,
    UI_PAGE_SIZE,
)
from ..store import EventFilter, JobState, StoredEvent
from ..vitals import read_vitals
from ._auth import Session
from ._charts import Line, line_chart
from ._web import Dashboard, Form, render

log = logging.getLogger("cio_webhooks.ui")

__all__ = [
    "cursor",
    "deliverability",
    "event_page",
    "events_page",
    "overview",
    "overview_live",
    "policies_page",
    "since_value",
]

#: Customer.io's webhook timeout: an ack slower than this is a failed delivery to them.
ACK_TIMEOUT = 4.0
#: The largest body the Event page shows whole (bytes); the rest is cut.
BODY_SHOWN = 256 * 1024
STATES = tuple(s.value for s in JobState)


def since_value(text: str, now: float) -> float | None:
    """``24h``, ``7d``, an ISO date or unix seconds; '' is no bound.  Raises
    ``ConfigError`` with a sentence for anything else."""
    text = text.strip()
    if not text:
        return None
    try:
        return parse_since(text, now)
    except ConfigError:
        raise ConfigError(f"{text!r}: use 30m, 24h, 7d, an ISO date or unix seconds") from None


# -- overview ---------------------------------------------------------------------------
async def _overview_context(dash: Dashboard) -> dict[str, Any]:
    try:
        vitals = await read_vitals(dash.store, now=dash.clock())
        alerts = [a for a in await dash.store.alert_states() if a.firing]
    except StoreUnavailable as exc:
        return {"vitals": None, "error": str(exc)}
    series = vitals.series()
    times = [float(row["t"] or 0) for row in series]
    charts = [
        line_chart(
            times,
            [Line("accepted events/s", [row["events_per_s"] for row in series], "line-a")],
            title="Events per second (last hour)",
        ),
        line_chart(
            times,
            [
                Line("p50", [row["ack_p50"] for row in series], "line-a"),
                Line("p99", [row["ack_p99"] for row in series], "line-b"),
            ],
            title="Ack latency p50 / p99",
            unit="s",
            threshold=(ACK_TIMEOUT, f"Customer.io timeout {ACK_TIMEOUT:g} s"),
            log_from=0.001,
        ),
        line_chart(
            times,
            [Line("401 per minute", [row["rejected"] for row in series], "line-bad")],
            title="Requests refused for their signature (401)",
        ),
    ]
    return {
        "vitals": vitals,
        "charts": charts,
        "alerts": alerts,
        "error": None,
        "ack_timeout": ACK_TIMEOUT,
    }


async def overview(dash: Dashboard, request: Request, session: Session, form: Form) -> Response:
    context = await _overview_context(dash)
    return render(request, session, "overview.html", nav="overview", title="Overview", **context)


async def overview_live(
    dash: Dashboard, request: Request, session: Session, form: Form
) -> Response:
    """The Overview's figures alone, which its script fetches every few seconds."""
    context = await _overview_context(dash)
    return render(request, session, "_overview_live.html", **context)


# -- deliverability ---------------------------------------------------------------------
@dataclass(frozen=True)
class _Rates:
    """A report row as the page shows it: rates only past the minimum volume, the
    complaint rate with its band."""

    row: ReportRow
    shown: bool

    def rate(self, part: int, whole: int) -> float | None:
        return part / whole if self.shown and whole > 0 else None

    @property
    def band(self) -> str:
        rate = self.rate(self.row.spammed, self.row.delivered)
        if rate is None:
            return ""
        if rate >= COMPLAINT_RATE_LIMIT:
            return "bad"
        return "warn" if rate >= COMPLAINT_RATE_WARN else "ok"


async def deliverability(
    dash: Dashboard, request: Request, session: Session, form: Form
) -> Response:
    by = request.query_params.get("by", "day")
    since_text = request.query_params.get("since", "30d")
    context: dict[str, Any] = {
        "by": by,
        "since": since_text,
        "groupings": list(GROUPINGS),
        "rows": [],
        "error": None,
        "sink": str(dash.sink) if dash.sink else None,
        "min_volume": RATE_MIN_VOLUME,
        "warn": COMPLAINT_RATE_WARN,
        "limit": COMPLAINT_RATE_LIMIT,
    }
    if by not in GROUPINGS:
        context["error"] = f"Unknown grouping {by!r}."
    elif dash.sink is None:
        context["error"] = (
            "No SQL sink to read: pass --sink sqlite:///PATH or postgresql://… to `ui`,"
            " or configure a SQLite or PostgreSQL sink for the service."
        )
    else:
        try:
            since = since_value(since_text, dash.clock())
            report = await asyncio.to_thread(delivery_report_for, dash.sink, by=by, since=since)
        except CioWebhooksError as exc:
            context["error"] = str(exc)
        else:
            context["rows"] = [_Rates(r, r.delivered >= RATE_MIN_VOLUME) for r in report]
    return render(
        request,
        session,
        "deliverability.html",
        nav="deliverability",
        title="Deliverability",
        **context,
    )


# -- events -----------------------------------------------------------------------------
_QUERY_FIELDS = (
    "since",
    "until",
    "object_type",
    "metric",
    "state",
    "person",
    "email",
    "delivery",
    "campaign",
    "q",
)


def event_query(params: Form, now: float) -> EventQuery:
    """The ``EventQuery`` of the Events page's (or the dead letters') filter fields.
    Raises ``ConfigError`` for a value it cannot read."""

    def text(name: str) -> str | None:
        return (params.get(name) or "").strip() or None

    obj, metric = text("object_type"), text("metric")
    state = text("state")
    if state is not None and state not in STATES:
        raise ConfigError(f"unknown state {state!r}")
    return EventQuery(
        since=since_value(params.get("since", ""), now),
        until=since_value(params.get("until", ""), now),
        kinds=(f"{obj or '*'}.{metric or '*'}",) if obj or metric else (),
        states=(JobState(state),) if state else (),
        person=text("person"),
        email=text("email"),
        delivery=text("delivery"),
        campaign=text("campaign"),
        text=text("q"),
    )


def event_row(stored: StoredEvent) -> dict[str, Any]:
    """What a list shows of an event: the stored columns and a few parsed fields."""
    try:
        fields = normalise(parse_event(stored.body, received_at=stored.received_at))
    except InvalidEvent:
        fields = {}
    return {
        "stored": stored,
        "person": fields.get("person_id"),
        "email": fields.get("email") or fields.get("recipient"),
        "delivery": fields.get("delivery_id"),
    }


def cursor(text: str | None) -> int | None:
    """A ``seq`` or id typed in a query string or form, else None (past 64 bits too,
    and digits other than ASCII ones, which ``isdigit`` takes and ``int`` refuses)."""
    if text and text.isascii() and text.isdigit() and len(text) < 19:
        return int(text)
    return None


async def events_page(dash: Dashboard, request: Request, session: Session, form: Form) -> Response:
    params = {k: request.query_params.get(k, "") for k in _QUERY_FIELDS}
    context: dict[str, Any] = {
        "params": params,
        "rows": [],
        "next_before": None,
        "error": None,
        "object_types": list(METRICS_BY_OBJECT_TYPE),
        "metrics": sorted({m for ms in METRICS_BY_OBJECT_TYPE.values() for m in ms}),
        "states": STATES,
        "paged": bool(request.query_params.get("before")),
    }
    try:
        query = event_query(params, dash.clock())
        page = await find_events(
            dash.store,
            query,
            before_seq=cursor(request.query_params.get("before")),
            limit=UI_PAGE_SIZE,
        )
    except ConfigError as exc:
        context["error"] = str(exc)
    else:
        context["rows"] = [event_row(e) for e in page.events]
        context["next_before"] = page.next_before
    return render(request, session, "events.html", nav="events", title="Events", **context)


# -- one event --------------------------------------------------------------------------
def pretty_body(body: bytes) -> str:
    """The raw body as indented JSON when it is JSON, else as text (cut when huge)."""
    text = body[:BODY_SHOWN].decode("utf-8", "replace")
    try:
        shown = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        shown = text
    if len(body) > BODY_SHOWN:
        shown += f"\n… ({len(body) - BODY_SHOWN} more bytes)"
    return shown


async def _same_delivery(dash: Dashboard, delivery: str) -> list[StoredEvent]:
    """The stored events of ``delivery``, newest first.  The warehouse's ``delivery_id``
    index finds them at once; without a SQL sink (or when it cannot be read) the store
    is searched, which scans it newest first (``search.SCAN_LIMIT`` events at most).
    An event the sink has not loaded yet (seconds old) is missing from the first."""
    if dash.sink is not None:
        try:
            ids = await asyncio.to_thread(
                delivery_event_ids, dash.sink, delivery, limit=UI_PAGE_SIZE + 1
            )
        except (StoreUnavailable, ConfigError) as exc:
            log.warning("event=ui_sink_unreadable error=%s", str(exc)[:300])
        else:
            where = EventFilter(event_ids=tuple(ids))
            return await dash.store.browse(where, limit=max(1, len(ids)))
    page = await find_events(dash.store, EventQuery(delivery=delivery), limit=UI_PAGE_SIZE)
    return page.events


async def event_page(dash: Dashboard, request: Request, session: Session, form: Form) -> Response:
    event_id = request.path_params["event_id"]
    stored = await dash.store.get_event(event_id)
    if stored is None:
        return render(
            request,
            session,
            "error.html",
            status=404,
            title="No such event",
            message=f"No stored event {event_id!r} (it may have been pruned).",
        )
    try:
        event = parse_event(stored.body, received_at=stored.received_at)
        fields: dict[str, Any] = normalise(event)
    except InvalidEvent:
        fields = {}
    runs = await dash.store.handler_runs(stored.seq)
    actions = await dash.ledger.recent(event_id=stored.event_id, limit=100) if dash.ledger else []
    delivery = fields.get("delivery_id")
    siblings = (
        [event_row(e) for e in await _same_delivery(dash, delivery) if e.seq != stored.seq]
        if delivery
        else []
    )
    return render(
        request,
        session,
        "event.html",
        nav="events",
        title=f"Event {stored.event_id}",
        stored=stored,
        body=pretty_body(stored.body),
        fields=[(name, fields.get(name)) for name in NORMALISED_FIELDS if name in fields],
        runs=runs,
        actions=actions,
        siblings=siblings,
        delivery=delivery,
    )


# -- policies ---------------------------------------------------------------------------
async def policies_page(
    dash: Dashboard, request: Request, session: Session, form: Form
) -> Response:
    error = None
    config: PolicyConfig | None = None
    if dash.policies is not None:
        try:
            config = load_policies(dash.policies)
        except ConfigError as exc:
            error = str(exc)
    # An unreadable file shows no rules: the defaults are not what it says.
    rules = config.rules if config else () if dash.policies is not None else DEFAULT_RULES
    recent = await dash.ledger.recent(limit=100) if dash.ledger else []
    dry = await dash.ledger.recent(limit=100, status="dry_run") if dash.ledger else []
    return render(
        request,
        session,
        "policies.html",
        nav="policies",
        title="Policies",
        source=str(dash.policies) if dash.policies else None,
        dry_run_all=bool(config and config.dry_run),
        rules=rules,
        error=error,
        recent=recent,
        dry=dry,
        has_ledger=dash.ledger is not None,
    )
