"""cio-webhooks: receive Customer.io reporting webhooks without losing or double-applying one.

The public API::

    verify, sign, signed_headers          pure signature checks (signature.py)
    Event, parse_event, normalise          the event model (events.py)
    Router, load_router                    handlers routed by object_type.metric (handlers.py)
    Inbox, SQLiteInbox, JobState, ...      the durable, deduplicating store (inbox.py)
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
from ._sqlite import SQLiteInbox
from .app import create_app
from .dispatcher import Dispatcher, RetryPolicy
from .events import Event, EventData, Identifiers, normalise, parse_event
from .handlers import Router, load_router
from .inbox import EventFilter, Inbox, Job, JobState, PutResult
from .signature import sign, signed_headers, verify

__all__ = [
    "CioWebhooksError",
    "ConfigError",
    "Dispatcher",
    "Event",
    "EventData",
    "EventFilter",
    "Identifiers",
    "Inbox",
    "InvalidEvent",
    "Job",
    "JobState",
    "MissingSignature",
    "PutResult",
    "RetryPolicy",
    "Router",
    "SQLiteInbox",
    "SignatureError",
    "SignatureMismatch",
    "StaleTimestamp",
    "StoreUnavailable",
    "create_app",
    "load_router",
    "normalise",
    "parse_event",
    "sign",
    "signed_headers",
    "verify",
]
