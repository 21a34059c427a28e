"""Track API client: act on a person (identify, unsubscribe, suppress, track).

Why not the official ``customerio`` package (3.2.0, read for this decision):

- it is synchronous (``requests``): every call would block the dispatcher's
  event loop or need a thread per call;
- it has no client-side rate limit;
- it retries only 500-504 (urllib3 ``Retry``, backoff factor 0.02 s), honours
  ``Retry-After`` only as a blocking, uncapped ``time.sleep``, and does not
  retry a 429 that comes without one;
- it always builds an ``https://`` URL (a scheme given with ``host`` is cut
  off) and mounts its retries on ``https://`` only, so it cannot talk to a
  plain-HTTP fake on 127.0.0.1 without patching;
- it raises one ``CustomerIOException`` for everything, whose message embeds
  the request data (the person's attributes) and the whole answer.

It does have both regions and the same endpoints; this client mirrors its
method names (``identify(id, **attrs)``, ``suppress``, ``track(id, name, data,
id=...)``) and its path escaping, on the shared async ``HttpClient``.

``suppress`` PERMANENTLY DELETES the person in Customer.io and blocks the
identifier.  Nothing in cio-webhooks calls it unless a policy asks explicitly.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Unpack

from ..settings import DEFAULT_REGION, DEFAULT_TRACK_RATE
from ._http import HttpClient, HttpOptions, path_segment

__all__ = ["TRACK_URLS", "TrackClient", "person_path"]

#: Base URL of the Track API per Customer.io region (FACTS.md §4).
TRACK_URLS: Mapping[str, str] = {
    "us": "https://track.customer.io/api/v1",
    "eu": "https://track-eu.customer.io/api/v1",
}


def person_path(person: str) -> str:
    """``/customers/{identifier}``: an id, an email or ``cio_<cio_id>``, escaped as one
    path segment (``/``, spaces, ``@``, ``+`` ... included)."""
    if not person:
        raise ValueError("a person identifier is required")
    return "/customers/" + path_segment(person)


class TrackClient:
    """``TrackClient(site_id, api_key, region="us")``, HTTP Basic ``site_id:api_key``.

    ``urls`` maps regions to base URLs (default ``TRACK_URLS``); ``base_url``
    overrides the region altogether.  ``rate`` is the client-side limit in
    requests per second: Customer.io's soft limit is about 1000/s, the default
    stays well under it.  Other keyword arguments (timeouts, retries, clock,
    sleep) go to ``HttpClient``.  Use ``async with`` or call ``close()``.
    """

    def __init__(
        self,
        site_id: str,
        api_key: str,
        *,
        region: str = DEFAULT_REGION,
        base_url: str | None = None,
        urls: Mapping[str, str] = TRACK_URLS,
        rate: float = DEFAULT_TRACK_RATE,
        **options: Unpack[HttpOptions],
    ) -> None:
        if region not in urls:
            raise ValueError(f"region must be one of {', '.join(sorted(urls))}")
        if not site_id or not api_key:
            raise ValueError("the Track API needs a site id and an API key")
        token = base64.b64encode(f"{site_id}:{api_key}".encode()).decode()
        self.region = region
        self.http = HttpClient(
            base_url or urls[region],
            f"Basic {token}",
            rate=rate,
            secrets=(api_key, token),
            **options,
        )

    def __repr__(self) -> str:
        return f"<TrackClient {self.http.base_url}>"

    async def __aenter__(self) -> TrackClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.close()

    async def account_region(self) -> dict[str, Any]:
        """Check the credentials: ``GET /accounts/region`` answers, for a valid site id
        and API key, the workspace's ``url``, ``data_center`` (``us``/``eu``) and
        ``environment_id``.  Raises ``CustomerIOAuthError`` for credentials Customer.io
        refuses (or a workspace of the other region)."""
        answer = await self.http.request("GET", "/accounts/region")
        return dict(answer) if isinstance(answer, Mapping) else {}

    async def identify(self, person: str, /, **attributes: Any) -> None:
        """Create or update ``person`` with ``attributes`` (``PUT /customers/{id}``).

        ``person`` is positional-only, so an attribute may be called ``person`` too."""
        await self.http.request("PUT", person_path(person), json_body=attributes)

    async def unsubscribe(self, person: str, /, **attributes: Any) -> None:
        """Stop all messages to ``person`` but keep them: identify with ``unsubscribed: true``."""
        await self.identify(person, **{**attributes, "unsubscribed": True})

    async def suppress(self, person: str) -> None:
        """PERMANENTLY DELETE ``person`` and block the identifier from coming back."""
        await self.http.request("POST", person_path(person) + "/suppress")

    async def unsuppress(self, person: str) -> None:
        """Let a suppressed identifier be added again (the deleted data does not return)."""
        await self.http.request("POST", person_path(person) + "/unsuppress")

    async def track(
        self,
        person: str,
        name: str,
        data: Mapping[str, Any] | None = None,
        *,
        id: str | None = None,  # the Track API's (and the official SDK's) name
        timestamp: int | None = None,
    ) -> None:
        """Send event ``name`` for ``person`` (it can trigger campaigns).

        ``id`` is a ULID Customer.io deduplicates on: an event whose ``id`` it has
        seen is not processed again, so a retried request cannot count twice.
        """
        if not name:
            raise ValueError("an event name is required")
        body: dict[str, Any] = {"name": name, "data": dict(data or {})}
        if id is not None:
            body["id"] = id
        if timestamp is not None:
            body["timestamp"] = timestamp
        await self.http.request("POST", person_path(person) + "/events", json_body=body)
