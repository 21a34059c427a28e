"""The PostgreSQL warehouse sink, against the real server: every sample lands once,
replays refresh, deliveries do not depend on arrival order, failures are ``SinkError``
and pass, views and personal-data options show in the rows."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
import pytest

from cio_webhooks import parse_event
from cio_webhooks._exceptions import SinkError
from cio_webhooks.events import Event, iso
from cio_webhooks.reconcile import backfill_event
from cio_webhooks.sinks import (
    CHANNEL_VIEWS,
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    Batch,
    Privacy,
    delivery_rows,
    event_row,
)
from cio_webhooks.sinks._rows import as_dicts
from cio_webhooks.sinks.postgres import PostgresSink, from_url
from cio_webhooks.testing import make_event
from tests.conftest import sample_files
from tests.sinks._postgres_peer import PostgresPeer, read_back, sink_url

T0 = 1_700_000_000
LATER = T0 + 86400


def body(event_id: str, metric: str, *, at: int = T0, **data: Any) -> bytes:
    return json.dumps(make_event(event_id, "email", metric, timestamp=at, **data)).encode()


def batch(
    events: Sequence[Event], *, loaded_at: float = T0 + 1, privacy: Privacy | None = None
) -> Batch:
    """The Batch the loader would hand the sink for ``events``."""
    stamp = iso(loaded_at)
    rows = [event_row(e, stamp, privacy or Privacy()) for e in events]
    return Batch(rows, delivery_rows(rows, stamp), 1, len(rows), loaded_at)


def samples() -> list[Event]:
    """The samples, one per event_id as the store keeps them (three documentation
    samples share one id, the first is stored)."""
    events: dict[str, Event] = {}
    for path in sample_files():
        event = parse_event(path.read_bytes(), received_at=T0)
        events.setdefault(event.event_id, event)
    return list(events.values())


def without_raw(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "raw"} for row in rows]


async def test_every_sample_lands_once_as_its_row(postgres_peer: PostgresPeer) -> None:
    events = samples()
    written = batch(events)
    async with postgres_peer() as (sink, rows_of):
        await sink.write(written)
        rows = await rows_of()
    expected = sorted(as_dicts(EVENT_COLUMNS, written.events), key=lambda r: r["event_id"])
    assert [r["event_id"] for r in rows.events] == sorted(e.event_id for e in events)
    assert without_raw(rows.events) == without_raw(expected)
    assert [r["raw"] for r in rows.events] == [json.loads(r["raw"]) for r in expected]
    assert rows.deliveries == sorted(
        as_dicts(DELIVERY_COLUMNS, written.deliveries), key=lambda r: r["delivery_id"]
    )


async def test_samples_sharing_an_event_id_land_as_one_row(postgres_peer: PostgresPeer) -> None:
    every = [parse_event(path.read_bytes(), received_at=T0) for path in sample_files()]
    async with postgres_peer() as (sink, rows_of):
        for event in every:  # one batch each: the same event_id in several batches
            await sink.write(batch([event]))
        rows = await rows_of()
    assert len(rows.events) == len({e.event_id for e in every}) < len(every)


async def test_a_replayed_batch_refreshes_its_rows_and_adds_none(
    postgres_peer: PostgresPeer,
) -> None:
    events = samples()
    async with postgres_peer() as (sink, rows_of):
        await sink.write(batch(events, loaded_at=T0 + 1))
        first = await rows_of()
        await sink.write(batch(events, loaded_at=T0 + 2))  # the loader crashed: again
        again = await rows_of()
    assert len(again.events) == len(first.events) == len(events)
    assert {r["loaded_at"] for r in again.events} == {"2023-11-14T22:13:22.000Z"}
    assert len(again.deliveries) == len(first.deliveries)
    assert {r["updated_at"] for r in again.deliveries} == {"2023-11-14T22:13:22.000Z"}


def one_delivery() -> list[Event]:
    """Four events of delivery k: reconcile backfilled its open (webhooks were down),
    then the real open, a prefetch on the next day, arrived after all."""
    message = {"id": "k", "type": "email", "campaign_id": 1, "customer_id": "p"}
    message["metrics"] = {"opened": T0 + 60}
    stand_in = parse_event(backfill_event(message, "opened"), received_at=T0, backfilled=True)
    return [
        stand_in,
        *(
            parse_event(b, received_at=LATER)
            for b in (
                body("k1", "sent", delivery_id="k"),
                body("k3", "opened", at=LATER, delivery_id="k", prefetched=True),
                body("k4", "bounced", at=T0 + 9, delivery_id="k", failure_message="550"),
            )
        ),
    ]


async def test_a_delivery_is_the_same_in_every_arrival_order(postgres_peer: PostgresPeer) -> None:
    events = one_delivery()
    expected = as_dicts(DELIVERY_COLUMNS, batch(events).deliveries)
    assert expected[0]["opened_at"] == "2023-11-15T22:13:20.000Z"  # the real one
    # The real open was a prefetch, and a stand-in cannot tell: no human open.
    assert expected[0]["backfilled_metrics"] is None
    assert expected[0]["human_opened_at"] is None
    seen = []
    async with postgres_peer() as (sink, rows_of):
        for order in itertools.permutations(events):
            async with sink_reset(sink):
                for event in order:  # one batch each, as they would trickle in
                    await sink.write(batch([event]))
                seen.append((await rows_of()).deliveries)
    assert all(rows == expected for rows in seen)


@contextlib.asynccontextmanager
async def sink_reset(sink: PostgresSink) -> AsyncIterator[None]:
    """Empty the sink's tables after the block."""
    try:
        yield
    finally:
        async with await psycopg.AsyncConnection.connect(sink.dsn, autocommit=True) as conn:
            for table in ("events", "deliveries"):
                await conn.execute(b"TRUNCATE " + sink.table(table).as_bytes(conn))


async def test_a_stand_in_alone_is_marked_backfilled(postgres_peer: PostgresPeer) -> None:
    stand_in = one_delivery()[0]
    async with postgres_peer() as (sink, rows_of):
        await sink.write(batch([stand_in]))
        [row] = (await rows_of()).deliveries
    assert row["opened_at"] == "2023-11-14T22:14:20.000Z"
    assert row["backfilled_metrics"] == "opened"


class Proxy:
    """A TCP relay on 127.0.0.1 to the test PostgreSQL that can be taken down (its
    port stays reserved: connections are refused) and brought back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.reserved = self._reserve(0)
        self.port: int = self.reserved.getsockname()[1]
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self.reserved.close()
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.links:
            writer.transport.abort()
        await self.server.wait_closed()
        self.reserved = self._reserve(self.port)

    @staticmethod
    def _reserve(port: int) -> socket.socket:
        """A socket bound to ``port`` that does not listen: connections are refused."""
        reserved = socket.socket()
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reserved.bind(("127.0.0.1", port))
        return reserved

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.links.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def close(self) -> None:
        self.reserved.close()


async def test_a_write_while_the_server_is_down_is_a_sink_error_then_succeeds(
    pg_database: str,
) -> None:
    info = psycopg.conninfo.conninfo_to_dict(pg_database)
    proxy = Proxy((str(info.get("host", "127.0.0.1")), int(str(info.get("port", 5432)))))
    database = pg_database.rsplit("/", 1)[1]
    url = sink_url(f"postgresql://{info['user']}:s3cret-pw@127.0.0.1:{proxy.port}/{database}")
    sink = from_url(url)
    events = samples()
    try:
        with pytest.raises(SinkError, match="opening failed") as refused:
            await sink.open()
        assert "s3cret-pw" not in str(refused.value)
        assert f"postgresql://{info['user']}:***@127.0.0.1:{proxy.port}/" in str(refused.value)
        await proxy.up()
        await sink.open()
        await sink.write(batch(events[:3]))
        await proxy.down()  # the sink's connection is cut as well
        with pytest.raises(SinkError, match=r"writing seq 1\.\.3 failed") as failed:
            await sink.write(batch(events[3:6]))
        assert "s3cret-pw" not in str(failed.value)
        await proxy.up()
        await sink.write(batch(events[3:6]))
        assert len((await read_back(sink)).events) == 6
    finally:
        await sink.close()
        if proxy.server is not None:
            proxy.server.close()
        proxy.close()


async def test_open_is_idempotent_and_safe_from_two_processes_at_once(pg_database: str) -> None:
    url = sink_url(pg_database, "table_prefix=cio_")
    sinks = [from_url(url) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in sinks))  # four connections racing
        await sinks[0].open()
        await sinks[0].write(batch(samples()))
        await sinks[1].open()  # opening again keeps the rows
        assert len((await read_back(sinks[1])).events) == len(samples())
    finally:
        for s in sinks:
            await s.close()


async def test_channel_views_select_their_object_type(postgres_peer: PostgresPeer) -> None:
    events = samples()
    async with postgres_peer("table_prefix=cio_") as (sink, _):
        await sink.write(batch(events))
        async with await psycopg.AsyncConnection.connect(sink.dsn, autocommit=True) as conn:
            found = {}
            for view in CHANNEL_VIEWS:
                query = b"SELECT event_id FROM " + sink.table(view).as_bytes(conn)
                cur = await conn.execute(query)
                found[view] = sorted(r[0] for r in await cur.fetchall())
    assert sink.table("email_event").as_string(None).endswith('"cio_email_event"')
    for view, object_type in CHANNEL_VIEWS.items():
        assert found[view] == sorted(e.event_id for e in events if e.object_type == object_type)
    assert found["email_event"]
    assert found["customer_event"]


async def test_email_hash_raw_and_content_options_show_in_the_rows(
    postgres_peer: PostgresPeer,
) -> None:
    event = parse_event(body("p1", "sent", content="<p>Hi</p>", headers={"X": "1"}))
    async with postgres_peer("email=hash&content=drop", salt=b"pepper") as (sink, rows_of):
        await sink.write(batch([event], privacy=sink.privacy))
        [hashed] = (await rows_of()).events
    async with postgres_peer("email=drop&raw=drop") as (sink, rows_of):
        await sink.write(batch([event], privacy=sink.privacy))
        [dropped] = (await rows_of()).events
    expected = Privacy(addresses="hash", salt=b"pepper").address("person-1@example.com")
    assert hashed["email"] == hashed["recipient"] == expected
    assert "content" not in hashed["raw"]["data"]
    assert "headers" not in hashed["raw"]["data"]
    assert hashed["raw"]["data"]["identifiers"]["email"] == expected
    assert dropped["email"] is dropped["recipient"] is dropped["raw"] is None


async def test_a_delivery_id_too_long_for_an_index_still_lands(
    postgres_peer: PostgresPeer,
) -> None:
    """A btree entry holds about 2.7 kB: a batch with a longer delivery_id would fail
    for ever, and every later event wait behind it."""
    long_id = secrets.token_hex(3000)  # random: TOAST cannot compress it under the limit
    events = [
        parse_event(body("long-1", "sent", delivery_id=long_id)),
        parse_event(body("long-2", "delivered", at=LATER, delivery_id=long_id)),
    ]
    async with postgres_peer() as (sink, rows_of):
        await sink.write(batch(events[:1]))
        await sink.write(batch(events[1:]))  # merged into the same deliveries row
        rows = await rows_of()
    assert [r["event_id"] for r in rows.events] == ["long-1", "long-2"]
    assert rows.events[0]["delivery_id"] == rows.events[1]["delivery_id"]
    assert rows.events[0]["delivery_id"].startswith(long_id[:500])
    [delivery] = rows.deliveries
    assert delivery["delivery_id"] == rows.events[0]["delivery_id"]
    assert delivery["sent_at"] is not None
    assert delivery["delivered_at"] is not None


async def test_nul_characters_become_replacement_characters(postgres_peer: PostgresPeer) -> None:
    """PostgreSQL text holds no NUL and jsonb no \\u0000: the batch still lands."""
    event = parse_event(body("n\x001", "sent", delivery_id="d\x00", subject="a\x00b"))
    async with postgres_peer() as (sink, rows_of):
        await sink.write(batch([event]))
        await sink.write(batch([event]))  # the same row, not a second one
        rows = await rows_of()
    [row] = rows.events
    assert (row["event_id"], row["delivery_id"], row["subject"]) == (
        "n\ufffd1",
        "d\ufffd",
        "a\ufffdb",
    )
    assert row["raw"]["data"]["subject"] == "a\ufffdb"
    assert [d["delivery_id"] for d in rows.deliveries] == ["d\ufffd"]
