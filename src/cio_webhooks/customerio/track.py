"""Track API client: act on a person (identify, unsubscribe, suppress, track).

Why not the official ``customerio`` package: it is synchronous (``requests``),
so every call would block the dispatcher's event loop or need a thread; it has
no client-side rate limit and does not honour ``Retry-After``, and it cannot be
pointed at a local fake without patching it.  This client is ~80 lines on the
shared ``HttpClient``.

``suppress`` PERMANENTLY DELETES the person in Customer.io and blocks the
identifier.  Nothing here calls it unless asked to explicitly.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

from ._http import HttpClient

__all__ = ["TRACK_URLS", "TrackClient", "person_path"]

TRACK_URLS = {
    "us": "https://track.customer.io/api/v1",
    "eu": "https://track-eu.customer.io/api/v1",
}


def person_path(person: str) -> str:
    """``/customers/{id}`` with the identifier (id, email or ``cio_<cio_id>``) escaped."""
    if not person:
        raise ValueError("a person identifier is required")
    return "/customers/" + quote(person, safe="")


class TrackClient:
    """``TrackClient(site_id, api_key, region="us")``.  ``base_url`` overrides the region."""

    def __init__(
        self,
        site_id: str,
        api_key: str,
        *,
        region: str = "us",
        base_url: str | None = None,
        rate: float = 100.0,
        **http: Any,
    ) -> None:
        if region not in TRACK_URLS:
            raise ValueError(f"region must be one of {sorted(TRACK_URLS)}")
        token = base64.b64encode(f"{site_id}:{api_key}".encode()).decode()
        self.http = HttpClient(base_url or TRACK_URLS[region], f"Basic {token}", rate=rate, **http)

    async def close(self) -> None:
        await self.http.close()

    async def identify(self, person: str, **attributes: Any) -> None:
        """Create or update ``person`` with ``attributes``."""
        await self.http.request("PUT", person_path(person), json_body=attributes)

    async def unsubscribe(self, person: str, **attributes: Any) -> None:
        """Stop all messages to ``person`` but keep them (``unsubscribed: true``)."""
        await self.identify(person, **attributes, unsubscribed=True)

    async def suppress(self, person: str) -> None:
        """PERMANENTLY DELETE ``person`` and block the identifier."""
        await self.http.request("POST", person_path(person) + "/suppress")

    async def unsuppress(self, person: str) -> None:
        await self.http.request("POST", person_path(person) + "/unsuppress")

    async def track(self, person: str, name: str, data: dict[str, Any] | None = None) -> None:
        """Send event ``name`` for ``person`` (it can trigger campaigns)."""
        body: dict[str, Any] = {"name": name}
        if data:
            body["data"] = data
        await self.http.request("POST", person_path(person) + "/events", json_body=body)
