"""The durable store: the contract every backend keeps, and ``open_store`` by URL.

::

    store/
      _model.py     events, jobs, outcomes, typed results (StoreStats, Gauges, ...)
      _contract.py  Ingest | Queue | Operations | Metrics | SinkCursors | Watch -> Store
      _ledger.py    Ledger: the policies' exactly-once record
      _url.py       sqlite:///... | postgresql://...
      sqlite/       SQLiteStore, SQLiteLedger (embedded, the default)
      postgres/     PostgresStore, PostgresLedger (many receivers and workers)

State of an event::

    PENDING --handlers ok--> DONE
       |  \\--a handler failed--> RETRYING --ok--> DONE
       |                            \\--attempts exhausted--> DEAD --dlq retry--> PENDING
       \\------------------------------------------------------> DISCARDED (dlq discard)
"""

from __future__ import annotations

from pathlib import Path

from ._contract import (
    Ingest,
    Metrics,
    Operations,
    Queue,
    SinkCursors,
    Store,
    Versioned,
    Watch,
)
from ._ledger import (
    AUDIT_COLUMNS,
    IN_FLIGHT_LEASE,
    LEDGER_TABLES,
    ActionInFlight,
    AuditRow,
    Ledger,
    Reservation,
    Verdict,
    Window,
    new_owner,
    owner_alive,
)
from ._model import (
    ACK_BUCKETS,
    TRAFFIC_COUNTS,
    AlertState,
    EventFilter,
    Gauges,
    HandlerResult,
    HandlerRun,
    Job,
    JobState,
    OperatorAction,
    Outcome,
    PutResult,
    Quarantined,
    SinkState,
    StoredEvent,
    StoreStats,
    TrafficMinute,
    Wanted,
    minute_of,
)
from ._url import DEFAULT_PG_SCHEMA, StoreURL, parse_store_url

__all__ = [
    "ACK_BUCKETS",
    "AUDIT_COLUMNS",
    "DEFAULT_PG_SCHEMA",
    "IN_FLIGHT_LEASE",
    "LEDGER_TABLES",
    "TRAFFIC_COUNTS",
    "ActionInFlight",
    "AlertState",
    "AuditRow",
    "EventFilter",
    "Gauges",
    "HandlerResult",
    "HandlerRun",
    "Ingest",
    "Job",
    "JobState",
    "Ledger",
    "Metrics",
    "Operations",
    "OperatorAction",
    "Outcome",
    "PutResult",
    "Quarantined",
    "Queue",
    "Reservation",
    "SinkCursors",
    "SinkState",
    "Store",
    "StoreStats",
    "StoreURL",
    "StoredEvent",
    "TrafficMinute",
    "Verdict",
    "Versioned",
    "Wanted",
    "Watch",
    "Window",
    "minute_of",
    "new_owner",
    "open_store",
    "owner_alive",
    "parse_store_url",
]


def open_store(
    url: str | StoreURL,
    *,
    readonly: bool = False,
    ledger_path: Path | None = None,
    max_bytes: int | None = None,
) -> Store:
    """The store ``url`` names, not yet opened (``await store.open()``, or
    ``async with``).  ``readonly`` stores create and change nothing (the CLI's
    read commands).  ``ledger_path`` and ``max_bytes`` apply to SQLite only: the
    ledger file (default ``actions.db`` beside the inbox) and a size cap."""
    parsed = parse_store_url(url) if isinstance(url, str) else url
    if parsed.backend == "sqlite":
        from .sqlite import SQLiteStore

        assert parsed.path is not None
        return SQLiteStore(
            parsed.path, readonly=readonly, ledger_path=ledger_path, max_bytes=max_bytes
        )
    from .postgres import PostgresStore

    assert parsed.dsn is not None
    return PostgresStore(parsed.dsn, schema=parsed.schema, readonly=readonly)
