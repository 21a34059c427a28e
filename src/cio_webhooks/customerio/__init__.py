"""Clients for Customer.io's Track API (act on people) and App API (reporting)."""

from ._errors import (
    CustomerIOAuthError,
    CustomerIOConnectionError,
    CustomerIOError,
    CustomerIONotFound,
    CustomerIORateLimited,
    CustomerIOServerError,
)
from .app_api import APP_URLS, AppClient
from .track import TRACK_URLS, TrackClient, person_path

__all__ = [
    "APP_URLS",
    "TRACK_URLS",
    "AppClient",
    "CustomerIOAuthError",
    "CustomerIOConnectionError",
    "CustomerIOError",
    "CustomerIONotFound",
    "CustomerIORateLimited",
    "CustomerIOServerError",
    "TrackClient",
    "person_path",
]
