"""Delivery reports: unique deliveries, human vs machine, rates, groupings, read-only access.

Every warehouse here is written by a real sink from events parsed by the real
``parse_event``, so the report reads exactly what the service stores.  The counting
tests run twice (the ``write`` fixture): on the SQLite warehouse file
(``delivery_report``) and on a PostgreSQL sink (``delivery_report_for``), and expect
the same rows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import socket
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import pytest

from cio_webhooks import StoreUnavailable, parse_event
from cio_webhooks.events import Event, iso, normalise
from cio_webhooks.reconcile import backfill_event
from cio_webhooks.reports import (
    COUNTS,
    RATES,
    ReportRow,
    delivery_event_ids,
    delivery_report,
    delivery_report_for,
)
from cio_webhooks.sinks import (
    Batch,
    SinkURL,
    SQLiteWarehouse,
    delivery_rows,
    event_row,
    parse_sink_url,
)
from cio_webhooks.sinks.postgres import from_url
from cio_webhooks.testing import make_event
from tests.conftest import sample_files
from tests.sinks._postgres_peer import sink_url

from .sinks._data import batch

DAY = 86400
T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
LATER = T0 + DAY  # 2023-11-15
_serial = iter(range(1, 10_000))


def ev(
    metric: str,
    delivery: str | None,
    *,
    campaign: int | None = 1,
    at: int = T0,
    object_type: str = "email",
    event_id: str | None = None,
    **data: Any,
) -> bytes:
    """One event body; ``campaign=None`` removes the campaign id make_event puts in."""
    eid = event_id or f"e{next(_serial):04d}"
    payload = make_event(eid, object_type, metric, timestamp=at, delivery_id=delivery, **data)
    payload["data"]["campaign_id"] = campaign
    return json.dumps(payload).encode()


def parsed(batch: Sequence[bytes | Event]) -> list[Event]:
    return [b if isinstance(b, Event) else parse_event(b, received_at=T0) for b in batch]


def write_warehouse(path: Path, *batches: Sequence[bytes | Event]) -> Path:
    """Write each batch of bodies, in the order given, through the real warehouse sink."""

    async def run() -> None:
        sink = SQLiteWarehouse(path)
        try:
            seq = 1
            for bodies in batches:
                events = parsed(bodies)
                await sink.write(batch(events, first_seq=seq))
                seq += len(events)
        finally:
            await sink.close()

    asyncio.run(run())
    return path


def write_postgres(pg_database: str, *batches: Sequence[bytes | Event]) -> Report:
    """Write each batch, in the order given, through the real PostgreSQL sink (a schema
    of its own), as the loader would (rows from ``_rows``); the report over it."""
    url = sink_url(pg_database, "table_prefix=cio_")
    write_postgres_url(url, *batches)
    return partial(delivery_report_for, url)


def write_postgres_url(url: SinkURL | str, *batches: Sequence[bytes | Event]) -> None:
    """Write each batch through the PostgreSQL sink ``url``."""
    sink = from_url(parse_sink_url(url) if isinstance(url, str) else url)

    async def run() -> None:
        await sink.open()
        try:
            for cursor, batch in enumerate(batches, 1):
                # The store keeps one event per event_id: a batch never repeats one.
                events = list({e.event_id: e for e in parsed(batch)}.values())
                stamp = iso(T0)
                rows = [event_row(e, stamp) for e in events]
                await sink.write(Batch(rows, delivery_rows(rows, stamp), cursor, cursor, T0))
        finally:
            await sink.close()

    asyncio.run(run())


class Report(Protocol):
    def __call__(self, *, by: str = ..., since: float | None = ...) -> list[ReportRow]: ...


Write = Callable[..., Report]


@pytest.fixture(params=["sqlite", "postgresql"])
def write(request: pytest.FixtureRequest, tmp_path: Path) -> Write:
    """``write(*batches)``: the batches (bodies or parsed events) written through the
    real sink of this backend; returns the report over it."""
    if request.param == "sqlite":
        return lambda *batches: partial(
            delivery_report, write_warehouse(tmp_path / "warehouse.db", *batches)
        )
    pg_database = request.getfixturevalue("pg_database")
    return lambda *batches: write_postgres(pg_database, *batches)


# Arrival order is the list order: several deliveries arrive out of order.
EVENTS: list[bytes] = [
    # campaign 1 --------------------------------------------------------------
    # a: opened three times: by a prefetcher on day 1, then twice by a human on
    #    day 2; clicked only by a machine; converted.
    ev("sent", "a"),
    ev("delivered", "a"),
    ev("opened", "a", prefetched=True),
    ev("opened", "a", at=LATER),
    ev("opened", "a", at=LATER),
    ev("clicked", "a", machine=True, href="https://x.test/1"),
    ev("converted", "a"),
    # b: opened only through a proxy, and that open arrives before delivered and
    #    sent; clicked twice by a human (once with machine explicitly false).
    ev("opened", "b", proxied=True),
    ev("delivered", "b"),
    ev("sent", "b"),
    ev("clicked", "b", machine=False),
    ev("clicked", "b"),
    # c: bounced.
    ev("bounced", "c", failure_message="550 no such user"),
    ev("sent", "c"),
    # g: opened and clicked, only by machines, each several times.
    ev("sent", "g"),
    ev("delivered", "g"),
    ev("opened", "g", synthetic=True),
    ev("opened", "g", prefetched=True, proxied=True),
    ev("clicked", "g", machine=True),
    ev("clicked", "g", machine=True),
    # h: opened by a human (flags present but false or null); unsubscribed.
    ev("unsubscribed", "h"),
    ev("opened", "h", prefetched=False, proxied=None, synthetic=False),
    ev("sent", "h"),
    ev("delivered", "h"),
    # campaign 2, on day 2 --------------------------------------------------
    # d: opened by a human and marked as spam.
    ev("sent", "d", campaign=2, at=LATER),
    ev("delivered", "d", campaign=2, at=LATER),
    ev("opened", "d", campaign=2, at=LATER, event_id="d-open"),
    ev("spammed", "d", campaign=2, at=LATER),
    # i: failed.
    ev("sent", "i", campaign=2, at=LATER),
    ev("failed", "i", campaign=2, at=LATER, failure_message="rendering error"),
    # m: its open carries no campaign id; it still belongs to campaign 2.
    ev("opened", "m", campaign=None, at=LATER),
    ev("sent", "m", campaign=2, at=LATER),
    ev("delivered", "m", campaign=2, at=LATER),
    # campaign 10: sent, nothing delivered yet -----------------------------
    ev("sent", "j", campaign=10),
    # no campaign ---------------------------------------------------------
    ev("sent", "e", campaign=None, broadcast_id=5),
    ev("delivered", "e", campaign=None, broadcast_id=5),
    ev("failed", "f", campaign=None, transactional_message_id=7),
    ev("sent", "n", campaign=None, newsletter_id=9),
    ev("delivered", "n", campaign=None, newsletter_id=9),
    # events without a delivery id count once each, whether null or empty
    ev("sent", None, campaign=None),
    ev("sent", "", campaign=None),
    # a person-level unsubscribe is not a delivery
    ev("unsubscribed", None, campaign=None, object_type="customer"),
]
# Customer.io delivers at least once: d's open comes again, in a later batch.
REDELIVERED: list[bytes] = [ev("opened", "d", campaign=2, at=LATER, event_id="d-open")]

ZERO = dict.fromkeys(COUNTS, 0)


def counts(row: ReportRow) -> dict[str, int]:
    return {name: getattr(row, name) for name in COUNTS}


def by_group(rows: list[ReportRow]) -> dict[str, ReportRow]:
    return {row.group: row for row in rows}


@pytest.fixture
def warehouse(write: Write) -> Report:
    return write(EVENTS, REDELIVERED)


def test_by_campaign_counts_unique_deliveries(warehouse: Report) -> None:
    rows = warehouse(by="campaign")
    assert [row.group for row in rows] == ["1", "2", "10", "(none)"]  # numeric order
    groups = by_group(rows)
    assert counts(groups["1"]) == ZERO | {
        "sent": 5,  # a b c g h
        "delivered": 4,  # a b g h
        "opened": 2,  # a (a human among machines), h (flags false/null)
        "machine_opened": 2,  # b (proxy only), g (synthetic and prefetch)
        "clicked": 1,  # b, twice
        "machine_clicked": 2,  # a, g
        "converted": 1,
        "bounced": 1,
        "unsubscribed": 1,
    }
    assert counts(groups["2"]) == ZERO | {
        "sent": 3,
        "delivered": 2,
        "opened": 2,  # d (delivered twice, counted once), m (its open has no campaign id)
        "spammed": 1,
        "failed": 1,
    }
    assert counts(groups["10"]) == ZERO | {"sent": 1}
    # broadcast e, newsletter n, transactional f, two events without a delivery id;
    # the customer-level unsubscribe is left out.
    assert counts(groups["(none)"]) == ZERO | {"sent": 4, "delivered": 2, "failed": 1}


def test_rates(warehouse: Report) -> None:
    groups = by_group(warehouse(by="campaign"))
    assert groups["1"].rates == {
        "delivery_rate": 0.8,
        "open_rate": 0.5,
        "click_rate": 0.25,
        "bounce_rate": 0.2,
        "spam_rate": 0.0,
        "unsubscribe_rate": 0.25,
    }
    assert groups["2"].rates == {
        "delivery_rate": 0.6667,  # rounded to 4 places
        "open_rate": 1.0,
        "click_rate": 0.0,
        "bounce_rate": 0.0,
        "spam_rate": 0.5,
        "unsubscribe_rate": 0.0,
    }
    # nothing delivered: the rates over delivered are unknown, not 0
    assert groups["10"].rates == {
        "delivery_rate": 0.0,
        "open_rate": None,
        "click_rate": None,
        "bounce_rate": 0.0,
        "spam_rate": None,
        "unsubscribe_rate": None,
    }


def test_by_day_is_activity_per_utc_day(warehouse: Report) -> None:
    groups = by_group(warehouse(by="day"))
    assert list(groups) == ["2023-11-14", "2023-11-15"]
    assert counts(groups["2023-11-14"]) == ZERO | {
        "sent": 10,
        "delivered": 6,
        "opened": 1,  # h
        "machine_opened": 3,  # b, g, and a: on day 1 only its prefetch happened
        "clicked": 1,
        "machine_clicked": 2,
        "converted": 1,
        "bounced": 1,
        "unsubscribed": 1,
        "failed": 1,
    }
    assert counts(groups["2023-11-15"]) == ZERO | {
        "sent": 3,
        "delivered": 2,
        "opened": 3,  # d, m, and a, delivered the day before
        "spammed": 1,
        "failed": 1,
    }
    assert groups["2023-11-15"].rates["open_rate"] == 1.5  # activity, not a cohort


def test_since_keeps_events_that_occurred_from_then_on(warehouse: Report) -> None:
    groups = by_group(warehouse(by="campaign", since=T0 + DAY / 2))
    assert list(groups) == ["1", "2"]
    assert counts(groups["1"]) == ZERO | {"opened": 1}  # a's human opens on day 2
    assert groups["1"].rates["open_rate"] is None
    assert counts(groups["2"]) == ZERO | {
        "sent": 3,
        "delivered": 2,
        "opened": 2,
        "spammed": 1,
        "failed": 1,
    }
    assert warehouse(by="campaign", since=LATER + DAY) == []


def test_by_broadcast_and_by_newsletter(warehouse: Report) -> None:
    broadcasts = by_group(warehouse(by="broadcast"))
    assert list(broadcasts) == ["5", "(none)"]
    assert counts(broadcasts["5"]) == ZERO | {"sent": 1, "delivered": 1}
    assert broadcasts["(none)"].sent == 12
    newsletters = by_group(warehouse(by="newsletter"))
    assert list(newsletters) == ["9", "(none)"]
    assert counts(newsletters["9"]) == ZERO | {"sent": 1, "delivered": 1}


def test_rows_are_frozen_and_flatten_in_a_fixed_order(warehouse: Report) -> None:
    row = warehouse()[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.sent = 0  # type: ignore[misc]
    assert list(row.as_dict()) == ["group", *COUNTS, *RATES]
    compared = dataclasses.replace(row, api={"sent": 7})
    assert compared.as_dict()["api_sent"] == 7


def test_an_empty_warehouse_has_no_rows(write: Write) -> None:
    assert write([])(by="day") == []


def test_matches_a_per_event_count_on_random_traffic(write: Write) -> None:
    """The SQL agrees with a plain Python count over the normalised rows."""
    rng = random.Random(7)
    bodies = []
    for _ in range(800):
        delivery = f"r{rng.randrange(150)}" if rng.random() < 0.95 else None
        metric = rng.choice(
            [
                *("sent", "delivered", "opened", "opened", "clicked", "bounced"),
                *("converted", "spammed", "unsubscribed", "failed", "dropped"),
            ]
        )
        flags: dict[str, Any] = {}
        if metric == "opened":
            flags = {f: rng.choice([True, False, None]) for f in ("prefetched", "proxied")}
        elif metric == "clicked":
            flags = {"machine": rng.choice([True, False, None])}
        campaign = int(delivery[1:]) % 4 if delivery else rng.choice([None, 1])
        bodies.append(
            ev(metric, delivery, campaign=campaign, at=T0 + rng.randrange(3 * DAY), **flags)
        )
    report = write(bodies)

    kinds: dict[str, set[str]] = defaultdict(set)  # per delivery: what happened to it
    group_of: dict[str, str] = {}
    for body in bodies:
        row = normalise(parse_event(body))
        delivery = row["delivery_id"] or f"event {row['event_id']}"
        group_of[delivery] = row["campaign_id"] or "(none)"
        kind = row["metric"]
        if kind == "opened":
            kind = "machine_opened" if row["prefetched"] or row["proxied"] else "opened"
        elif kind == "clicked":
            kind = "machine_clicked" if row["machine"] else "clicked"
        kinds[delivery].add(kind)
    expected: dict[str, dict[str, int]] = {}
    for delivery, group in group_of.items():
        had = kinds[delivery]
        if "opened" in had:  # one human open makes it human-opened
            had.discard("machine_opened")
        if "clicked" in had:
            had.discard("machine_clicked")
        totals = expected.setdefault(group, dict(ZERO))
        for name in COUNTS:
            totals[name] += name in had

    assert {r.group: counts(r) for r in report()} == expected


def test_opens_read_only_and_never_creates_files(tmp_path: Path) -> None:
    odd = tmp_path / "a?b #c%41.db"  # characters that mean something in a URI

    def files() -> list[str]:  # SQLite's own -wal/-shm companions aside
        return sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm")))

    write_warehouse(odd, EVENTS)
    content = odd.read_bytes()
    assert by_group(delivery_report(odd))["1"].sent == 5
    with pytest.raises(StoreUnavailable, match="unable to open"):
        delivery_report(tmp_path / "missing.db")
    assert files() == [odd.name]
    assert odd.read_bytes() == content


def test_a_file_that_is_not_a_warehouse_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "inbox.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE events (seq INTEGER, event_id TEXT, body BLOB)")
    db.close()
    with pytest.raises(StoreUnavailable, match=r"not a warehouse.*lacks .*campaign_id"):
        delivery_report(path)


def test_a_real_event_after_its_backfilled_stand_in_counts_once(write: Write) -> None:
    """reconcile backfilled k's sent, delivered and open (webhooks down); then the
    real ones arrive after all: the open was a prefetch, on the next day."""
    message = {"id": "k", "type": "email", "campaign_id": 1, "customer_id": "p"}
    message["metrics"] = {"sent": T0, "delivered": T0 + 5, "opened": T0 + 60}
    stand_ins = [
        parse_event(backfill_event(message, metric), received_at=T0, backfilled=True)
        for metric in ("sent", "delivered", "opened")
    ]
    real = [
        parse_event(body, received_at=LATER)
        for body in (
            ev("sent", "k"),
            ev("delivered", "k", at=T0 + 2),  # Customer.io's clocks differ by a few seconds
            ev("opened", "k", at=LATER, prefetched=True),
        )
    ]

    report = write(stand_ins, real)
    [row] = report()
    assert counts(row) == ZERO | {"sent": 1, "delivered": 1, "machine_opened": 1}
    days = {r.group: counts(r) for r in report(by="day")}
    assert days == {
        "2023-11-14": ZERO | {"sent": 1, "delivered": 1},  # the stand-in open is gone
        "2023-11-15": ZERO | {"machine_opened": 1},
    }
    # The real delivered is before the window: its stand-in, inside, does not replace it.
    [window] = report(since=T0 + 3)
    assert counts(window) == ZERO | {"machine_opened": 1}


def test_unknown_grouping_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="by must be one of"):
        delivery_report(tmp_path / "x.db", by="week")


def test_by_transactional_message(warehouse: Report) -> None:
    messages = by_group(warehouse(by="transactional"))
    assert list(messages) == ["7", "(none)"]
    assert counts(messages["7"]) == ZERO | {"failed": 1}


def test_by_recipient_domain_lower_cased_recipient_first(write: Write) -> None:
    report = write(
        [
            ev("sent", "p", recipient="Ann@Gmail.COM"),
            ev("delivered", "p", recipient="ann@gmail.com"),
            ev("spammed", "p", recipient="ann@gmail.com"),
            # no recipient on the event: the person's email tells the domain
            ev("sent", "q", recipient=None, identifiers={"id": "2", "email": "bo@yahoo.com"}),
            ev("sent", "r", recipient=None, identifiers={"id": "3"}),
            ev("sent", "s", recipient="not-an-address"),
        ]
    )
    domains = by_group(report(by="domain"))
    assert list(domains) == ["gmail.com", "yahoo.com", "(none)"]
    assert counts(domains["gmail.com"]) == ZERO | {"sent": 1, "delivered": 1, "spammed": 1}
    assert domains["yahoo.com"].sent == 1
    assert domains["(none)"].sent == 2


@pytest.mark.parametrize(
    "by", ["campaign", "broadcast", "newsletter", "transactional", "domain", "day"]
)
def test_postgresql_and_sqlite_give_the_same_rows_for_the_samples(
    by: str, tmp_path: Path, pg_database: str
) -> None:
    # One batch each, one per event_id as the store keeps them (three documentation
    # samples share an id).
    unique = {parse_event(p.read_bytes()).event_id: p for p in reversed(sample_files())}
    samples = [[path.read_bytes()] for path in sorted(unique.values())]
    on_sqlite = delivery_report(write_warehouse(tmp_path / "w.db", *samples), by=by)
    on_postgres = write_postgres(pg_database, *samples)(by=by)
    assert on_postgres == on_sqlite
    assert sum(row.sent for row in on_sqlite) > 0


def test_report_for_a_sqlite_sink_url_reads_its_file(tmp_path: Path) -> None:
    path = write_warehouse(tmp_path / "warehouse.db", EVENTS)
    url = parse_sink_url(f"sqlite://{path}")
    assert delivery_report_for(url, by="day") == delivery_report(path, by="day")


def test_report_for_a_postgresql_sink_is_read_only_and_says_what_is_missing(
    pg_database: str,
) -> None:
    url = sink_url(pg_database)  # a schema nothing made
    with pytest.raises(StoreUnavailable, match=r"not a warehouse.*lacks .*campaign_id"):
        delivery_report_for(url)
    report = write_postgres(pg_database, EVENTS)
    assert by_group(report())["1"].sent == 5


def test_report_for_an_unreachable_postgresql_hides_the_password(pg_database: str) -> None:
    with socket.socket() as reserved:  # bound, not listening: refused
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        url = sink_url(f"postgresql://root:s3cret-pw@127.0.0.1:{port}/x")
        with pytest.raises(StoreUnavailable) as refused:
            delivery_report_for(url)
    assert "s3cret-pw" not in str(refused.value)
    assert "root:***@127.0.0.1" in str(refused.value)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_deliverys_events_are_read_from_the_sink_newest_first(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    batch = [
        ev("sent", "x", event_id="x-sent"),
        ev("opened", "x", at=LATER, event_id="x-open"),
        ev("sent", "y", event_id="y-sent"),
    ]
    if backend == "sqlite":
        url = parse_sink_url(f"sqlite://{write_warehouse(tmp_path / 'w.db', batch)}")
    else:
        url = sink_url(request.getfixturevalue("pg_database"), "table_prefix=cio_")
        write_postgres_url(url, batch)
    assert delivery_event_ids(url, "x") == ["x-open", "x-sent"]
    assert delivery_event_ids(url, "x", limit=1) == ["x-open"]
    assert delivery_event_ids(url, "nope") == []
