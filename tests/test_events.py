"""The event model: every shared sample parses; the spec's quirks are tolerated."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from cio_webhooks import InvalidEvent, normalise, parse_event
from cio_webhooks.events import METRICS_BY_OBJECT_TYPE, NORMALISED_FIELDS

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
        (b"[1,2]", "Expected `object`"),
        (b'{"metric":"sent"}', "event_id"),
        (b'{"event_id":""}', "event_id is empty"),
        (b'{"event_id":null}', "event_id"),
        (b'{"event_id":"e1","data":"text"}', "$.data"),
        (b'{"event_id":"e1","data":{"identifiers":[1]}}', "$.data.identifiers"),
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
    for body in (b"{", b'{"event_id":"x","timestamp":"soon"}', b'{"event_id":{}}'):
        with pytest.raises(InvalidEvent) as caught:
            parse_event(body)
        assert not isinstance(caught.value, msgspec.MsgspecError)
