"""What every sink gets: event rows, delivery rows and their merge, privacy."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json

from cio_webhooks.events import parse_event
from cio_webhooks.sinks import (
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    Privacy,
    delivery_rows,
    event_row,
    merge_delivery,
)
from cio_webhooks.sinks._rows import as_dicts

from ..conftest import NOW
from ._data import event, one_delivery, samples

STAMP = "2023-11-14T22:14:20.000Z"


def folded(events: list) -> dict:  # type: ignore[type-arg]
    rows = [event_row(e, STAMP) for e in events]
    [row] = delivery_rows(rows, STAMP)
    return as_dicts(DELIVERY_COLUMNS, [row])[0]


def test_every_sample_gives_a_row_of_every_column_with_its_raw_body() -> None:
    for e in samples():
        row = dict(zip([c.name for c in EVENT_COLUMNS], event_row(e, STAMP), strict=True))
        assert row["event_id"] == e.event_id
        assert row["raw"] == e.raw.decode()
        assert row["loaded_at"] == STAMP


def test_a_delivery_row_is_the_same_in_every_arrival_order() -> None:
    events = one_delivery()
    expected = folded(events)
    for order in itertools.permutations(events):
        assert folded(list(order)) == expected


def test_a_delivery_row_is_the_same_whatever_the_batches_and_replays() -> None:
    events = one_delivery()
    rows = [event_row(e, STAMP) for e in events]
    parts = [delivery_rows([r], STAMP)[0] for r in rows]
    whole = delivery_rows(rows, STAMP)[0]
    for order in itertools.permutations(parts):
        # Each part merged twice: a batch written again after a crash changes nothing.
        assert functools.reduce(merge_delivery, [*order, *order]) == whole


def test_the_first_time_of_each_metric_and_a_real_event_over_its_stand_in() -> None:
    row = folded(one_delivery())
    assert row["sent_at"] == "2023-11-14T22:13:20.000Z"
    # The backfilled delivered (NOW + 50) gives way to the real one (NOW + 100).
    assert row["delivered_at"] == "2023-11-14T22:15:00.000Z"
    assert row["backfilled_metrics"] is None
    # The prefetched open is the first open, not the first human one.
    assert row["opened_at"] == "2023-11-14T22:13:40.000Z"
    assert row["human_opened_at"] == "2023-11-14T22:18:20.000Z"
    assert row["bounced_at"] == "2023-11-14T22:20:00.000Z"
    assert row["last_failure_message"] == "550 mailbox unavailable"
    assert row["first_event_at"] == row["sent_at"]
    assert row["last_event_at"] == row["bounced_at"]
    assert row["channel"] == "email"
    assert row["campaign_id"] == "12"


def test_a_stand_in_alone_keeps_its_time_and_is_marked() -> None:
    row = folded([event("b1", "delivered", NOW + 50, backfilled=True)])
    assert row["delivered_at"] == "2023-11-14T22:14:10.000Z"
    assert row["backfilled_metrics"] == "delivered"


def test_the_latest_failure_message_wins() -> None:
    row = folded(
        [
            event("f1", "failed", NOW + 10, failure_message="first"),
            event("f2", "bounced", NOW + 20, failure_message="later"),
            event("f3", "dropped", NOW + 30),  # no message: does not clear it
        ]
    )
    assert row["last_failure_message"] == "later"


def test_events_without_a_delivery_have_no_delivery_row() -> None:
    rows = [event_row(e, STAMP) for e in samples() if e.object_type == "customer"]
    assert rows
    assert delivery_rows(rows, STAMP) == []


def test_hashed_addresses_are_salted_sha256_in_the_columns_and_the_raw_body() -> None:
    e = event("p1", "delivered", NOW)
    privacy = Privacy(addresses="hash", salt=b"pepper")
    row = dict(zip([c.name for c in EVENT_COLUMNS], event_row(e, STAMP, privacy), strict=True))
    digest = hashlib.sha256(b"pepper" + b"person-1@example.com").hexdigest()
    assert row["email"] == digest
    assert row["recipient"] == digest
    raw = json.loads(row["raw"])
    assert raw["data"]["identifiers"]["email"] == digest
    assert "person-1@example.com" not in row["raw"]


def test_dropped_addresses_and_content_leave_the_rest_of_the_body() -> None:
    e = event("p2", "sent", NOW, content="<p>secret</p>", headers={"X": "y"})
    privacy = Privacy(addresses="drop", content=False)
    row = dict(zip([c.name for c in EVENT_COLUMNS], event_row(e, STAMP, privacy), strict=True))
    assert row["email"] is None
    assert row["recipient"] is None
    raw = json.loads(row["raw"])
    assert "content" not in raw["data"]
    assert "headers" not in raw["data"]
    assert "email" not in raw["data"]["identifiers"]
    assert raw["data"]["subject"] == "Hello"


def test_an_address_sent_as_a_number_is_hashed_or_dropped_in_the_raw_body_too() -> None:
    # Customer.io's ids and texts come as numbers too: a phone number is one.
    body = {
        "event_id": "p4",
        "object_type": "sms",
        "metric": "replied",
        "timestamp": NOW,
        "data": {"delivery_id": "d", "identifiers": {"id": 1, "phone": 15551234567}, "to": 1555},
    }
    e = parse_event(json.dumps(body).encode())
    raw_at = [c.name for c in EVENT_COLUMNS].index("raw")
    hashed = json.loads(event_row(e, STAMP, Privacy(addresses="hash", salt=b"s"))[raw_at])
    dropped = json.loads(event_row(e, STAMP, Privacy(addresses="drop"))[raw_at])
    digest = hashlib.sha256(b"s" + b"15551234567").hexdigest()
    assert hashed["data"]["identifiers"]["phone"] == digest
    assert hashed["data"]["to"] == hashlib.sha256(b"s" + b"1555").hexdigest()
    assert "phone" not in dropped["data"]["identifiers"]
    assert "to" not in dropped["data"]


def test_the_raw_column_can_be_turned_off() -> None:
    row = event_row(event("p3", "sent", NOW), STAMP, Privacy(raw=False))
    assert row[[c.name for c in EVENT_COLUMNS].index("raw")] is None


def test_the_one_pass_fold_agrees_with_merging_each_event() -> None:
    events = [*one_delivery(), *samples()]
    rows = [event_row(e, STAMP) for e in events]
    by_delivery: dict = {}  # type: ignore[type-arg]
    for row in rows:
        for part in delivery_rows([row], STAMP):
            held = by_delivery.get(part[0])
            by_delivery[part[0]] = part if held is None else merge_delivery(held, part)
    assert sorted(delivery_rows(rows, STAMP)) == sorted(by_delivery.values())


def test_a_stand_in_open_or_click_is_never_counted_as_human() -> None:
    row = folded(
        [
            event("b1", "opened", NOW + 10, backfilled=True),
            event("b2", "clicked", NOW + 20, backfilled=True),
            event("r1", "clicked", NOW + 30, machine=True),  # the real one was a machine
        ]
    )
    assert row["opened_at"] == "2023-11-14T22:13:30.000Z"
    assert row["human_opened_at"] is None
    assert row["clicked_at"] == "2023-11-14T22:13:50.000Z"  # the real click replaced it
    assert row["human_clicked_at"] is None
    assert row["backfilled_metrics"] == "opened"


def test_first_and_last_event_follow_the_metric_times_a_stand_in_gave_way() -> None:
    row = folded([event("b1", "sent", NOW, backfilled=True), event("r1", "sent", NOW + 5)])
    assert row["sent_at"] == row["first_event_at"] == row["last_event_at"]
    assert row["sent_at"] == "2023-11-14T22:13:25.000Z"
