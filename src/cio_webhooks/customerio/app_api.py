"""App API client: reporting metrics, deliveries (``/messages``) and reporting webhooks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ._http import HttpClient

__all__ = ["APP_URLS", "AppClient"]

APP_URLS = {"us": "https://api.customer.io/v1", "eu": "https://api-eu.customer.io/v1"}


class AppClient:
    """``AppClient(api_key, region="us")``; 10 requests/s, Customer.io's App API limit."""

    def __init__(
        self,
        api_key: str,
        *,
        region: str = "us",
        base_url: str | None = None,
        rate: float = 10.0,
        **http: Any,
    ) -> None:
        if region not in APP_URLS:
            raise ValueError(f"region must be one of {sorted(APP_URLS)}")
        self.http = HttpClient(base_url or APP_URLS[region], f"Bearer {api_key}", rate=rate, **http)

    async def close(self) -> None:
        await self.http.close()

    async def _metrics(self, path: str, **params: str | int) -> dict[str, list[int]]:
        query: dict[str, str | int] = {"version": 2, **params}
        body = await self.http.request("GET", path, params=query)
        series: dict[str, list[int]] = body["metric"]["series"]
        return series

    async def metrics(
        self, kind: str, ident: int | str, **params: str | int
    ) -> dict[str, list[int]]:
        """Metrics of a ``campaign``, ``broadcast``, ``newsletter`` or ``transactional`` message."""
        paths = {
            "campaign": "campaigns",
            "broadcast": "broadcasts",
            "newsletter": "newsletters",
            "transactional": "transactional",
        }
        if kind not in paths:
            raise ValueError(f"kind must be one of {', '.join(paths)}")
        return await self._metrics(f"/{paths[kind]}/{ident}/metrics", **params)

    async def campaign_metrics(
        self, campaign_id: int | str, **params: str | int
    ) -> dict[str, list[int]]:
        """``{"sent": [...], "delivered": [...], ...}`` per period (``res``, ``start``, ``end``)."""
        return await self._metrics(f"/campaigns/{campaign_id}/metrics", **params)

    async def action_metrics(
        self, campaign_id: int | str, action_id: int | str, **params: str | int
    ) -> dict[str, list[int]]:
        return await self._metrics(
            f"/campaigns/{campaign_id}/actions/{action_id}/metrics", **params
        )

    async def broadcast_metrics(
        self, broadcast_id: int | str, **params: str | int
    ) -> dict[str, list[int]]:
        return await self._metrics(f"/broadcasts/{broadcast_id}/metrics", **params)

    async def newsletter_metrics(
        self, newsletter_id: int | str, **params: str | int
    ) -> dict[str, list[int]]:
        return await self._metrics(f"/newsletters/{newsletter_id}/metrics", **params)

    async def transactional_metrics(
        self, message_id: int | str, **params: str | int
    ) -> dict[str, list[int]]:
        return await self._metrics(f"/transactional/{message_id}/metrics", **params)

    async def messages(
        self,
        *,
        start_ts: int | None = None,
        end_ts: int | None = None,
        metric: str | None = None,
        campaign_id: int | str | None = None,
        limit: int = 1000,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every delivery matching the filters, following the ``next`` cursor.

        Each is a dict whose ``id`` is the webhook ``delivery_id`` and whose
        ``metrics`` map metric -> unix time.  Customer.io keeps 6 months.
        """
        params: dict[str, str | int] = {"limit": min(limit, 1000)}
        for key, value in (
            ("start_ts", start_ts),
            ("end_ts", end_ts),
            ("metric", metric),
            ("campaign_id", campaign_id),
        ):
            if value is not None:
                params[key] = value
        while True:
            page = await self.http.request("GET", "/messages", params=params)
            for message in page.get("messages", []):
                yield message
            cursor = page.get("next")
            if not cursor:
                return
            params["start"] = cursor

    async def message(self, message_id: str) -> dict[str, Any]:
        body = await self.http.request("GET", f"/messages/{message_id}")
        message: dict[str, Any] = body["message"]
        return message

    async def reporting_webhooks(self) -> list[dict[str, Any]]:
        body = await self.http.request("GET", "/reporting_webhooks")
        hooks: list[dict[str, Any]] = body.get("reporting_webhooks", [])
        return hooks
