"""vitals: the figures the dashboard shows and the alerts judge."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cio_webhooks import parse_event
from cio_webhooks.store import ACK_BUCKETS, Gauges, Store, TrafficMinute
from cio_webhooks.testing import make_event
from cio_webhooks.vitals import EmailRates, Vitals, ack_quantile, email_rates, read_vitals

from .conftest import store_per_backend

MINUTE = 28_333_333 * 60.0  # a minute's start
NOW = MINUTE + 30  # half a minute into it


def buckets(**at: int) -> tuple[int, ...]:
    """Counts per bucket, by the bucket's upper bound in ms (``b250=3``) or ``over=n``."""
    counts = [0] * (len(ACK_BUCKETS) + 1)
    for name, n in at.items():
        if name == "over":
            counts[-1] = n
        else:
            counts[ACK_BUCKETS.index(int(name[1:]) / 1000)] = n
    return tuple(counts)


def vitals(*minutes: TrafficMinute) -> Vitals:
    return Vitals(
        now=NOW,
        traffic=minutes,
        gauges=Gauges(backlog=0, dead_letters=0, quarantined=0, oldest_backlog_age_seconds=0),
        last_received_at=NOW - 90,
        sinks=(),
    )


def test_no_answered_request_has_no_quantile() -> None:
    assert ack_quantile(buckets(), 0.5) is None
    assert ack_quantile((), 0.99) is None


def test_a_quantile_is_interpolated_inside_its_bucket() -> None:
    # 100 requests between 50 and 100 ms: the median sits half-way.
    assert ack_quantile(buckets(b100=100), 0.5) == pytest.approx(0.075)


def test_a_quantile_past_the_last_bound_reads_as_the_timeout() -> None:
    assert ack_quantile(buckets(b5=1, over=99), 0.99) == ACK_BUCKETS[-1]


def test_the_p99_follows_the_slow_tail() -> None:
    p99 = ack_quantile(buckets(b5=98, b2000=2), 0.99)
    p50 = ack_quantile(buckets(b5=98, b2000=2), 0.5)
    assert p99 is not None
    assert p99 > 1.0
    assert p50 is not None
    assert p50 <= 0.005


def test_recent_counts_only_the_last_minutes() -> None:
    old = TrafficMinute(minute=MINUTE - 600, rejected_signature=7, stored=60)
    new = TrafficMinute(minute=MINUTE - 60, rejected_signature=3, stored=120, duplicate=6)
    v = vitals(old, new)
    assert v.rejected(5) == 3
    assert v.rejected(15) == 10
    assert v.accepted(5) == 126


def test_the_series_has_every_minute_of_the_window() -> None:
    v = vitals(TrafficMinute(minute=MINUTE, stored=120, ack=buckets(b10=120)))
    rows = v.series()
    assert len(rows) == 60
    assert rows[-1]["t"] == MINUTE
    assert rows[-1]["events_per_s"] == 2.0
    assert rows[0]["events_per_s"] == 0.0
    assert rows[0]["ack_p99"] is None


def test_time_since_the_last_event() -> None:
    assert vitals().since_last_event == 90


def test_rates_have_no_value_without_a_denominator() -> None:
    rates = EmailRates(window=86400, sent=0, delivered=0, bounced=0, spammed=0, unsubscribed=0)
    assert rates.bounce_rate is None
    assert rates.complaint_rate is None


def test_rates_of_a_window() -> None:
    rates = EmailRates(
        window=86400, sent=1000, delivered=950, bounced=50, spammed=3, unsubscribed=19
    )
    assert rates.bounce_rate == 0.05
    assert rates.complaint_rate == pytest.approx(3 / 950)
    assert rates.unsubscribe_rate == 0.02


def test_bounces_count_against_delivered_when_sent_is_not_subscribed() -> None:
    rates = EmailRates(window=86400, sent=0, delivered=90, bounced=10, spammed=0, unsubscribed=0)
    assert rates.bounce_rate == 0.1


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with store_per_backend(request, tmp_path) as store:
        yield store


async def put(store: Store, event_id: str, metric: str, at: float) -> None:
    body = json.dumps(make_event(event_id, "email", metric)).encode()
    await store.put(parse_event(body, received_at=at), handled=True)


async def test_vitals_read_every_receivers_traffic_and_the_last_event(store: Store) -> None:
    await store.record_traffic("one", [TrafficMinute(minute=MINUTE, stored=6, ack=buckets(b5=6))])
    await store.record_traffic("two", [TrafficMinute(minute=MINUTE, rejected_signature=4)])
    await put(store, "e1", "delivered", NOW - 90)
    v = await read_vitals(store, now=NOW)
    assert v.rejected(1) == 4
    assert v.accepted(1) == 6
    assert v.since_last_event == 90
    assert v.gauges is not None
    assert v.gauges.backlog == 0


async def test_email_rates_count_the_window_only(store: Store) -> None:
    await put(store, "old", "spammed", NOW - 2 * 86400)
    for i in range(10):
        await put(store, f"d{i}", "delivered", NOW - 60)
    await put(store, "s1", "spammed", NOW - 60)
    await put(store, "b1", "bounced", NOW - 60)
    rates = await email_rates(store, now=NOW, window=86400)
    assert (rates.delivered, rates.spammed, rates.bounced) == (10, 1, 1)
    assert rates.complaint_rate == 0.1
