"""Errors of the Customer.io API clients.

    CustomerIOError                 a request failed (``status`` is the HTTP status, or None)
    ├── CustomerIOAuthError          401/403: wrong site id, API key or region
    ├── CustomerIONotFound           404
    ├── CustomerIORateLimited        429 after every retry
    ├── CustomerIOServerError        5xx after every retry
    └── CustomerIOConnectionError    no answer (refused, reset, timed out) after every retry

Messages name the method, path and status and quote the start of the body;
they never contain the API key or the Authorization header.
"""

from __future__ import annotations

from .._exceptions import CioWebhooksError

__all__ = [
    "CustomerIOAuthError",
    "CustomerIOConnectionError",
    "CustomerIOError",
    "CustomerIONotFound",
    "CustomerIORateLimited",
    "CustomerIOServerError",
]


class CustomerIOError(CioWebhooksError):
    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CustomerIOAuthError(CustomerIOError):
    pass


class CustomerIONotFound(CustomerIOError):
    pass


class CustomerIORateLimited(CustomerIOError):
    pass


class CustomerIOServerError(CustomerIOError):
    pass


class CustomerIOConnectionError(CustomerIOError):
    pass
