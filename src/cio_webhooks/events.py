"""Typed, immutable Customer.io reporting-webhook events.

``parse_event(body)`` turns the raw bytes of one request into an ``Event``.  It
is tolerant by design, because Customer.io adds fields, object types and
metrics over time: unknown fields are ignored (the raw bytes are kept on the
event), unknown object types and metrics are ordinary strings, any field of
``data`` may be missing or null, the spec's ``object_type_type`` typo is read
as ``object_type``, and ids may arrive as numbers or strings.

An authentic event is never lost to one odd field.  When the envelope is sound
(a JSON object with an ``event_id``, string or absent ``object_type``/
``object_type_type``/``metric``, an object or null ``data``) but a field has an
unexpected type, the event is still an event: each field is read on its own,
numbers become text where text is expected, and what cannot be read is None
(the raw bytes keep it).  A ``timestamp`` that is not a finite number of unix
seconds within the years 1-9999 (``"nan"``, ``1e30``, ``2**63``) is None too, so
every parsed event can be stored and shown.  Invalid UTF-8 inside a string is
read as U+FFFD.  Only a body without a sound envelope, or nested too deeply to
read, raises ``InvalidEvent`` (carrying the ``event_id`` when one was read).

``normalise(event)`` gives the flat row the warehouse and ``events export`` use
(``NORMALISED_FIELDS``, in order).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ._exceptions import InvalidEvent

__all__ = [
    "METRICS_BY_OBJECT_TYPE",
    "NORMALISED_FIELDS",
    "Event",
    "EventData",
    "Identifiers",
    "PushRecipient",
    "normalise",
    "parse_event",
]

#: Every object type and metric Customer.io documents (FACTS.md §2).  Others are
#: accepted too: this table is for documentation, reports and tests, not validation.
METRICS_BY_OBJECT_TYPE: dict[str, tuple[str, ...]] = {
    "customer": ("subscribed", "unsubscribed", "cio_subscription_preferences_changed"),
    "email": (
        "drafted",
        "attempted",
        "sent",
        "delivered",
        "opened",
        "clicked",
        "converted",
        "unsubscribed",
        "bounced",
        "dropped",
        "spammed",
        "failed",
        "undeliverable",
    ),
    "push": (
        "drafted",
        "attempted",
        "sent",
        "delivered",
        "opened",
        "clicked",
        "converted",
        "bounced",
        "dropped",
        "failed",
        "undeliverable",
    ),
    "in_app": (
        "drafted",
        "attempted",
        "sent",
        "opened",
        "clicked",
        "converted",
        "failed",
        "undeliverable",
    ),
    "sms": (
        "drafted",
        "attempted",
        "sent",
        "delivered",
        "clicked",
        "converted",
        "bounced",
        "failed",
        "undeliverable",
        "replied",
    ),
    "slack": ("drafted", "attempted", "sent", "clicked", "failed", "undeliverable"),
    "webhook": ("drafted", "attempted", "sent", "clicked", "failed", "undeliverable"),
    "whatsapp": (
        "drafted",
        "attempted",
        "sent",
        "delivered",
        "opened",
        "clicked",
        "converted",
        "bounced",
        "dropped",
        "failed",
        "undeliverable",
        "replied",
    ),
}

Id = int | str | None


class Identifiers(msgspec.Struct, frozen=True, kw_only=True):
    """Who the event is about.  Any identifier may be null; ``cio_id`` has no ``cio_`` prefix."""

    id: Id = None
    email: str | None = None
    cio_id: Id = None
    phone: str | None = None


class PushRecipient(msgspec.Struct, frozen=True, kw_only=True):
    device_id: str | None = None
    device_platform: str | None = None
    failure_message: str | None = None


class EventData(msgspec.Struct, frozen=True, kw_only=True):
    """The ``data`` object.  Which fields are present depends on the message's origin."""

    identifiers: Identifiers | None = None
    customer_id: Id = None  # deprecated by Customer.io; blank once the person is deleted
    email_address: str | None = None
    delivery_id: str | None = None
    # campaigns
    campaign_id: Id = None
    action_id: Id = None
    parent_action_id: Id = None
    journey_id: Id = None
    trigger_event_id: Id = None
    campaign_name: str | None = None
    # API-triggered broadcasts
    broadcast_id: Id = None
    trigger_id: Id = None
    # newsletters and transactional messages
    newsletter_id: Id = None
    content_id: Id = None
    transactional_message_id: Id = None
    template_id: Id = None
    # per event
    recipient: str | None = None
    subject: str | None = None
    href: str | None = None
    link_id: Id = None
    failure_message: str | None = None
    recipients: list[PushRecipient] | None = None
    content: Any = None
    headers: Any = None
    inbound_event_id: Id = None
    to: str | None = None
    tracked_response: Any = None
    # machine activity: opened carries prefetched/proxied/synthetic, clicked carries machine
    prefetched: bool | None = None
    proxied: bool | None = None
    synthetic: bool | None = None
    machine: bool | None = None


class _Envelope(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str | int
    object_type: str | None = None
    object_type_type: str | None = None  # typo in Customer.io's spec for preference changes
    metric: str | None = None
    timestamp: int | float | None = None
    data: EventData | None = None


_EMPTY_DATA = EventData()
_decoder = msgspec.json.Decoder(_Envelope, strict=False)
#: The unix seconds a stored event may carry: 0001-01-01 to 9999-12-31T23:59:59Z
#: (``datetime`` and SQLite's INTEGER both hold these; 1e30 or 2**63 fit neither).
MIN_TIMESTAMP = -62_135_596_800
MAX_TIMESTAMP = 253_402_300_799


def _timestamp(value: float | None) -> int | None:
    # One chained comparison rejects NaN (every comparison is False), the infinities
    # and anything outside the years 1-9999.
    if value is not None and MIN_TIMESTAMP <= value <= MAX_TIMESTAMP:
        return int(value)
    return None


def _event_id(value: str | int) -> str:
    # Kept exactly as sent (no trimming): it is the dedupe key, and " 1 " is not "1".
    event_id = str(value)
    if not event_id.strip():
        raise InvalidEvent("not a Customer.io event: event_id is empty")
    if len(event_id) > 255:
        raise InvalidEvent("not a Customer.io event: event_id is longer than 255 characters")
    return event_id


def _coerce(value: Any, kind: Any) -> Any:
    """``value`` as ``kind`` (a field's type), or the nearest thing, or None."""
    try:
        return msgspec.convert(value, kind, strict=False)
    except msgspec.ValidationError:
        pass
    options = typing.get_args(kind)
    if isinstance(value, dict):
        for option in options:
            if isinstance(option, type) and issubclass(option, msgspec.Struct):
                return _lenient_struct(option, value)
    if isinstance(value, list) and list[PushRecipient] in options:
        return [_lenient_struct(PushRecipient, v) for v in value if isinstance(v, dict)]
    if isinstance(value, int | float) and not isinstance(value, bool) and str in options:
        return str(value)  # an id or a text sent as a number
    return None


def _lenient_struct(cls: type[Any], raw: dict[str, Any]) -> Any:
    """``cls`` from ``raw``, each known field read on its own (None when unreadable)."""
    kinds = _FIELD_TYPES[cls]
    return cls(**{k: _coerce(v, kinds[k]) for k, v in raw.items() if k in kinds})


_FIELD_TYPES: dict[type[Any], dict[str, Any]] = {
    cls: {f.name: f.type for f in msgspec.structs.fields(cls)}
    for cls in (EventData, Identifiers, PushRecipient)
}


def _lenient_envelope(body: bytes) -> _Envelope:
    """The envelope of a body the typed decoder refused, when the envelope is sound."""
    raw = msgspec.json.decode(body)
    if not isinstance(raw, dict):
        raise InvalidEvent("not a Customer.io event: the body is not a JSON object")
    event_id = raw.get("event_id")
    if isinstance(event_id, bool) or not isinstance(event_id, str | int):
        raise InvalidEvent("not a Customer.io event: no event_id string")
    ident = _event_id(event_id)
    for name in ("object_type", "object_type_type", "metric"):
        if not isinstance(raw.get(name), str | None):
            raise InvalidEvent(f"not a Customer.io event: {name} is not a string", event_id=ident)
    data = raw.get("data")
    if not isinstance(data, dict | None):
        raise InvalidEvent("not a Customer.io event: data is not an object", event_id=ident)
    timestamp = _coerce(raw.get("timestamp"), int | float | None)
    return _Envelope(
        event_id=ident,
        object_type=raw.get("object_type"),
        object_type_type=raw.get("object_type_type"),
        metric=raw.get("metric"),
        timestamp=timestamp,
        data=None if data is None else _lenient_struct(EventData, data),
    )


def _envelope(body: bytes) -> _Envelope:
    try:
        try:
            return _decoder.decode(body)
        except msgspec.ValidationError:
            pass  # the slow path below, for the rare body with an unexpected field type
        try:
            return _lenient_envelope(body)
        except UnicodeDecodeError:
            return _replaced_utf8(_lenient_envelope(_valid_utf8(body)))
    except msgspec.DecodeError as exc:
        if _is_utf8_error(exc):
            return _replaced_utf8(_envelope(_valid_utf8(body)))
        raise InvalidEvent(f"body is not JSON: {exc}") from None
    except UnicodeDecodeError:
        # Invalid or overlong UTF-8 inside a string: read it as U+FFFD; ``raw`` keeps
        # the bytes as sent.
        return _replaced_utf8(_envelope(_valid_utf8(body)))
    except RecursionError:
        raise InvalidEvent("body is nested too deeply to read") from None


def _is_utf8_error(exc: msgspec.DecodeError) -> bool:
    # msgspec before 0.20 raised UnicodeDecodeError for invalid UTF-8 inside a string;
    # later versions raise DecodeError("Invalid UTF-8 encoded string").
    return "UTF-8" in str(exc)


def _valid_utf8(body: bytes) -> bytes:
    return body.decode("utf-8", "replace").encode("utf-8")


def _replaced_utf8(env: _Envelope) -> _Envelope:
    """``env`` read from a body whose invalid UTF-8 became U+FFFD, unless that hit the
    event_id: two different ids would then read the same, and one event would be
    taken for a duplicate of the other and dropped."""
    if "\ufffd" in str(env.event_id):
        raise InvalidEvent("not a Customer.io event: event_id is not valid UTF-8")
    return env


@dataclass(frozen=True, slots=True)
class Event:
    """One reporting-webhook event: the parsed fields and the raw bytes they came from."""

    event_id: str
    object_type: str
    metric: str
    timestamp: int | None
    data: EventData
    raw: bytes = field(repr=False)
    received_at: float | None = None
    #: True for events recovered from the App API by ``reconcile --backfill`` rather
    #: than posted by Customer.io; they are stored as already handled.
    backfilled: bool = False

    @property
    def kind(self) -> str:
        """``object_type.metric``, the key handlers are routed on."""
        return f"{self.object_type}.{self.metric}"

    @property
    def payload(self) -> dict[str, Any]:
        """The raw payload as a dict, including fields this model does not know."""
        try:
            value: dict[str, Any] = msgspec.json.decode(self.raw)
        except (UnicodeDecodeError, msgspec.DecodeError):
            value = msgspec.json.decode(_valid_utf8(self.raw))
        return value

    @property
    def person_id(self) -> str | None:
        """``identifiers.id``, falling back to the deprecated ``customer_id``."""
        ids = self.data.identifiers
        for value in (ids.id if ids else None, self.data.customer_id):
            if value is not None and value != "":
                return str(value)
        return None

    @property
    def email(self) -> str | None:
        ids = self.data.identifiers
        return (ids.email if ids else None) or self.data.email_address or None

    @property
    def is_machine(self) -> bool:
        """True when Customer.io flagged the open or click as machine activity."""
        d = self.data
        return bool(d.prefetched or d.proxied or d.synthetic or d.machine)


# The receiver parses every request, and a frozen dataclass's __init__ (one
# object.__setattr__ per field) costs more than the decode: parse_event sets Event's
# slots directly, each with its own descriptor.  The result is the same Event.
def _slot(name: str) -> Callable[[Event, Any], None]:
    setter: Callable[[Event, Any], None] = getattr(Event, name).__set__
    return setter


_new_event = object.__new__
_set_event_id = _slot("event_id")
_set_object_type = _slot("object_type")
_set_metric = _slot("metric")
_set_timestamp = _slot("timestamp")
_set_data = _slot("data")
_set_raw = _slot("raw")
_set_received_at = _slot("received_at")
_set_backfilled = _slot("backfilled")
assert {f.name for f in dataclasses.fields(Event)} == {
    "event_id",
    "object_type",
    "metric",
    "timestamp",
    "data",
    "raw",
    "received_at",
    "backfilled",
}, "parse_event sets every field of Event"


def parse_event(
    body: bytes, *, received_at: float | None = None, backfilled: bool = False
) -> Event:
    """Parse one request body.  Raises ``InvalidEvent`` with a readable reason."""
    env = _envelope(body)
    event = _new_event(Event)
    _set_event_id(event, _event_id(env.event_id))
    _set_object_type(event, env.object_type or env.object_type_type or "unknown")
    _set_metric(event, env.metric or "unknown")
    _set_timestamp(event, _timestamp(env.timestamp))
    _set_data(event, env.data or _EMPTY_DATA)
    _set_raw(event, body)
    _set_received_at(event, received_at)
    _set_backfilled(event, backfilled)
    return event


NORMALISED_FIELDS: tuple[str, ...] = (
    "event_id",
    "object_type",
    "metric",
    "occurred_at",
    "received_at",
    "person_id",
    "email",
    "cio_id",
    "delivery_id",
    "campaign_id",
    "action_id",
    "broadcast_id",
    "newsletter_id",
    "transactional_message_id",
    "journey_id",
    "recipient",
    "subject",
    "href",
    "link_id",
    "failure_message",
    "prefetched",
    "proxied",
    "synthetic",
    "machine",
    "backfilled",
)


def iso(ts: float | None) -> str | None:
    """Unix seconds as ISO-8601 UTC (millisecond precision); None for None and for a
    time no ISO date can express (1e30, past year 9999, NaN: rows stored by older
    versions may hold them)."""
    if ts is None:
        return None
    try:
        stamp = dt.datetime.fromtimestamp(ts, tz=dt.UTC)
    except (ValueError, OverflowError, OSError):
        return None
    # The same text as isoformat(timespec="milliseconds") with Z, for less: the
    # warehouse loader formats two times per event.
    return f"{stamp.year:04d}-{stamp:%m-%dT%H:%M:%S}.{stamp.microsecond // 1000:03d}Z"


def _text(value: Id) -> str | None:
    return None if value is None or value == "" else str(value)


def normalise(event: Event) -> dict[str, Any]:
    """The flat warehouse row for ``event``: keys are ``NORMALISED_FIELDS`` in order.

    Ids are text (Customer.io mixes numbers and strings), times are ISO-8601 UTC,
    machine-activity flags are booleans or None when Customer.io did not say.
    """
    return dict(zip(NORMALISED_FIELDS, normalised_values(event), strict=True))


def normalised_values(event: Event) -> tuple[Any, ...]:
    """``normalise(event)``'s values only, in ``NORMALISED_FIELDS`` order: the warehouse
    loader builds a row per event, and skips the dict."""
    d = event.data
    ids = d.identifiers
    t = _text
    return (
        event.event_id,
        event.object_type,
        event.metric,
        iso(event.timestamp),
        iso(event.received_at),
        event.person_id,
        event.email,
        t(ids.cio_id) if ids else None,
        d.delivery_id,
        t(d.campaign_id),
        t(d.action_id),
        t(d.broadcast_id),
        t(d.newsletter_id),
        t(d.transactional_message_id),
        t(d.journey_id),
        d.recipient,
        d.subject,
        d.href,
        t(d.link_id),
        d.failure_message,
        d.prefetched,
        d.proxied,
        d.synthetic,
        d.machine,
        event.backfilled,
    )
