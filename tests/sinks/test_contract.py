"""The sink contract, the same for every kind: what a reader of the warehouse sees after
the loader's writes is the rows ``_rows`` makes, one per event and one per delivery,
however often and in whatever order the batches come.

Each kind's own tests (``test_<kind>.py``) cover what only it has (types, views,
staging, files); this suite checks that all of them hold the same data.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cio_webhooks.events import Event
from cio_webhooks.sinks import (
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    Sink,
    delivery_rows,
    event_row,
    open_sink,
    parse_sink_url,
)
from cio_webhooks.sinks._rows import as_dicts

from ._data import batch, one_delivery, samples

SALT = b"contract-salt"


@dataclass
class Opened:
    sink: Sink
    events: Callable[[], Awaitable[list[dict[str, Any]]]]
    deliveries: Callable[[], Awaitable[list[dict[str, Any]]]]


Make = Callable[[str], contextlib.AbstractAsyncContextManager[Opened]]


def _sqlite(tmp_path: Path, request: pytest.FixtureRequest) -> Make:
    from cio_webhooks.sinks import SQLiteWarehouse

    @contextlib.asynccontextmanager
    async def make(parameters: str) -> AsyncIterator[Opened]:
        url = f"sqlite://{tmp_path / 'w.db'}" + (f"?{parameters}" if parameters else "")
        sink = open_sink(parse_sink_url(url, salt=SALT))
        assert isinstance(sink, SQLiteWarehouse)
        await sink.open()

        async def events() -> list[dict[str, Any]]:
            return as_dicts(EVENT_COLUMNS, await sink.rows("events"))

        async def deliveries() -> list[dict[str, Any]]:
            return as_dicts(DELIVERY_COLUMNS, await sink.rows("deliveries"))

        try:
            yield Opened(sink, events, deliveries)
        finally:
            await sink.close()

    return make


def _postgresql(tmp_path: Path, request: pytest.FixtureRequest) -> Make:
    peer = request.getfixturevalue("postgres_peer")

    @contextlib.asynccontextmanager
    async def make(parameters: str) -> AsyncIterator[Opened]:
        async with peer(parameters, salt=SALT) as (sink, read_back):

            async def events() -> list[dict[str, Any]]:
                rows = (await read_back()).events
                for row in rows:  # jsonb keeps the data, not the text
                    row["raw"] = json.dumps(row["raw"]) if row["raw"] is not None else None
                return list(rows)

            async def deliveries() -> list[dict[str, Any]]:
                return list((await read_back()).deliveries)

            yield Opened(sink, events, deliveries)

    return make


def _with_peer(peer: Callable[[str], Any]) -> Make:
    """``Make`` for a peer shaped like ``bigquery_peer``/``parquet_peer``: ``.sink``, and
    ``.events()``/``.deliveries()`` read back synchronously."""

    @contextlib.asynccontextmanager
    async def make(parameters: str) -> AsyncIterator[Opened]:
        async with peer(parameters) as opened:

            async def events() -> list[dict[str, Any]]:
                return list(opened.events())

            async def deliveries() -> list[dict[str, Any]]:
                return list(opened.deliveries())

            yield Opened(opened.sink, events, deliveries)

    return make


def _bigquery(tmp_path: Path, request: pytest.FixtureRequest) -> Make:
    from ._bigquery_peer import bigquery_peer

    emulator = request.getfixturevalue("bigquery_emulator")
    return _with_peer(lambda parameters: bigquery_peer(emulator, parameters, salt=SALT))


def _parquet(tmp_path: Path, request: pytest.FixtureRequest) -> Make:
    from ._parquet_peer import parquet_peer

    return _with_peer(lambda parameters: parquet_peer(tmp_path / "lake", parameters, salt=SALT))


KINDS: dict[str, Callable[[Path, pytest.FixtureRequest], Make]] = {
    "sqlite": _sqlite,
    "postgresql": _postgresql,
    "bigquery": _bigquery,
    "parquet": _parquet,
}


@pytest.fixture(params=list(KINDS))
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Make:
    return KINDS[request.param](tmp_path, request)


def _comparable(row: dict[str, Any]) -> dict[str, Any]:
    """A row with its JSON as data and its bools as bools (SQLite stores 0/1)."""
    out = dict(row)
    if out.get("raw") is not None:
        out["raw"] = json.loads(out["raw"])
    for column in EVENT_COLUMNS:
        if column.kind == "bool" and out.get(column.name) is not None:
            out[column.name] = bool(out[column.name])
    return out


def expected(events: list[Event], sink: Sink) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    stamp = batch(events).events[0][-1]
    rows = [event_row(e, stamp, sink.privacy) for e in events]
    return (
        sorted((_comparable(r) for r in as_dicts(EVENT_COLUMNS, rows)), key=_key("event_id")),
        sorted(as_dicts(DELIVERY_COLUMNS, delivery_rows(rows, stamp)), key=_key("delivery_id")),
    )


def _key(name: str) -> Callable[[dict[str, Any]], str]:
    return lambda row: str(row[name])


async def test_every_event_lands_once_as_the_rows_make_it(make: Make) -> None:
    events = [*samples(), *one_delivery()]
    async with make("") as opened:
        await opened.sink.write(batch(events))
        want_events, want_deliveries = expected(events, opened.sink)
        got = sorted((_comparable(r) for r in await opened.events()), key=_key("event_id"))
        assert got == want_events
        assert sorted(await opened.deliveries(), key=_key("delivery_id")) == want_deliveries


async def test_batches_written_again_and_out_of_order_change_nothing(make: Make) -> None:
    events = [*samples(), *one_delivery()]
    halves = [events[: len(events) // 2], events[len(events) // 2 :]]
    async with make("") as opened:
        # The second half first, then both again (a crash between write and cursor).
        await opened.sink.write(batch(halves[1], first_seq=100))
        await opened.sink.write(batch(halves[0], first_seq=1))
        await opened.sink.write(batch(halves[0], first_seq=1))
        await opened.sink.write(batch(events, first_seq=1))
        want_events, want_deliveries = expected(events, opened.sink)
        got = sorted((_comparable(r) for r in await opened.events()), key=_key("event_id"))
        assert got == want_events
        assert sorted(await opened.deliveries(), key=_key("delivery_id")) == want_deliveries


async def test_personal_data_options_hold_in_every_warehouse(make: Make) -> None:
    events = one_delivery()
    async with make("email=hash&content=drop") as opened:
        await opened.sink.write(batch(events, privacy=opened.sink.privacy))
        rows = await opened.events()
        assert rows
        for row in rows:
            assert "@example.com" not in json.dumps(row)
        want_events, _ = expected(events, opened.sink)
        assert sorted((_comparable(r) for r in rows), key=_key("event_id")) == want_events
