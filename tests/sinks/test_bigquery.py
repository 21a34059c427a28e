"""The BigQuery sink against a real BigQuery emulator (``bqemulator``) and the real
Google client."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from cio_webhooks import parse_event
from cio_webhooks._exceptions import SinkError
from cio_webhooks.events import Event, iso
from cio_webhooks.sinks import (
    CHANNEL_VIEWS,
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    Batch,
    Privacy,
    Sink,
    delivery_rows,
    event_row,
    parse_sink_url,
)
from cio_webhooks.sinks._rows import as_dicts
from cio_webhooks.sinks.bigquery import BigQuerySink, from_url
from cio_webhooks.testing import make_event

from ..conftest import NOW, SAMPLES
from ._bigquery_peer import PROJECT, Emulator, Peer, Reader, bigquery_peer, running_emulator
from ._data import samples

SALT = b"pepper"


def batch_of(events: Sequence[Event], privacy: Privacy, loaded_at: float = NOW) -> Batch:
    """The batch the loader would hand this sink."""
    stamp = iso(loaded_at)
    rows = [event_row(e, stamp, privacy) for e in events]
    return Batch(rows, delivery_rows(rows, stamp), 1, len(rows), loaded_at)


@pytest.fixture
async def peer(bigquery_emulator: Emulator) -> AsyncIterator[Peer]:
    async with bigquery_peer(bigquery_emulator) as opened:
        yield opened


async def test_every_sample_lands_once_as_its_row(
    peer: Peer,
) -> None:
    sink = peer.sink
    batch = batch_of(samples(), sink.privacy)

    await sink.write(batch)

    expected = sorted(as_dicts(EVENT_COLUMNS, batch.events), key=lambda r: r["event_id"])
    assert peer.events() == expected


async def test_a_replayed_batch_leaves_one_row_per_event_refreshed(
    peer: Peer,
) -> None:
    sink = peer.sink
    await sink.write(batch_of(samples(), sink.privacy, loaded_at=NOW))

    await sink.write(batch_of(samples(), sink.privacy, loaded_at=NOW + 60))

    rows = peer.events()
    assert len(rows) == len(samples())
    assert {r["loaded_at"] for r in rows} == {iso(NOW + 60)}


async def test_an_event_without_a_time_is_kept_once_in_the_null_partition(peer: Peer) -> None:
    body = make_event("no-time", "email", "sent")
    body["timestamp"] = None
    timeless = parse_event(json.dumps(body).encode(), received_at=NOW)
    timed = parse_event(json.dumps(make_event("timed")).encode(), received_at=NOW)

    await peer.sink.write(batch_of([timeless, timed], peer.sink.privacy))
    await peer.sink.write(batch_of([timeless, timed], peer.sink.privacy, loaded_at=NOW + 1))

    rows = peer.events()
    assert [(r["event_id"], r["occurred_at"]) for r in rows] == [
        ("no-time", None),
        ("timed", iso(1_700_000_000)),
    ]


async def test_deliveries_hold_one_row_per_delivery_of_the_samples(
    peer: Peer,
) -> None:
    sink = peer.sink
    batch = batch_of(samples(), sink.privacy)

    await sink.write(batch)
    await sink.write(batch)

    expected = sorted(as_dicts(DELIVERY_COLUMNS, batch.deliveries), key=lambda r: r["delivery_id"])
    assert peer.deliveries() == expected


def delivery_events(delivery_id: str) -> list[Event]:
    """A delivery's events: sent, a real open, a bounce, and an earlier backfilled
    stand-in for the open (the real one must win)."""

    def body(suffix: str, metric: str, at: int, **data: Any) -> bytes:
        return json.dumps(
            {
                "event_id": f"{delivery_id}-{suffix}",
                "object_type": "email",
                "metric": metric,
                "timestamp": at,
                "data": {"delivery_id": delivery_id, "customer_id": "p1", **data},
            }
        ).encode()

    return [
        parse_event(body("stand-in", "opened", NOW + 5), received_at=NOW + 30, backfilled=True),
        parse_event(body("sent", "sent", NOW), received_at=NOW),
        parse_event(body("opened", "opened", NOW + 10, proxied=False), received_at=NOW + 10),
        parse_event(body("bounced", "bounced", NOW + 20, failure_message="full"), received_at=NOW),
    ]


async def test_a_deliveries_row_is_the_same_whatever_order_its_events_arrive_in(
    peer: Peer,
) -> None:
    sink = peer.sink
    # Every order of the four events, one delivery per order: the k-th write holds the
    # k-th event of each, so every merge after the first goes through the stored row.
    orders = list(itertools.permutations(range(4)))
    events = {f"d{i}": delivery_events(f"d{i}") for i in range(len(orders))}
    for k in range(4):
        step = [events[f"d{i}"][order[k]] for i, order in enumerate(orders)]
        await sink.write(batch_of(step, sink.privacy))

    rows = peer.deliveries()
    assert len(rows) == len(orders)
    for row in rows:
        (expected,) = as_dicts(
            DELIVERY_COLUMNS, batch_of(events[row["delivery_id"]], sink.privacy).deliveries
        )
        assert row == expected
        assert row["opened_at"] == iso(NOW + 10)
        assert row["backfilled_metrics"] is None


async def test_views_select_the_events_of_their_channel(
    peer: Peer,
) -> None:
    sink = peer.sink
    await sink.write(batch_of(samples(), sink.privacy))

    for view, object_type in CHANNEL_VIEWS.items():
        expected = [r for r in peer.events() if r["object_type"] == object_type]
        assert peer.reader.rows(view, "event_id") == expected, view


async def test_table_prefix_names_every_table_and_view(bigquery_emulator: Emulator) -> None:
    from google.cloud import bigquery

    async with bigquery_peer(bigquery_emulator, "table_prefix=cio_") as peer:
        await peer.sink.write(batch_of(samples(), peer.sink.privacy))
    dataset = peer.sink.dataset

    client = bigquery_client(bigquery_emulator)
    names = {t.table_id for t in client.list_tables(f"{PROJECT}.{dataset}")}
    # The staging tables of each write are gone.
    assert names == {f"cio_{n}" for n in ("events", "deliveries", *CHANNEL_VIEWS)}
    events = client.get_table(f"{PROJECT}.{dataset}.cio_events")
    assert isinstance(events.time_partitioning, bigquery.TimePartitioning)
    assert events.time_partitioning.field == "occurred_at"
    assert events.clustering_fields == ["object_type", "metric", "delivery_id"]
    assert client.get_table(f"{PROJECT}.{dataset}.cio_deliveries").clustering_fields == [
        "delivery_id"
    ]


async def test_open_twice_keeps_the_rows(peer: Peer) -> None:
    sink = peer.sink
    await sink.write(batch_of(samples(), sink.privacy))

    await sink.open()

    assert len(peer.events()) == len(samples())


async def test_a_table_dropped_behind_the_sinks_back_is_made_again(
    peer: Peer, bigquery_emulator: Emulator
) -> None:
    first, second = samples()[:5], samples()[5:]
    await peer.sink.write(batch_of(first, peer.sink.privacy))
    bigquery_client(bigquery_emulator).delete_table(peer.sink.table("events"))

    with pytest.raises(SinkError, match="merge events"):
        await peer.sink.write(batch_of(second, peer.sink.privacy))
    await peer.sink.write(batch_of(second, peer.sink.privacy))

    assert [r["event_id"] for r in peer.events()] == sorted(e.event_id for e in second)


async def test_hashed_addresses_and_dropped_content_show_in_the_rows(
    bigquery_emulator: Emulator,
) -> None:
    with_content = parse_event((SAMPLES / "email_sent_with_content.raw.json").read_bytes())
    async with bigquery_peer(bigquery_emulator, "email=hash&content=drop", salt=SALT) as peer:
        await peer.sink.write(batch_of([with_content], peer.sink.privacy))

    (row,) = peer.events()
    hashed = hashlib.sha256(SALT + b"test@example.com").hexdigest()
    assert row["recipient"] == hashed
    data = json.loads(row["raw"])["data"]
    assert data["recipient"] == hashed
    assert "content" not in data
    assert "headers" not in data
    (delivery,) = peer.deliveries()
    assert delivery["recipient"] == hashed


async def test_dropped_addresses_and_raw_show_in_the_rows(bigquery_emulator: Emulator) -> None:
    async with bigquery_peer(bigquery_emulator, "email=drop&raw=drop") as peer:
        await peer.sink.write(batch_of(samples(), peer.sink.privacy))

    rows = peer.events()
    assert len(rows) == len(samples())
    assert {(r["email"], r["recipient"], r["raw"]) for r in rows} == {(None, None, None)}


async def test_a_write_while_bigquery_is_down_raises_sink_error_and_a_later_one_succeeds(
    tmp_path: Path,
) -> None:
    with running_emulator(tmp_path, persistent=True) as emulator:
        sink = BigQuerySink(PROJECT, "down", api_endpoint=emulator.endpoint, timeout=2)
        sink_as_protocol: Sink = sink
        await sink_as_protocol.open()
        first, second = samples()[:5], samples()[5:]
        emulator.stop()

        with pytest.raises(SinkError, match=r"sink bigquery: .* failed"):
            await sink.write(batch_of(first, sink.privacy))

        emulator.start()
        await sink.write(batch_of(first, sink.privacy))
        await sink.write(batch_of(second, sink.privacy))
        await sink.close()

        rows = Reader(emulator.endpoint, "down").events()
    assert sorted(r["event_id"] for r in rows) == sorted(e.event_id for e in samples())


async def test_an_unreadable_key_file_is_named_without_its_content(
    tmp_path: Path, bigquery_emulator: Emulator
) -> None:
    key = tmp_path / "key.json"
    secret = "-----BEGIN PRIVATE KEY-----\\nNOT-A-REAL-KEY-SECRET\\n-----END PRIVATE KEY-----\\n"
    key.write_text(json.dumps({"type": "service_account", "private_key": secret}))
    sink = from_url(parse_sink_url(f"bigquery://{PROJECT}/x?credentials={key}"))

    with pytest.raises(SinkError, match=r"key file .*key\.json") as caught:
        await sink.open()

    assert "NOT-A-REAL-KEY-SECRET" not in str(caught.value)
    assert caught.value.__cause__ is None


def bigquery_client(emulator: Emulator) -> Any:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    return bigquery.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options=ClientOptions(api_endpoint=emulator.endpoint),
    )


async def test_a_key_the_token_service_refuses_raises_sink_error_without_the_key(
    tmp_path: Path, bigquery_emulator: Emulator
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    key = tmp_path / "key.json"
    key.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": PROJECT,
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": "loader@demo.iam.gserviceaccount.com",
                "client_id": "1",
                # Nothing listens on port 1: the token request fails.
                "token_uri": "http://127.0.0.1:1/token",
            }
        )
    )
    sink = BigQuerySink(
        PROJECT, "keyed", credentials=str(key), api_endpoint=bigquery_emulator.endpoint, timeout=2
    )

    with pytest.raises(SinkError, match="sink bigquery: ") as caught:
        await sink.open()

    body = pem.splitlines()[1]
    assert body not in str(caught.value)
    assert "PRIVATE KEY" not in str(caught.value)
