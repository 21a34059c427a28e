"""cio-webhooks: receive Customer.io reporting webhooks without losing or double-applying one.

The public API (``__all__``; ``tests/test_public_api.py`` guards it)::

    verify, sign, signed_headers          pure signature checks (signature.py)
    Event, parse_event, normalise          the event model (events.py)
    Router, load_router                    handlers routed by object_type.metric (handlers.py)
    open_store, parse_store_url, StoreURL  a store by URL: sqlite:///... or postgresql://...
    Store, Ingest, Queue, Operations,      the store contract, split by who uses it, with
    Metrics, Ledger, JobState, ...         its typed results (store/); no backend class
    Dispatcher, RetryPolicy                handlers with durable retries and a DLQ
    create_app                             the ASGI service
    testing.FixedClock, testing.signed_request   helpers for your own tests

Exceptions (_exceptions.py)::

    CioWebhooksError
    ├── SignatureError (MissingSignature, SignatureMismatch, StaleTimestamp)
    ├── InvalidEvent
    ├── StoreUnavailable
    └── ConfigError
"""

from ._exceptions import (
    CioWebhooksError,
    ConfigError,
    InvalidEvent,
    MissingSignature,
    SignatureError,
    SignatureMismatch,
    StaleTimestamp,
    StoreUnavailable,
)
from .app import create_app
from .dispatcher import Dispatcher
from .events import Event, EventData, Identifiers, normalise, parse_event
from .handlers import Router, load_router
from .settings import RetryPolicy
from .signature import sign, signed_headers, verify
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
    "StaleTimestamp",
    "Store",
    "StoreStats",
    "StoreURL",
    "StoreUnavailable",
    "StoredEvent",
    "create_app",
    "load_router",
    "normalise",
    "open_store",
    "parse_event",
    "parse_store_url",
    "sign",
    "signed_headers",
    "verify",
]
