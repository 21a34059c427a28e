"""The event model: every shared sample parses; the spec's quirks are tolerated."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import msgspec
import pytest

from cio_webhooks import Event, EventData, InvalidEvent, normalise, parse_event
from cio_webhooks.events import MAX_TIMESTAMP, METRICS_BY_OBJECT_TYPE, NORMALISED_FIELDS, iso

from .conftest import sample_files


@pytest.mark.parametrize("path", sample_files(), ids=lambda p: p.name)
def test_every_sample_parses_and_keeps_its_raw_bytes(path: Path) -> None:
    raw = path.read_bytes()
    event = parse_event(raw, received_at=1.0)
    payload = json.loads(raw)
    assert event.raw == raw
    assert event.payload == payload  # round-trips, unknown fields included
    assert event.event_id == payload["event_id"]
    assert event.kind == f"{payload['object_type']}.{payload['metric']}"
    assert event.metric in METRICS_BY_OBJECT_TYPE[event.object_type]
    assert event.data.delivery_id == payload["data"].get("delivery_id")


@pytest.mark.parametrize("path", sample_files(), ids=lambda p: p.name)
def test_every_sample_normalises_to_the_warehouse_fields(path: Path) -> None:
    row = normalise(parse_event(path.read_bytes(), received_at=1_700_000_000.5))
    assert tuple(row) == NORMALISED_FIELDS
    assert row["received_at"] == "2023-11-14T22:13:20.500Z"
    payload = json.loads(path.read_bytes())
    assert row["person_id"] == payload["data"]["identifiers"]["id"]


def test_events_are_immutable() -> None:
    event = parse_event(b'{"event_id":"e1","object_type":"email","metric":"sent"}')
    with pytest.raises(AttributeError):
        event.metric = "opened"  # type: ignore[misc]


@pytest.mark.parametrize("backfilled", [False, True])
def test_parse_event_builds_the_event_the_constructor_builds(backfilled: bool) -> None:
    # parse_event sets Event's slots directly (no __init__): every field must be set,
    # and the result must be the Event the dataclass would build, equal and hashed alike.
    body = b'{"event_id":"e1","object_type":"email","metric":"sent","timestamp":5,"data":{}}'
    event = parse_event(body, received_at=2.5, backfilled=backfilled)
    built = Event(
        event_id="e1",
        object_type="email",
        metric="sent",
        timestamp=5,
        data=EventData(),
        raw=body,
        received_at=2.5,
        backfilled=backfilled,
    )
    assert {f.name: getattr(event, f.name) for f in dataclasses.fields(Event)} == {
        f.name: getattr(built, f.name) for f in dataclasses.fields(Event)
    }
    assert event == built
    assert hash(event) == hash(built)
    assert dataclasses.replace(event, metric="opened").metric == "opened"


def test_event_of_every_documented_kind_parses() -> None:
    for object_type, metrics in METRICS_BY_OBJECT_TYPE.items():
        for metric in metrics:
            body = json.dumps(
                {
                    "event_id": f"{object_type}-{metric}",
                    "object_type": object_type,
                    "metric": metric,
                    "timestamp": 1,
                    "data": {},
                }
            ).encode()
            assert parse_event(body).kind == f"{object_type}.{metric}"


def test_object_type_type_typo_is_read_as_object_type() -> None:
    body = (
        b'{"event_id":"e1","object_type_type":"customer",'
        b'"metric":"cio_subscription_preferences_changed","timestamp":1,"data":{}}'
    )
    assert parse_event(body).kind == "customer.cio_subscription_preferences_changed"


def test_unknown_object_types_metrics_and_fields_are_ordinary_events() -> None:
    body = (
        b'{"event_id":"e1","object_type":"carrier_pigeon","metric":"landed","timestamp":1,'
        b'"new_top_level":1,"data":{"delivery_id":"d","brand_new_field":{"x":[1]}}}'
    )
    event = parse_event(body)
    assert event.kind == "carrier_pigeon.landed"
    assert event.payload["data"]["brand_new_field"] == {"x": [1]}


def test_null_and_missing_fields_are_tolerated() -> None:
    body = (
        b'{"event_id":"e1","object_type":"email","metric":"sent","timestamp":null,'
        b'"data":{"identifiers":{"id":null,"email":null,"cio_id":null},"campaign_id":null}}'
    )
    event = parse_event(body)
    assert event.timestamp is None
    assert event.person_id is None
    assert normalise(event)["occurred_at"] is None
    no_data = parse_event(b'{"event_id":"e2","object_type":"email","metric":"sent"}')
    assert no_data.data.identifiers is None
    assert no_data.person_id is None


def test_person_id_falls_back_to_deprecated_customer_id() -> None:
    body = b'{"event_id":"e1","object_type":"email","metric":"sent","data":{"customer_id":"c9"}}'
    assert parse_event(body).person_id == "c9"
    blank = b'{"event_id":"e1","object_type":"email","metric":"sent","data":{"customer_id":""}}'
    assert parse_event(blank).person_id is None


def test_ids_may_be_numbers_or_strings_and_normalise_to_text() -> None:
    body = (
        b'{"event_id":"e1","object_type":"email","metric":"clicked","timestamp":1,'
        b'"data":{"campaign_id":"7","action_id":8,"link_id":3,"identifiers":{"id":42}}}'
    )
    row = normalise(parse_event(body))
    assert (row["campaign_id"], row["action_id"], row["link_id"], row["person_id"]) == (
        "7",
        "8",
        "3",
        "42",
    )


def test_machine_activity_flags() -> None:
    opened = parse_event(
        b'{"event_id":"e1","object_type":"email","metric":"opened","data":{"prefetched":true}}'
    )
    clicked = parse_event(
        b'{"event_id":"e2","object_type":"email","metric":"clicked","data":{"machine":false}}'
    )
    assert opened.is_machine
    assert not clicked.is_machine
    assert normalise(opened)["prefetched"] is True
    assert normalise(clicked)["machine"] is False


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "not JSON"),
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1,2]", "not a JSON object"),
        (b'{"metric":"sent"}', "event_id"),
        (b'{"event_id":""}', "event_id is empty"),
        (b'{"event_id":null}', "event_id"),
        (b'{"event_id":"e1","data":"text"}', "data is not an object"),
        (b'{"event_id":"e1","metric":5}', "metric is not a string"),
        (b'{"event_id":"e1","object_type":["email"]}', "object_type is not a string"),
        (b'{"event_id":[1]}', "event_id"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"event_id":"e1","data":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "too deeply"),
    ],
)
def test_bodies_that_are_not_events_raise_invalid_event_with_a_reason(
    body: bytes, reason: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(body)
    assert reason in str(caught.value)


def test_integer_event_id_is_accepted_as_text() -> None:
    assert parse_event(b'{"event_id":123}').event_id == "123"


def test_decoder_errors_surface_as_invalid_event_not_msgspec_errors() -> None:
    for body in (b"{", b'{"event_id":"x","data":7}', b'{"event_id":{}}'):
        with pytest.raises(InvalidEvent) as caught:
            parse_event(body)
        assert not isinstance(caught.value, msgspec.MsgspecError)


@pytest.mark.parametrize(
    "body",
    [
        b'{"event_id":"e1","metric":"sent","data":{}}',
        b'{"event_id":"e1","object_type":null,"metric":"sent","data":null}',
    ],
)
def test_invalid_event_keeps_the_event_id_it_could_read(body: bytes) -> None:
    bad = body.replace(b'"metric":"sent"', b'"metric":{"x":1}')
    with pytest.raises(InvalidEvent) as caught:
        parse_event(bad)
    assert caught.value.event_id == "e1"
    assert parse_event(body).event_id == "e1"  # the same envelope, sound, is an event


@pytest.mark.parametrize(
    "timestamp",
    [
        b'"nan"',
        b'"NaN"',
        b'"inf"',
        b'"Infinity"',
        b'"-Infinity"',
        b'"soon"',
        b"1e30",
        b"9223372036854775808",  # 2**63: past SQLite's INTEGER
        b"18446744073709551616",  # 2**64
        b"1e308",
        b"-1e308",
        b"253402300800",  # 10000-01-01
        b"true",
        b"[1]",
    ],
)
def test_a_timestamp_that_cannot_be_a_time_is_null_and_the_event_kept(timestamp: bytes) -> None:
    body = b'{"event_id":"e1","object_type":"email","metric":"sent","timestamp":' + timestamp
    body += b',"data":{"delivery_id":"d1"}}'
    event = parse_event(body, received_at=1.0)
    assert event.timestamp is None
    assert event.raw == body
    assert event.data.delivery_id == "d1"
    assert normalise(event)["occurred_at"] is None


@pytest.mark.parametrize("timestamp", [253402300799, 0, -62135596800, 1_700_000_000])
def test_timestamps_of_the_years_1_to_9999_are_kept(timestamp: int) -> None:
    event = parse_event(f'{{"event_id":"e1","timestamp":{timestamp}}}'.encode())
    assert event.timestamp == timestamp
    assert normalise(event)["occurred_at"] is not None


def test_data_fields_of_unexpected_types_are_normalised_not_quarantined() -> None:
    body = json.dumps(
        {
            "event_id": "e1",
            "object_type": "email",
            "metric": "bounced",
            "timestamp": 1_700_000_000,
            "data": {
                "delivery_id": 12345,
                "failure_message": {"code": 550, "text": "mailbox full"},
                "prefetched": "true",
                "machine": "maybe",
                "campaign_id": [1],
                "subject": 3.5,
                "identifiers": {"id": True, "email": "a@example.com", "cio_id": {"x": 1}},
                "recipients": [{"device_id": 7, "device_platform": "ios"}, "junk"],
                "unknown_field": {"kept": "in raw"},
            },
        }
    ).encode()
    event = parse_event(body)
    d = event.data
    assert (event.event_id, event.kind, event.timestamp) == ("e1", "email.bounced", 1_700_000_000)
    assert d.delivery_id == "12345"  # a number where text is expected becomes text
    assert d.subject == "3.5"
    assert d.failure_message is None  # an object cannot be a message: null, raw keeps it
    assert d.prefetched is True  # a string boolean
    assert d.machine is None
    assert d.campaign_id is None
    assert d.identifiers is not None
    assert (d.identifiers.id, d.identifiers.email) == (None, "a@example.com")
    assert d.identifiers.cio_id is None
    assert d.recipients is not None
    assert [(r.device_id, r.device_platform) for r in d.recipients] == [("7", "ios")]
    assert event.payload["data"]["failure_message"] == {"code": 550, "text": "mailbox full"}
    assert tuple(normalise(event)) == NORMALISED_FIELDS
    wrong_identifiers = parse_event(b'{"event_id":"e2","data":{"identifiers":[1]}}')
    assert wrong_identifiers.data.identifiers is None


@pytest.mark.parametrize(
    "text",
    [b"caf\xc3", b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80"],
    ids=["cut", "ff", "overlong", "surrogate"],
)
def test_invalid_utf8_in_a_string_is_read_as_replacement_characters(text: bytes) -> None:
    body = b'{"event_id":"e1","object_type":"email","metric":"sent","data":{"subject":"' + text
    body += b'","delivery_id":"d1"}}'
    event = parse_event(body)
    assert event.raw == body
    assert event.data.subject is not None
    assert "\ufffd" in event.data.subject
    assert event.data.delivery_id == "d1"
    assert event.payload["data"]["delivery_id"] == "d1"
    normalise(event)


def test_invalid_utf8_with_an_odd_field_type_is_still_an_event() -> None:
    body = b'{"event_id":"e1","metric":"sent","data":{"delivery_id":5,"subject":"\xff"}}'
    event = parse_event(body)
    assert (event.data.delivery_id, event.data.subject) == ("5", "\ufffd")


@pytest.mark.parametrize(
    "body",
    [
        b'{"event_id":"\\u00ff\xffSFX","metric":"opened"}',  # invalid byte after a valid char
        b'{"event_id":"\xfeSFX","metric":"clicked","data":{"delivery_id":1}}',  # slow path too
    ],
)
def test_an_event_id_that_is_not_valid_utf8_is_not_an_event_id(body: bytes) -> None:
    # Read with U+FFFD, "\xffSFX" and "\xfeSFX" would be one id: a different event
    # would be answered "duplicate" and dropped.
    with pytest.raises(InvalidEvent, match="event_id is not valid UTF-8") as caught:
        parse_event(body)
    assert caught.value.event_id is None


def test_an_event_id_is_kept_exactly_as_sent() -> None:
    padded = parse_event(b'{"event_id":" 12345 ","metric":"sent"}')
    assert padded.event_id == " 12345 "  # not the same event as "12345"
    with pytest.raises(InvalidEvent, match="event_id is empty"):
        parse_event(b'{"event_id":"   ","metric":"sent"}')


@pytest.mark.parametrize("ts", [1e30, 2.0**62, -(2.0**62), 253_402_300_800.0, float("nan")])
def test_iso_is_none_for_a_time_no_iso_date_can_express(ts: float) -> None:
    # Rows stored by older versions may hold such times: every reader gets null.
    assert iso(ts) is None


def test_iso_keeps_every_time_of_the_years_1_to_9999() -> None:
    assert iso(MAX_TIMESTAMP) == "9999-12-31T23:59:59.000Z"
    assert iso(0) == "1970-01-01T00:00:00.000Z"
