"""The exceptions cio-webhooks raises.

CioWebhooksError
├── SignatureError            a request is not authentic (the receiver answers 401)
│   ├── MissingSignature      header absent, repeated or malformed
│   ├── SignatureMismatch     no configured key produced the signature
│   └── StaleTimestamp        authentic, but outside the tolerance given to ``verify``;
│                             raised for library users only: the receiver verifies with
│                             tolerance 0 and judges the timestamp itself (late -> stored,
│                             older than the dedupe horizon -> quarantined), never 401
├── InvalidEvent              an authentic body that is not a Customer.io event (quarantined)
├── StoreUnavailable          the store could not durably take a write (answered 503)
├── SinkError                 a warehouse sink could not take a write (the loader retries)
└── ConfigError               bad configuration or arguments (CLI exit code 2)
"""

from __future__ import annotations

__all__ = [
    "CioWebhooksError",
    "ConfigError",
    "InvalidEvent",
    "MissingSignature",
    "SignatureError",
    "SignatureMismatch",
    "SinkError",
    "StaleTimestamp",
    "StoreUnavailable",
]


class CioWebhooksError(Exception):
    """Base class of every error raised by cio-webhooks."""


class SignatureError(CioWebhooksError):
    """The request is not an authentic Customer.io request."""


class MissingSignature(SignatureError):
    """``X-CIO-Signature`` or ``X-CIO-Timestamp`` is absent or malformed."""


class SignatureMismatch(SignatureError):
    """No configured signing key produces the request's signature."""


class StaleTimestamp(SignatureError):
    """The signature is valid but the timestamp is outside the tolerance."""

    def __init__(self, *, skew: float, tolerance: float) -> None:
        super().__init__(f"timestamp is {skew:+.0f}s from now, tolerance is {tolerance:.0f}s")
        self.skew = skew
        self.tolerance = tolerance


class InvalidEvent(CioWebhooksError):
    """An authentic body that cannot be read as a Customer.io event.

    ``event_id`` is the body's event id when one could be read, else None.
    """

    def __init__(self, reason: str, *, event_id: str | None = None) -> None:
        super().__init__(reason)
        self.event_id = event_id


class StoreUnavailable(CioWebhooksError):
    """The store could not durably take a write; the sender should retry."""


class SinkError(CioWebhooksError):
    """A warehouse sink could not take a write (unreachable, refused, bad credentials).

    The loader retries that sink with backoff; ingest and the other sinks go on.
    """


class ConfigError(CioWebhooksError):
    """Invalid configuration or command-line arguments."""
