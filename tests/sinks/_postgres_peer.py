"""The PostgreSQL sink for the shared sink contract suite: ``postgres_peer`` makes an
opened ``PostgresSink`` on a schema of its own in this run's database, with a
``read_back`` that returns what the warehouse holds.

Use it as a fixture (import ``postgres_peer`` into a test module or conftest)::

    async with postgres_peer("email=hash&table_prefix=cio_", salt=b"s") as (sink, read_back):
        await sink.write(batch)
        rows = await read_back()   # rows.events, rows.deliveries: lists of dicts

Rows come as ``_rows`` makes them (``EVENT_COLUMNS``/``DELIVERY_COLUMNS`` keys; times as
ISO text ``2026-01-02T03:04:05.678Z``; bools as bool or None), ordered by their key,
except ``raw``: jsonb keeps the data, not the text, so it comes back decoded (a dict,
None when dropped); compare it with ``json.loads`` of the row's ``raw``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cio_webhooks.sinks import DELIVERY_COLUMNS, EVENT_COLUMNS, SinkURL, parse_sink_url
from cio_webhooks.sinks.postgres import PostgresSink, from_url, select_list

__all__ = ["PostgresPeer", "ReadBack", "Rows", "postgres_peer", "read_back"]


@dataclass(frozen=True)
class Rows:
    """Everything in a sink's two tables."""

    events: list[dict[str, Any]]
    deliveries: list[dict[str, Any]]


ReadBack = Callable[[], Awaitable[Rows]]
PostgresPeer = Callable[..., AbstractAsyncContextManager[tuple[PostgresSink, ReadBack]]]


async def read_back(sink: PostgresSink) -> Rows:
    """All ``events`` and ``deliveries`` rows of ``sink``, on a connection of its own."""
    async with await psycopg.AsyncConnection.connect(sink.dsn, autocommit=True) as conn:
        out = []
        for table, columns in (("events", EVENT_COLUMNS), ("deliveries", DELIVERY_COLUMNS)):
            cur = await conn.execute(
                sql.SQL("SELECT {} FROM {}").format(select_list(columns), sink.table(table))
            )
            names = [c.name for c in columns]
            # Sorted here: ORDER BY would follow the database's collation.
            rows = [dict(zip(names, row, strict=True)) for row in sorted(await cur.fetchall())]
            for row in rows:
                if "raw" in row and row["raw"] is not None:
                    row["raw"] = json.loads(row["raw"])
            out.append(rows)
    return Rows(*out)


def sink_url(pg_database: str, query: str = "", *, salt: bytes | None = None) -> SinkURL:
    """A sink URL on a schema of its own in ``pg_database``, plus ``query``."""
    schema = f"w_{secrets.token_hex(6)}"
    url = parse_sink_url(f"{pg_database}?{query}" if query else pg_database, salt=salt)
    # Set here, not as ?schema=: _url.parse_sink_url drops a sink's ?schema= for now
    # (reported to the coordinator).
    return dataclasses.replace(url, options={**url.options, "schema": schema})


@pytest.fixture
def postgres_peer(pg_database: str) -> PostgresPeer:
    """``make(query="", *, salt=None)``: an opened sink (``query``: the URL's extra
    parameters, e.g. ``"raw=drop"``) and its ``read_back``; closed on exit."""

    @contextlib.asynccontextmanager
    async def make(
        query: str = "", *, salt: bytes | None = None
    ) -> AsyncIterator[tuple[PostgresSink, ReadBack]]:
        sink = from_url(sink_url(pg_database, query, salt=salt))
        await sink.open()
        try:
            yield sink, lambda: read_back(sink)
        finally:
            await sink.close()

    return make
