"""The Parquet sink's side of the shared sink contract suite: an opened sink in a
directory, and what a reader of that directory sees (DuckDB over the Hive datasets, as
the module docstring of ``sinks.parquet`` tells readers to query them)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from cio_webhooks.sinks import Sink
from cio_webhooks.sinks._rows import DELIVERY_COLUMNS, EVENT_COLUMNS, KEEP_ALL, Column, Privacy
from cio_webhooks.sinks.parquet import ParquetSink

__all__ = ["ParquetPeer", "parquet_peer", "read_deliveries", "read_events"]


def _value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        text = value.astimezone(dt.UTC).isoformat(timespec="milliseconds")
        return text.replace("+00:00", "Z")
    return value


def _read(dataset: Path, columns: tuple[Column, ...]) -> list[dict[str, Any]]:
    """Every row of ``dataset`` as dicts in ``columns`` order, times as ISO text."""
    if not any(dataset.glob("**/*.parquet")):
        return []  # read_parquet refuses a glob that matches nothing
    names = ", ".join(f'"{c.name}"' for c in columns)
    with duckdb.connect() as con:
        result = con.execute(
            f"SELECT {names} FROM read_parquet(?, hive_partitioning = true)",
            [str(dataset / "**" / "*.parquet")],
        ).fetchall()
    return [{c.name: _value(v) for c, v in zip(columns, row, strict=True)} for row in result]


def read_events(directory: Path) -> list[dict[str, Any]]:
    """The ``events`` rows a reader of ``directory`` sees."""
    return _read(directory / "events", EVENT_COLUMNS)


def read_deliveries(directory: Path) -> list[dict[str, Any]]:
    """The ``deliveries`` rows a reader of ``directory`` sees."""
    return _read(directory / "deliveries", DELIVERY_COLUMNS)


@dataclass(frozen=True)
class ParquetPeer:
    """An opened sink and its rows as a reader sees them."""

    sink: ParquetSink

    def events(self) -> list[dict[str, Any]]:
        return read_events(self.sink.directory)

    def deliveries(self) -> list[dict[str, Any]]:
        return read_deliveries(self.sink.directory)


@asynccontextmanager
async def parquet_peer(
    directory: Path, privacy: Privacy = KEEP_ALL, **options: Any
) -> AsyncIterator[ParquetPeer]:
    """A ``ParquetSink`` on ``directory`` (e.g. pytest's ``tmp_path / "lake"``), opened,
    closed on exit; ``options`` go to ``ParquetSink``."""
    sink = ParquetSink(directory, privacy=privacy, **options)
    contract: Sink = sink  # mypy checks that the Parquet sink keeps the loader's contract
    await contract.open()
    try:
        yield ParquetPeer(sink)
    finally:
        await sink.close()
