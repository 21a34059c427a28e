"""Warehouse sinks: where every stored event lands as rows, seconds after it is acked.

::

    store --(loader: seq order, one cursor per sink in the store)--> Batch --> Sink.write
             _loader.py                                             _rows.py   sqlite.py
                                                                               postgres.py
                                                                               bigquery.py
                                                                               parquet.py

A sink never reads or writes the inbox, so it cannot slow down ingest; a failing sink
backs off on its own.  ``open_sink`` makes a sink from its URL (``_url``).
"""

from __future__ import annotations

import importlib

from .._exceptions import ConfigError
from ._contract import Batch, Sink
from ._loader import Loader
from ._rows import (
    CHANNEL_VIEWS,
    DELIVERY_COLUMNS,
    DELIVERY_METRICS,
    EVENT_COLUMNS,
    Column,
    Privacy,
    delivery_rows,
    event_row,
    merge_delivery,
)
from ._status import SinkStatus, sink_statuses
from ._url import KINDS, SinkURL, parse_sink_url, parse_sink_urls
from .sqlite import SQLiteWarehouse

__all__ = [
    "CHANNEL_VIEWS",
    "DELIVERY_COLUMNS",
    "DELIVERY_METRICS",
    "EVENT_COLUMNS",
    "Batch",
    "Column",
    "Loader",
    "Privacy",
    "SQLiteWarehouse",
    "Sink",
    "SinkStatus",
    "SinkURL",
    "delivery_rows",
    "event_row",
    "merge_delivery",
    "open_sink",
    "parse_sink_url",
    "parse_sink_urls",
    "sink_statuses",
]


#: Sink kinds whose module is named otherwise.
_MODULES = {"postgresql": "postgres"}
#: What a kind needs installed (its extra: ``pip install 'cio-webhooks[KIND]'``).
_NEEDS = {"bigquery": "google.cloud.bigquery", "parquet": "pyarrow"}


def open_sink(url: SinkURL) -> Sink:
    """The sink ``url`` names (not yet opened: the loader calls ``open``).  Each kind's
    module (``sinks.<kind>``, with a ``from_url``) is imported only here, so that a
    deployment without BigQuery never imports its client."""
    if url.kind not in KINDS:
        raise ConfigError(f"sink kind {url.kind!r} is not supported")
    try:
        if url.kind in _NEEDS:  # checked at start, not at the first write
            importlib.import_module(_NEEDS[url.kind])
        module = importlib.import_module(f"{__name__}.{_MODULES.get(url.kind, url.kind)}")
    except ModuleNotFoundError as exc:  # an optional dependency is not installed
        raise ConfigError(
            f"sink {url.name}: {url.kind} needs {exc.name!r}: pip install"
            f" 'cio-webhooks[{url.kind}]'"
        ) from exc
    sink: Sink = module.from_url(url)
    if url.batch_size is not None:
        sink.batch_size = url.batch_size
    if url.interval is not None:
        sink.interval = url.interval
    return sink
