"""What lands in a warehouse, defined once for every sink: the row of an event, the
row of a delivery and how two delivery rows merge, the per-channel views, and the
personal-data options.

Two tables::

    events       one row per event_id: events.normalise() plus ``raw`` and ``loaded_at``
    deliveries   one row per delivery_id, kept up to date as its events arrive

Every sink writes the same rows; only the types change per warehouse (times are
ISO-8601 UTC text here, ``2026-01-02T03:04:05.678Z``, which sorts as it reads; each
sink converts ``timestamp`` columns to its own type).

A deliveries row is a fold of its events.  ``merge_delivery`` is the only rule, and
it is a semilattice join: commutative, associative and idempotent.  So the row does
not depend on the order events arrive in, and replaying a batch (a crash between a
write and its cursor update) changes nothing.  Per column:

- ``<metric>_at``: the first time the metric happened.  A real event always beats a
  backfilled stand-in (``reconcile --backfill``); among equals the earliest wins.
  ``backfilled_metrics`` lists the metrics whose time still comes from a stand-in.
  ``human_opened_at``/``human_clicked_at`` count opens without Customer.io's
  ``prefetched``/``proxied``/``synthetic`` flags and clicks without ``machine``
  (a flag Customer.io did not send counts as human, as in ``reports``); a backfilled
  open or click has no flags to tell, and counts only in ``opened_at``/``clicked_at``.
- ``last_failure_message``: the message of the latest failure (``bounced``,
  ``dropped``, ``failed``, ``undeliverable``, ``attempted``) that carried one, with
  its time in ``last_failure_at``.
- ``first_event_at``/``last_event_at``: the earliest and latest of the metric times
  above (so a stand-in that a real event replaced leaves no trace in them).
- the ids, person and message fields: the smallest non-null value.  Customer.io
  sends the same value on every event of a delivery; where two events disagree,
  "smallest" keeps the row independent of arrival order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from ..events import NORMALISED_FIELDS, Event, normalised_values

__all__ = [
    "CHANNEL_VIEWS",
    "DELIVERY_COLUMNS",
    "DELIVERY_METRICS",
    "EVENT_COLUMNS",
    "Column",
    "DeliveryRow",
    "EventRow",
    "Privacy",
    "delivery_rows",
    "event_row",
    "merge_delivery",
]

Kind = Literal["text", "timestamp", "bool", "json"]
#: A row in the column order of its table.
EventRow = tuple[Any, ...]
DeliveryRow = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Column:
    """A column of a warehouse table: its name and what it holds."""

    name: str
    kind: Kind


_TIMES = {"occurred_at", "received_at", "loaded_at"}
_BOOLS = {"prefetched", "proxied", "synthetic", "machine", "backfilled"}


def _kind(name: str) -> Kind:
    if name in _TIMES or name.endswith("_at"):
        return "timestamp"
    if name in _BOOLS:
        return "bool"
    return "json" if name == "raw" else "text"


#: The ``events`` table: the normalised fields, the raw body (None when the sink
#: drops it) and when the loader wrote the row.
EVENT_COLUMNS: tuple[Column, ...] = tuple(
    Column(name, _kind(name)) for name in (*NORMALISED_FIELDS, "raw", "loaded_at")
)

#: Metrics with a first-time column in ``deliveries``, in column order.
#: ``human_opened``/``human_clicked`` are opens and clicks not flagged as machine.
DELIVERY_METRICS: tuple[str, ...] = (
    "drafted",
    "attempted",
    "sent",
    "delivered",
    "opened",
    "human_opened",
    "clicked",
    "human_clicked",
    "converted",
    "bounced",
    "dropped",
    "spammed",
    "unsubscribed",
    "failed",
    "undeliverable",
    "replied",
)
#: Metrics whose ``failure_message`` becomes the delivery's ``last_failure_message``.
FAILURE_METRICS = frozenset({"bounced", "dropped", "failed", "undeliverable", "attempted"})

#: Fields that describe the delivery, taken as the smallest non-null value.
_ATTRIBUTES: tuple[str, ...] = (
    "channel",
    "campaign_id",
    "action_id",
    "broadcast_id",
    "newsletter_id",
    "transactional_message_id",
    "journey_id",
    "person_id",
    "email",
    "cio_id",
    "recipient",
    "subject",
)
_METRIC_COLUMNS = tuple(f"{m}_at" for m in DELIVERY_METRICS)
_TAIL = (
    "last_failure_message",
    "last_failure_at",
    "first_event_at",
    "last_event_at",
    "backfilled_metrics",
    "updated_at",
)
#: The ``deliveries`` table, ``delivery_id`` first.
DELIVERY_COLUMNS: tuple[Column, ...] = (
    Column("delivery_id", "text"),
    *(Column(name, "text") for name in _ATTRIBUTES),
    *(Column(name, "timestamp") for name in _METRIC_COLUMNS),
    Column("last_failure_message", "text"),
    Column("last_failure_at", "timestamp"),
    Column("first_event_at", "timestamp"),
    Column("last_event_at", "timestamp"),
    Column("backfilled_metrics", "text"),
    Column("updated_at", "timestamp"),
)

#: Per-channel views over ``events``, named as in Fivetran's Customer.io connector
#: (``whatsapp_event`` is ours): view name -> ``object_type``.
CHANNEL_VIEWS: dict[str, str] = {
    "email_event": "email",
    "sms_event": "sms",
    "push_notification_event": "push",
    "in_app_message_event": "in_app",
    "slack_event": "slack",
    "webhook_event": "webhook",
    "customer_event": "customer",
    "whatsapp_event": "whatsapp",
}

# Positions, computed once: merge_delivery runs for every delivery of every batch.
_A0 = 1
_M0 = _A0 + len(_ATTRIBUTES)
_T0 = _M0 + len(_METRIC_COLUMNS)
_FAIL_MSG, _FAIL_AT, _FIRST, _LAST, _BACKFILLED, _UPDATED = range(_T0, _T0 + len(_TAIL))
assert len(DELIVERY_COLUMNS) == _UPDATED + 1

# Where the personal fields sit in a body, for Privacy.
_ADDRESS_PATHS = (
    ("identifiers", "email"),
    ("identifiers", "phone"),
    ("email_address",),
    ("recipient",),
    ("to",),
)
_CONTENT_FIELDS = ("content", "headers")


@dataclass(frozen=True)
class Privacy:
    """Personal-data options of one sink.

    ``addresses``: what happens to email addresses and recipients (the ``email`` and
    ``recipient`` columns, and in ``raw``: ``identifiers.email``, ``identifiers.phone``,
    ``email_address``, ``recipient``, ``to``): ``keep``; ``hash``, the hex SHA-256 of
    ``salt`` + the value (the same address gives the same hash, so joins and counts
    still work); or ``drop`` (None).  ``raw``: keep the body in the ``raw`` column.
    ``content``: keep the message ``content`` and ``headers`` inside ``raw``.
    """

    addresses: Literal["keep", "hash", "drop"] = "keep"
    raw: bool = True
    content: bool = True
    salt: bytes = b""

    @property
    def rewrites_raw(self) -> bool:
        return self.raw and (self.addresses != "keep" or not self.content)

    def address(self, value: str | None) -> str | None:
        if value is None or self.addresses == "keep":
            return value
        if self.addresses == "drop":
            return None
        return hashlib.sha256(self.salt + value.encode("utf-8", "surrogatepass")).hexdigest()


KEEP_ALL = Privacy()

_EMAIL = NORMALISED_FIELDS.index("email")
_RECIPIENT = NORMALISED_FIELDS.index("recipient")


def _raw(event: Event, privacy: Privacy) -> str | None:
    if not privacy.raw:
        return None
    if not privacy.rewrites_raw:
        return event.raw.decode("utf-8", "replace")
    body = event.payload
    data = body.get("data")
    if isinstance(data, dict):
        if not privacy.content:
            for name in _CONTENT_FIELDS:
                data.pop(name, None)
        for path in _ADDRESS_PATHS:
            parent: Any = data
            for key in path[:-1]:
                parent = parent.get(key) if isinstance(parent, dict) else None
            value = parent.get(path[-1]) if isinstance(parent, dict) else None
            # A number too (a phone number sent as one): only null and flags say nothing.
            if value is not None and not isinstance(value, bool | dict | list):
                if privacy.addresses == "drop":
                    del parent[path[-1]]
                else:
                    parent[path[-1]] = privacy.address(str(value))
    return msgspec.json.encode(body).decode()


def event_row(
    event: Event,
    loaded_at: str | None,
    privacy: Privacy = KEEP_ALL,
    *,
    values: Sequence[Any] | None = None,
) -> EventRow:
    """The ``events`` row of ``event`` (``EVENT_COLUMNS`` order) under ``privacy``.
    ``values``: ``normalised_values(event)`` when the caller has it already."""
    values = list(values if values is not None else normalised_values(event))
    if privacy.addresses != "keep":
        values[_EMAIL] = privacy.address(values[_EMAIL])
        values[_RECIPIENT] = privacy.address(values[_RECIPIENT])
    values.append(_raw(event, privacy))
    values.append(loaded_at)
    return tuple(values)


_E = {name: i for i, name in enumerate(NORMALISED_FIELDS)}
# Event field -> delivery attribute, in _ATTRIBUTES order.
_ATTRIBUTE_SOURCES = tuple(_E["object_type" if a == "channel" else a] for a in _ATTRIBUTES)
_HUMAN_OPEN_FLAGS = (_E["prefetched"], _E["proxied"], _E["synthetic"])


def _metrics_of(row: EventRow) -> list[str]:
    metric = row[_E["metric"]]
    if metric not in DELIVERY_METRICS:
        return []
    # A backfilled stand-in carries no machine flags: it cannot tell a human open
    # from a prefetch, so it feeds only opened_at/clicked_at.
    human = not row[_E["backfilled"]]
    if metric == "opened" and human and not any(row[i] for i in _HUMAN_OPEN_FLAGS):
        return ["opened", "human_opened"]
    if metric == "clicked" and human and not row[_E["machine"]]:
        return ["clicked", "human_clicked"]
    return [metric]


def _span(times: Sequence[Any]) -> tuple[Any, Any]:
    """The earliest and latest of a row's metric times (None, None when it has none)."""
    present = [t for t in times if t is not None]
    return (min(present), max(present)) if present else (None, None)


def _smaller(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return a if a <= b else b


def merge_delivery(a: DeliveryRow, b: DeliveryRow) -> DeliveryRow:
    """Join two rows of the same delivery (see the module docstring for the rules).
    ``updated_at`` is the later of the two."""
    if a[0] != b[0]:
        raise ValueError("merge_delivery joins rows of one delivery_id")
    out = list(a)
    for i in range(_A0, _M0):
        out[i] = _smaller(a[i], b[i])
    stand_ins_a = set(a[_BACKFILLED].split(",")) if a[_BACKFILLED] else set()
    stand_ins_b = set(b[_BACKFILLED].split(",")) if b[_BACKFILLED] else set()
    stand_ins: list[str] = []
    for j, metric in enumerate(DELIVERY_METRICS):
        i = _M0 + j
        at_a, at_b = a[i], b[i]
        if at_a is None or at_b is None:
            out[i] = at_b if at_a is None else at_a
            chosen = stand_ins_b if at_a is None else stand_ins_a
        else:
            # Real before backfilled, then earliest: a total order, so the join is exact.
            key_a = (metric in stand_ins_a, at_a)
            key_b = (metric in stand_ins_b, at_b)
            out[i] = at_a if key_a <= key_b else at_b
            chosen = stand_ins_a if key_a <= key_b else stand_ins_b
        if out[i] is not None and metric in chosen:
            stand_ins.append(metric)
    fail_a = (a[_FAIL_AT], a[_FAIL_MSG]) if a[_FAIL_AT] is not None else None
    fail_b = (b[_FAIL_AT], b[_FAIL_MSG]) if b[_FAIL_AT] is not None else None
    latest = max(f for f in (fail_a, fail_b) if f is not None) if fail_a or fail_b else None
    out[_FAIL_AT], out[_FAIL_MSG] = latest if latest else (None, None)
    out[_FIRST], out[_LAST] = _span(out[_M0:_T0])
    out[_BACKFILLED] = ",".join(stand_ins) or None
    updated = [x for x in (a[_UPDATED], b[_UPDATED]) if x is not None]
    out[_UPDATED] = max(updated) if updated else None
    return tuple(out)


def delivery_rows(rows: Iterable[EventRow], updated_at: str | None) -> list[DeliveryRow]:
    """The events' deliveries, one row per delivery_id, each folded over its events
    (events without a ``delivery_id`` have none).  The same result as merging each
    event's own row with ``merge_delivery``, in one pass: the loader runs this for
    every batch."""
    folded: dict[str, _Fold] = {}
    for row in rows:
        delivery_id = row[_DELIVERY]
        if delivery_id is None or delivery_id == "":
            continue
        fold = folded.get(delivery_id)
        if fold is None:
            fold = folded[delivery_id] = _Fold(delivery_id, updated_at)
        fold.add(row)
    return [fold.row() for fold in folded.values()]


_DELIVERY = _E["delivery_id"]
_OCCURRED = _E["occurred_at"]
_METRIC = _E["metric"]
_BACKFILLED_FIELD = _E["backfilled"]
_FAILURE = _E["failure_message"]
_METRIC_INDEX = {m: i for i, m in enumerate(DELIVERY_METRICS)}


class _Fold:
    """One delivery's row, built up event by event (the rules of ``merge_delivery``)."""

    __slots__ = ("failure", "metrics", "out", "stand_in")

    def __init__(self, delivery_id: str, updated_at: str | None) -> None:
        self.out: list[Any] = [None] * len(DELIVERY_COLUMNS)
        self.out[0] = delivery_id
        self.out[_UPDATED] = updated_at
        self.metrics: list[Any] = [None] * len(DELIVERY_METRICS)
        self.stand_in = [False] * len(DELIVERY_METRICS)
        self.failure: tuple[str, str] | None = None

    def add(self, row: EventRow) -> None:
        out = self.out
        for i, source in enumerate(_ATTRIBUTE_SOURCES, _A0):
            value = row[source]
            if value is not None and (out[i] is None or value < out[i]):
                out[i] = value
        at = row[_OCCURRED]
        if at is None:
            return
        backfilled = bool(row[_BACKFILLED_FIELD])
        for metric in _metrics_of(row):
            j = _METRIC_INDEX[metric]
            held = self.metrics[j]
            if held is None or (backfilled, at) < (self.stand_in[j], held):
                self.metrics[j] = at
                self.stand_in[j] = backfilled
        message = row[_FAILURE]
        if message and row[_METRIC] in FAILURE_METRICS:
            failure = (at, message)
            if self.failure is None or failure > self.failure:
                self.failure = failure

    def row(self) -> DeliveryRow:
        out = self.out
        out[_M0:_T0] = self.metrics
        if self.failure is not None:
            out[_FAIL_AT], out[_FAIL_MSG] = self.failure
        out[_FIRST], out[_LAST] = _span(self.metrics)
        stand_ins = [
            m
            for m, at, bf in zip(DELIVERY_METRICS, self.metrics, self.stand_in, strict=True)
            if at is not None and bf
        ]
        out[_BACKFILLED] = ",".join(stand_ins) or None
        return tuple(out)


def as_dicts(columns: Sequence[Column], rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """Rows as dicts keyed by column name (for tests and readers)."""
    names = [c.name for c in columns]
    return [dict(zip(names, row, strict=True)) for row in rows]
