"""App API client: reporting metrics, deliveries (``/messages``) and reporting webhooks.

The official ``customerio`` package's ``APIClient`` only sends transactional
messages; it has none of these reporting endpoints.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Unpack

from ..settings import DEFAULT_REGION
from ._http import HttpClient, HttpOptions, path_segment

__all__ = ["APP_URLS", "METRIC_KINDS", "AppClient"]

#: Base URL of the App API per Customer.io region (FACTS.md §5).
APP_URLS: Mapping[str, str] = {
    "us": "https://api.customer.io/v1",
    "eu": "https://api-eu.customer.io/v1",
}
#: What ``AppClient.metrics(kind, id)`` can report on, and the path segment for it.
METRIC_KINDS: Mapping[str, str] = {
    "campaign": "campaigns",
    "broadcast": "broadcasts",
    "newsletter": "newsletters",
    "transactional": "transactional",
}
MAX_PAGE = 1000  # the largest ``limit`` /messages accepts

Series = dict[str, list[int]]


class AppClient:
    """``AppClient(app_api_key, region="us")``, ``Authorization: Bearer <key>``.

    ``rate`` defaults to 10 requests/s, Customer.io's App API limit (it answers
    429 past that).  ``urls``, ``base_url`` and the other keyword arguments are
    as for ``TrackClient``.  Use ``async with`` or call ``close()``.
    """

    def __init__(
        self,
        api_key: str,
        *,
        region: str = DEFAULT_REGION,
        base_url: str | None = None,
        urls: Mapping[str, str] = APP_URLS,
        rate: float = 10.0,
        **options: Unpack[HttpOptions],
    ) -> None:
        if region not in urls:
            raise ValueError(f"region must be one of {', '.join(sorted(urls))}")
        if not api_key:
            raise ValueError("the App API needs an API key")
        self.region = region
        self.http = HttpClient(
            base_url or urls[region], f"Bearer {api_key}", rate=rate, secrets=(api_key,), **options
        )

    def __repr__(self) -> str:
        return f"<AppClient {self.http.base_url}>"

    async def __aenter__(self) -> AppClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.close()

    async def _series(self, path: str, params: Mapping[str, str | int]) -> Series:
        body = await self.http.request("GET", path, params={"version": 2, **params})
        series: Series = body["metric"]["series"]
        return series

    async def metrics(self, kind: str, ident: int | str, **params: str | int) -> Series:
        """Metrics of a ``campaign``, ``broadcast``, ``newsletter`` or ``transactional``
        message: ``{"sent": [...], "delivered": [...], ...}``, one number per period.

        ``params`` go to the query as given: ``res`` (days, weeks, ...), ``start``,
        ``end``, ``tz``; ``version=2`` is always sent.
        """
        if kind not in METRIC_KINDS:
            raise ValueError(f"kind must be one of {', '.join(METRIC_KINDS)}")
        return await self._series(f"/{METRIC_KINDS[kind]}/{path_segment(ident)}/metrics", params)

    async def campaign_metrics(self, campaign_id: int | str, **params: str | int) -> Series:
        """``GET /campaigns/{id}/metrics``; see ``metrics``."""
        return await self.metrics("campaign", campaign_id, **params)

    async def action_metrics(
        self, campaign_id: int | str, action_id: int | str, **params: str | int
    ) -> Series:
        """``GET /campaigns/{id}/actions/{action_id}/metrics``: one message of a campaign."""
        path = f"/campaigns/{path_segment(campaign_id)}/actions/{path_segment(action_id)}/metrics"
        return await self._series(path, params)

    async def broadcast_metrics(self, broadcast_id: int | str, **params: str | int) -> Series:
        return await self.metrics("broadcast", broadcast_id, **params)

    async def newsletter_metrics(self, newsletter_id: int | str, **params: str | int) -> Series:
        return await self.metrics("newsletter", newsletter_id, **params)

    async def transactional_metrics(self, message_id: int | str, **params: str | int) -> Series:
        return await self.metrics("transactional", message_id, **params)

    async def messages(
        self,
        *,
        start_ts: int | None = None,
        end_ts: int | None = None,
        metric: str | None = None,
        campaign_id: int | str | None = None,
        limit: int = MAX_PAGE,
        start: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every delivery matching the filters, page by page, following the cursor.

        Each is a dict whose ``id`` is the webhook ``delivery_id`` and whose
        ``metrics`` map metric -> unix time.  ``limit`` is the page size (at most
        1000); ``start`` resumes from a cursor a previous page returned as
        ``next``.  Customer.io keeps 6 months of deliveries.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        params: dict[str, str | int] = {"limit": min(limit, MAX_PAGE)}
        for key, value in (
            ("start", start),
            ("start_ts", start_ts),
            ("end_ts", end_ts),
            ("metric", metric),
            ("campaign_id", campaign_id),
        ):
            if value is not None:
                params[key] = value
        while True:
            page = await self.http.request("GET", "/messages", params=params)
            for message in page.get("messages") or []:
                yield message
            cursor = page.get("next")
            if not cursor or cursor == params.get("start"):  # a cursor that does not move ends it
                return
            params["start"] = cursor

    async def message(self, message_id: str) -> dict[str, Any]:
        """One delivery (``GET /messages/{id}``); ``CustomerIONotFound`` when unknown."""
        body = await self.http.request("GET", f"/messages/{path_segment(message_id)}")
        message: dict[str, Any] = body["message"]
        return message

    async def reporting_webhooks(self) -> list[dict[str, Any]]:
        """The workspace's reporting webhooks (``GET /reporting_webhooks``)."""
        body = await self.http.request("GET", "/reporting_webhooks")
        hooks: list[dict[str, Any]] = body.get("reporting_webhooks") or []
        return hooks
