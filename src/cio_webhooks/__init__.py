"""cio-webhooks: receive Customer.io reporting webhooks without losing or double-applying one.

The public API::

    verify, sign, signed_headers          pure signature checks (signature.py)
    Event, parse_event, normalise          the event model (events.py)
    Router, load_router                    handlers routed by object_type.metric (handlers.py)
    Store, open_store, JobState, ...       the durable, deduplicating store (store/)
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
from .dispatcher import Dispatcher, RetryPolicy
from .events import Event, EventData, Identifiers, normalise, parse_event
from .handlers import Router, load_router
from .signature import sign, signed_headers, verify
from .store import EventFilter, Job, JobState, PutResult, Store, open_store

__all__ = [
    "CioWebhooksError",
    "ConfigError",
    "Dispatcher",
    "Event",
    "EventData",
    "EventFilter",
    "Identifiers",
    "InvalidEvent",
    "Job",
    "JobState",
    "MissingSignature",
    "PutResult",
    "RetryPolicy",
    "Router",
    "SignatureError",
    "SignatureMismatch",
    "StaleTimestamp",
    "Store",
    "StoreUnavailable",
    "create_app",
    "load_router",
    "normalise",
    "open_store",
    "parse_event",
    "sign",
    "signed_headers",
    "verify",
]
