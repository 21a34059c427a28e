"""Errors of the Customer.io API clients.

    CustomerIOError                 a request failed (``status`` is the HTTP status, or None)
    ├── CustomerIOAuthError          401/403: wrong site id or API key, or the other region
    ├── CustomerIONotFound           404
    ├── CustomerIORateLimited        429 after every retry, or a Retry-After too long to wait
    ├── CustomerIOServerError        5xx after every retry
    └── CustomerIOConnectionError    no answer (refused, reset, timed out) after every retry

Messages name the method, path and status and quote the start of the body;
they never contain the API key or the Authorization header (the clients
redact them even from a body that echoes them back).
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
    """A request to Customer.io failed.

    ``method`` and ``path`` say which request (the path without the base URL or
    query); ``status`` is the last HTTP status (None when there was no answer);
    ``retry_after`` is the wait Customer.io asked for, in seconds, when it said.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        method: str | None = None,
        path: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.method = method
        self.path = path
        self.retry_after = retry_after


class CustomerIOAuthError(CustomerIOError):
    """401/403: the credentials are wrong, or belong to a workspace in the other region."""


class CustomerIONotFound(CustomerIOError):
    """404: no such campaign, message, ... (the Track API creates people instead)."""


class CustomerIORateLimited(CustomerIOError):
    """429 after every retry, or Customer.io asked to wait longer than the client may."""


class CustomerIOServerError(CustomerIOError):
    """5xx after every retry."""


class CustomerIOConnectionError(CustomerIOError):
    """No HTTP answer (refused, reset, timed out) after every retry."""
