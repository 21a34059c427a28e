"""The Parquet sink's side of the shared sink contract suite: a sink made from its URL
on a directory, opened, and what a reader of that directory sees (DuckDB over the Hive
datasets, as the ``sinks.parquet`` docstring tells readers to query them)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from cio_webhooks.sinks import Sink, open_sink, parse_sink_url
from cio_webhooks.sinks._rows import DELIVERY_COLUMNS, EVENT_COLUMNS, Column
from cio_webhooks.sinks.parquet import ParquetSink

__all__ = ["Peer", "parquet_peer", "read_deliveries", "read_events"]

ReadBack = Callable[[], list[dict[str, Any]]]


def _value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        text = value.astimezone(dt.UTC).isoformat(timespec="milliseconds")
        return text.replace("+00:00", "Z")
    return value


def _read(dataset: Path, columns: tuple[Column, ...]) -> list[dict[str, Any]]:
    """Every row of ``dataset`` as dicts in ``columns`` order, ordered by the first
    column (the key), times as ISO text."""
    if not any(dataset.glob("**/*.parquet")):
        return []  # read_parquet refuses a glob that matches nothing
    names = ", ".join(f'"{c.name}"' for c in columns)
    with duckdb.connect() as con:
        result = con.execute(
            f"SELECT {names} FROM read_parquet(?, hive_partitioning = true)"
            f' ORDER BY "{columns[0].name}"',
            [str(dataset / "**" / "*.parquet")],
        ).fetchall()
    return [{c.name: _value(v) for c, v in zip(columns, row, strict=True)} for row in result]


def read_events(directory: Path) -> list[dict[str, Any]]:
    """The ``events`` rows a reader of ``directory`` sees, by event_id."""
    return _read(directory / "events", EVENT_COLUMNS)


def read_deliveries(directory: Path) -> list[dict[str, Any]]:
    """The ``deliveries`` rows a reader of ``directory`` sees, by delivery_id."""
    return _read(directory / "deliveries", DELIVERY_COLUMNS)


@dataclass
class Peer:
    """An opened sink and what reads its datasets back."""

    sink: ParquetSink
    #: Every ``events`` row (by event_id) as a dict, times as ISO text.
    events: ReadBack
    #: Every ``deliveries`` row (by delivery_id) as a dict, times as ISO text.
    deliveries: ReadBack


@asynccontextmanager
async def parquet_peer(
    directory: Path,
    parameters: str = "",
    *,
    salt: bytes | None = None,
    compact_at: int | None = None,
    buckets: int | None = None,
) -> AsyncIterator[Peer]:
    """A ``ParquetSink`` made from its URL on ``directory`` (e.g. pytest's
    ``tmp_path / "lake"``), opened; closed after the block.  ``parameters`` are more
    URL parameters (``email=hash&raw=drop``); ``salt`` is the personal-data salt
    ``email=hash`` needs; ``compact_at``/``buckets`` override the sink's defaults."""
    url = f"parquet://{directory}" + (f"?{parameters}" if parameters else "")
    contract: Sink = open_sink(parse_sink_url(url, salt=salt))
    assert isinstance(contract, ParquetSink)
    sink = contract
    if compact_at is not None:
        sink.compact_at = compact_at
    if buckets is not None:
        sink.buckets = buckets
    await contract.open()
    try:
        yield Peer(sink, lambda: read_events(directory), lambda: read_deliveries(directory))
    finally:
        await contract.close()
