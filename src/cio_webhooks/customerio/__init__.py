"""Async clients for Customer.io's Track API (act on people) and App API (reporting).

::

    async with TrackClient(site_id, api_key, region="eu") as track:
        await track.unsubscribe("42", spam_complaint_at="2024-01-01T00:00:00Z")

    async with AppClient(app_api_key) as app:
        async for delivery in app.messages(start_ts=since, metric="bounced"):
            ...

Both rate-limit themselves, retry 429/5xx/connection errors with backoff
(honouring ``Retry-After``), time out, and raise ``CustomerIOError`` subclasses
whose messages never contain the keys.  ``cio_webhooks.customerio.fake`` is a
fake Customer.io (a real HTTP server on 127.0.0.1) for tests.
"""

from ._app_api import APP_URLS, METRIC_KINDS, AppClient
from ._errors import (
    CustomerIOAuthError,
    CustomerIOConnectionError,
    CustomerIOError,
    CustomerIONotFound,
    CustomerIORateLimited,
    CustomerIOServerError,
)
from ._http import HttpOptions
from ._track import TRACK_URLS, TrackClient, person_path

__all__ = [
    "APP_URLS",
    "METRIC_KINDS",
    "TRACK_URLS",
    "AppClient",
    "CustomerIOAuthError",
    "CustomerIOConnectionError",
    "CustomerIOError",
    "CustomerIONotFound",
    "CustomerIORateLimited",
    "CustomerIOServerError",
    "HttpOptions",
    "TrackClient",
    "person_path",
]
