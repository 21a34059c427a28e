"""The Parquet sink, read back the way its readers read it (DuckDB and pyarrow.dataset
over the Hive directories): every event once at every moment, deliveries folded into
one row whatever the order, atomic files, failures as SinkError, PII options."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pytest

from cio_webhooks._exceptions import SinkError
from cio_webhooks.events import Event, iso, parse_event
from cio_webhooks.sinks import Batch, open_sink, parse_sink_url
from cio_webhooks.sinks._rows import (
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    KEEP_ALL,
    EventRow,
    Privacy,
    as_dicts,
    delivery_rows,
    event_row,
)
from cio_webhooks.sinks.parquet import ParquetSink

from ..conftest import SAMPLES
from ._data import samples
from ._parquet_peer import parquet_peer, read_deliveries, read_events

LOADED = 1_767_323_045.678  # 2026-01-02T03:04:05.678Z
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def make_event(
    event_id: str,
    *,
    object_type: str = "email",
    metric: str = "sent",
    at: float | None = T0,
    delivery_id: str | None = None,
    backfilled: bool = False,
    **data: Any,
) -> Event:
    body = {
        "event_id": event_id,
        "object_type": object_type,
        "metric": metric,
        "timestamp": at,
        "data": {"identifiers": {"id": "p1"}, "delivery_id": delivery_id, **data},
    }
    return parse_event(json.dumps(body).encode(), received_at=LOADED - 5, backfilled=backfilled)


def batch_of(events: list[Event], first: int, last: int, privacy: Privacy = KEEP_ALL) -> Batch:
    stamp = iso(LOADED)
    rows = [event_row(e, stamp, privacy) for e in events]
    return Batch(rows, delivery_rows(rows, stamp), first, last, LOADED)


def spread(n: int) -> list[Event]:
    """``n`` events over three channels and three days (seq i+1 for the i-th)."""
    return [
        make_event(
            f"ev-{i:03d}",
            object_type=("email", "sms", "push")[i % 3],
            at=T0 + i * 30_000,
            delivery_id=f"d-{i % 7}",
        )
        for i in range(n)
    ]


def ids(rows: list[dict[str, Any]]) -> Counter[str]:
    return Counter(row["event_id"] for row in rows)


def parquet_files(directory: Path) -> list[str]:
    """Every file the pyarrow dataset reader sees under ``directory``."""
    return sorted(pads.dataset(directory, format="parquet", partitioning="hive").files)


async def test_every_sample_lands_exactly_once_with_its_values(tmp_path: Path) -> None:
    events = samples()
    batch = batch_of(events, 1, len(events))
    async with parquet_peer(tmp_path / "lake") as peer:
        await peer.sink.write(batch)
        got = {row["event_id"]: row for row in peer.events()}
    assert ids(read_events(tmp_path / "lake")) == Counter(e.event_id for e in events)
    assert got == {row["event_id"]: row for row in as_dicts(EVENT_COLUMNS, batch.events)}


async def test_pyarrow_dataset_reads_the_same_rows_with_typed_columns(tmp_path: Path) -> None:
    events = samples()
    async with parquet_peer(tmp_path / "lake") as peer:
        await peer.sink.write(batch_of(events, 1, len(events)))
    table = pads.dataset(tmp_path / "lake/events", format="parquet", partitioning="hive")
    schema = table.schema
    assert str(schema.field("occurred_at").type) == "timestamp[ms, tz=UTC]"
    assert str(schema.field("backfilled").type) == "bool"
    assert str(schema.field("raw").type) == "string"
    assert sorted(table.to_table()["event_id"].to_pylist()) == sorted(e.event_id for e in events)


async def test_events_are_partitioned_by_day_and_object_type(tmp_path: Path) -> None:
    events = [*spread(9), make_event("no-time", at=None)]
    async with parquet_peer(tmp_path / "lake") as peer:
        await peer.sink.write(batch_of(events, 1, 10))
    days = sorted(p.name for p in (tmp_path / "lake/events").iterdir())
    assert days == [
        "date=2026-01-01",
        "date=2026-01-02",
        "date=2026-01-03",
        "date=__HIVE_DEFAULT_PARTITION__",
    ]
    email_day = tmp_path / "lake/events/date=2026-01-01/object_type=email"
    assert [p.name for p in email_day.iterdir()] == [f"part-{1:020d}-{10:020d}.parquet"]


async def test_the_same_batch_written_twice_leaves_one_row_per_event(tmp_path: Path) -> None:
    batch = batch_of(spread(12), 1, 12)
    async with parquet_peer(tmp_path / "lake") as peer:
        await peer.sink.write(batch)
        files = parquet_files(tmp_path / "lake/events")
        await peer.sink.write(batch)
        assert set(ids(peer.events()).values()) == {1}
        assert len(peer.events()) == 12
    assert parquet_files(tmp_path / "lake/events") == files


async def test_a_larger_reread_after_a_crash_leaves_one_row_per_event(tmp_path: Path) -> None:
    events = spread(20)
    async with parquet_peer(tmp_path / "lake") as peer:
        await peer.sink.write(batch_of(events[:10], 1, 10))
        # The cursor never moved: the loader reads again from it, with a larger batch.
        await peer.sink.write(batch_of(events, 1, 20))
        assert ids(peer.events()) == Counter(e.event_id for e in events)


async def test_a_smaller_reread_then_the_rest_leaves_one_row_per_event(tmp_path: Path) -> None:
    events = spread(20)
    async with parquet_peer(tmp_path / "lake") as peer:
        await peer.sink.write(batch_of(events, 1, 20))
        await peer.sink.write(batch_of(events[:10], 1, 10))
        await peer.sink.write(batch_of(events[10:15], 11, 15))
        await peer.sink.write(batch_of(events[15:], 16, 20))
        assert ids(peer.events()) == Counter(e.event_id for e in events)


async def test_events_written_again_under_another_seq_range_stay_once(tmp_path: Path) -> None:
    # Idempotent by event_id, not by seq: ranges that do not meet still find the rows.
    events = spread(10)
    async with parquet_peer(tmp_path / "lake") as peer:
        await peer.sink.write(batch_of(events, 1, 10))
        await peer.sink.write(batch_of(events[5:], 101, 105))
        assert ids(peer.events()) == Counter(e.event_id for e in events)


async def test_a_replay_refreshes_the_rows(tmp_path: Path) -> None:
    event = spread(1)
    async with parquet_peer(tmp_path / "lake") as peer:
        await peer.sink.write(batch_of(event, 1, 1))
        await peer.sink.write(batch_of(event, 1, 1, Privacy(addresses="drop", raw=False)))
        (row,) = peer.events()
    assert row["raw"] is None


async def test_compaction_merges_a_partitions_files_keeping_one_row_per_event(
    tmp_path: Path,
) -> None:
    events = [make_event(f"ev-{i:02d}", at=T0 + i) for i in range(12)]
    partition = tmp_path / "lake/events/date=2026-01-01/object_type=email"
    async with parquet_peer(tmp_path / "lake", compact_at=4) as peer:
        if not peer.sink.can_compact:
            pytest.skip("this filesystem cannot exchange two directories atomically")
        for seq, event in enumerate(events, start=1):
            await peer.sink.write(batch_of([event], seq, seq))
            assert len(list(partition.iterdir())) <= 4
            assert ids(peer.events()) == Counter(e.event_id for e in events[:seq])
        # A replay of an event compaction moved still finds it.
        await peer.sink.write(batch_of(events[2:4], 3, 4))
        await peer.sink.compact()
        assert ids(peer.events()) == Counter(e.event_id for e in events)
    assert [p.name for p in partition.iterdir()] == [f"part-{1:020d}-{12:020d}.parquet"]


async def test_readers_never_see_a_temp_file(tmp_path: Path) -> None:
    events = spread(30)
    async with parquet_peer(tmp_path / "lake", compact_at=2) as peer:
        for seq in range(1, 31, 3):
            await peer.sink.write(batch_of(events[seq - 1 : seq + 2], seq, seq + 2))
            seen = parquet_files(tmp_path / "lake")
            assert all(Path(f).name.startswith(("part-", "deliveries")) for f in seen)
            assert list((tmp_path / "lake/.staging").iterdir()) == []


async def test_open_removes_what_a_crash_left_in_staging(tmp_path: Path) -> None:
    async with parquet_peer(tmp_path / "lake") as peer:
        await peer.sink.write(batch_of(spread(3), 1, 3))
    staging = tmp_path / "lake/.staging"
    (staging / "0123.tmp").write_bytes(b"half a file")
    (staging / "abcd").mkdir()
    (staging / "abcd/part-1-2.parquet").write_bytes(b"old partition")
    async with parquet_peer(tmp_path / "lake") as peer:
        assert list(staging.iterdir()) == []
        assert len(peer.events()) == 3


def delivery_events() -> list[Event]:
    """One delivery's events: a backfilled 'delivered' superseded by the real one."""
    d: dict[str, Any] = {"delivery_id": "dlv-1", "recipient": "ann@example.com"}
    return [
        make_event("e-deliv-bf", metric="delivered", at=T0 + 15, backfilled=True, **d),
        make_event("e-deliv", metric="delivered", at=T0 + 20, **d),
        make_event("e-open", metric="opened", at=T0 + 30, **d),
        make_event("e-bounce", metric="bounced", at=T0 + 40, failure_message="full", **d),
    ]


async def test_a_delivery_row_is_the_same_in_every_arrival_order(tmp_path: Path) -> None:
    events = delivery_events()
    expected = as_dicts(DELIVERY_COLUMNS, batch_of(events, 1, 4).deliveries)
    assert expected[0]["delivered_at"] == "2026-01-01T00:00:20.000Z"
    assert expected[0]["backfilled_metrics"] is None
    for n, order in enumerate(itertools.permutations(events)):
        lake = tmp_path / f"lake-{n}"
        async with parquet_peer(lake) as peer:
            for seq, event in enumerate(order, start=1):
                await peer.sink.write(batch_of([event], seq, seq))
            assert peer.deliveries() == expected, order


async def test_every_delivery_has_one_row_across_batches_and_replays(tmp_path: Path) -> None:
    events = spread(40)
    async with parquet_peer(tmp_path / "lake", buckets=4) as peer:
        for first in range(1, 41, 10):
            await peer.sink.write(batch_of(events[first - 1 : first + 9], first, first + 9))
        await peer.sink.write(batch_of(events[:20], 1, 20))
        rows = peer.deliveries()
    expected = as_dicts(DELIVERY_COLUMNS, batch_of(events, 1, 40).deliveries)
    assert sorted(rows, key=lambda r: r["delivery_id"]) == expected


async def test_a_directory_that_cannot_be_written_raises_sink_error_until_it_can(
    tmp_path: Path,
) -> None:
    # A path under a regular file: no directory can be made there, not even by root.
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    sink = ParquetSink(blocker / "lake")
    with pytest.raises(SinkError, match="parquet sink parquet"):
        await sink.open()
    with pytest.raises(SinkError):
        await sink.write(batch_of(spread(3), 1, 3))
    blocker.unlink()
    await sink.write(batch_of(spread(3), 1, 3))
    assert len(read_events(blocker / "lake")) == 3
    assert len(read_deliveries(blocker / "lake")) == 3


async def test_a_directory_written_with_other_buckets_is_refused(tmp_path: Path) -> None:
    async with parquet_peer(tmp_path / "lake", buckets=8):
        pass
    with pytest.raises(SinkError, match="8 delivery buckets"):
        await ParquetSink(tmp_path / "lake", buckets=16).open()


async def test_personal_data_options_show_in_the_files(tmp_path: Path) -> None:
    event = parse_event((SAMPLES / "email_sent_with_content.raw.json").read_bytes())
    address = "test@example.com"
    assert event.data.recipient == address
    digest = hashlib.sha256(b"pepper" + address.encode()).hexdigest()
    async with parquet_peer(tmp_path / "hash", "email=hash&content=drop", salt=b"pepper") as peer:
        await peer.sink.write(batch_of([event], 1, 1, peer.sink.privacy))
        (row,) = peer.events()
        (delivery,) = peer.deliveries()
    assert (row["recipient"], delivery["recipient"]) == (digest, digest)
    data = json.loads(row["raw"])["data"]
    assert (data["recipient"], "content" in data, "headers" in data) == (digest, False, False)
    assert address not in row["raw"]

    async with parquet_peer(tmp_path / "drop", "email=drop&raw=drop") as peer:
        await peer.sink.write(batch_of([event], 1, 1, peer.sink.privacy))
        (row,) = peer.events()
        (delivery,) = peer.deliveries()
    assert (row["email"], row["recipient"], row["raw"], delivery["recipient"]) == (
        None,
        None,
        None,
        None,
    )


async def test_open_sink_makes_a_parquet_sink_from_its_url(tmp_path: Path) -> None:
    url = parse_sink_url(f"parquet://{tmp_path}/lake?name=lake&raw=drop")
    sink = open_sink(url)
    assert isinstance(sink, ParquetSink)
    assert (sink.name, sink.url, sink.privacy.raw) == ("lake", f"parquet://{tmp_path}/lake", False)
    await sink.open()
    await sink.write(batch_of(spread(2), 1, 2, sink.privacy))
    assert [row["raw"] for row in read_events(tmp_path / "lake")] == [None, None]
    assert os.path.isfile(tmp_path / "lake/_parquet_sink.json")


def test_rows_helpers_agree_on_columns() -> None:
    row: EventRow = event_row(spread(1)[0], None)
    assert len(row) == len(EVENT_COLUMNS)


async def test_an_object_type_too_long_for_a_directory_name_still_lands(tmp_path: Path) -> None:
    # A file system holds names of at most 255 bytes: a sink that raised on such an
    # event would raise on its batch for ever, and every later event would wait.
    events = [
        make_event("long-ascii", object_type="o" * 300, delivery_id="d-1"),
        make_event("long-utf8", object_type="é" * 100, delivery_id="d-2"),
        make_event("short", delivery_id="d-3"),
    ]
    async with parquet_peer(tmp_path / "lake") as peer:
        await peer.sink.write(batch_of(events, 1, 3))
        await peer.sink.write(batch_of(events, 1, 3))  # a replay finds the same files
    got = {row["event_id"]: row["object_type"] for row in read_events(tmp_path / "lake")}
    assert got["short"] == "email"
    # Hive readers take the value from the directory name: its beginning, then a digest.
    assert got["long-ascii"].startswith("o" * 100)
    assert got["long-utf8"].startswith("é" * 30)
    assert len(got) == 3
