"""cio-webhooks: receive Customer.io reporting webhooks without losing or double-applying one.

The public API (``__all__``; ``tests/test_public_api.py`` guards it)::

    verify, sign, signed_headers          pure signature checks (signature.py)
    Event, parse_event, normalise          the event model (events.py)
    Router, load_router                    handlers routed by object_type.metric (handlers.py)
    open_store, parse_store_url, StoreURL  a store by URL: sqlite:///... or postgresql://...
    Store, Ingest, Queue, Operations,      the store contract, split by who uses it, with
    Metrics, Ledger, JobState, ...         its typed results (store/); no backend class
    Dispatcher, RetryPolicy                handlers with durable retries and a DLQ
    open_sink, parse_sink_url, SinkURL,    warehouse sinks by URL, the Sink contract and
    Sink, Batch, Loader                    the loader that feeds them (sinks/)
    create_app                             the ASGI service
    testing.FixedClock, testing.signed_request   helpers for your own tests

Exceptions (_exceptions.py)::

    CioWebhooksError
    ├── SignatureError (MissingSignature, SignatureMismatch, StaleTimestamp)
    ├── InvalidEvent
    ├── StoreUnavailable
    ├── SinkError
    └── ConfigError
"""

from ._exceptions import (
    CioWebhooksError,
    ConfigError,
    InvalidEvent,
    MissingSignature,
    SignatureError,
    SignatureMismatch,
    SinkError,
    StaleTimestamp,
    StoreUnavailable,
)
from .app import create_app
from .dispatcher import Dispatcher
from .events import Event, EventData, Identifiers, normalise, parse_event
from .handlers import Router, load_router
from .settings import RetryPolicy
from .signature import sign, signed_headers, verify
from .sinks import Batch, Loader, Sink, SinkURL, open_sink, parse_sink_url
from .store import (
    EventFilter,
    HandlerRun,
    Ingest,
    Job,
    JobState,
    Ledger,
    Metrics,
    Operations,
    Outcome,
    PutResult,
    Quarantined,
    Queue,
    Store,
    StoredEvent,
    StoreStats,
    StoreURL,
    open_store,
    parse_store_url,
)

__all__ = [
    "Batch",
    "CioWebhooksError",
    "ConfigError",
    "Dispatcher",
    "Event",
    "EventData",
    "EventFilter",
    "HandlerRun",
    "Identifiers",
    "Ingest",
    "InvalidEvent",
    "Job",
    "JobState",
    "Ledger",
    "Loader",
    "Metrics",
    "MissingSignature",
    "Operations",
    "Outcome",
    "PutResult",
    "Quarantined",
    "Queue",
    "RetryPolicy",
    "Router",
    "SignatureError",
    "SignatureMismatch",
    "Sink",
    "SinkError",
    "SinkURL",
    "StaleTimestamp",
    "Store",
    "StoreStats",
    "StoreURL",
    "StoreUnavailable",
    "StoredEvent",
    "create_app",
    "load_router",
    "normalise",
    "open_sink",
    "open_store",
    "parse_event",
    "parse_sink_url",
    "parse_store_url",
    "sign",
    "signed_headers",
    "verify",
]
