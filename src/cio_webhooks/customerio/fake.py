"""A fake Customer.io for tests: a real HTTP server on 127.0.0.1.  Public testing API.

It speaks the parts of the Track API (``/api/v1``, Basic auth) and the App API
(``/v1``, Bearer auth) that cio-webhooks uses, as documented (FACTS.md §4-5)::

    async with FakeCustomerIO(site_id="s", track_key="k", app_key="a") as fake:
        track = TrackClient("s", "k", base_url=fake.track_url)
        fake.fail_next(2, status=429, retry_after=1)   # then answer normally
        ...
        assert fake.calls("PUT", "/api/v1/customers/42")

Run one instance per region to test US/EU selection.  Every request is
recorded (method, path, query, JSON body, the status answered).
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["FakeCustomerIO", "Recorded"]


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int


@dataclass
class _Failure:
    remaining: int
    status: int
    retry_after: str | None


@dataclass
class FakeCustomerIO:
    site_id: str = "site"
    track_key: str = "track-key"
    app_key: str = "app-key"
    page_size: int = 2
    requests: list[Recorded] = field(default_factory=list)
    #: Deliveries served by ``/v1/messages``: dicts with ``id``, ``type``, ``metrics``, ...
    messages: list[dict[str, Any]] = field(default_factory=list)
    #: ``campaign_id -> {"sent": [...], ...}`` served by ``/v1/campaigns/{id}/metrics``.
    campaign_series: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    #: Seconds to stall before answering (to exercise client timeouts).
    delay: float = 0.0
    _failures: list[_Failure] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def track_url(self) -> str:
        return self.url + "/api/v1"

    @property
    def app_url(self) -> str:
        return self.url + "/v1"

    def fail_next(self, n: int, *, status: int = 500, retry_after: str | int | None = None) -> None:
        """Answer the next ``n`` authenticated requests with ``status``."""
        ra = None if retry_after is None else str(retry_after)
        self._failures.append(_Failure(n, status, ra))

    def calls(
        self, method: str | None = None, path: str | None = None, *, ok: bool = True
    ) -> list[Recorded]:
        """Recorded requests, by default only those answered 2xx."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method)
            and (path is None or r.path == path)
            and (not ok or r.status < 300)
        ]

    async def __aenter__(self) -> FakeCustomerIO:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("PUT", "/api/v1/customers/{person}", self._ok)
        app.router.add_route("DELETE", "/api/v1/customers/{person}", self._ok)
        app.router.add_route("POST", "/api/v1/customers/{person}/suppress", self._ok)
        app.router.add_route("POST", "/api/v1/customers/{person}/unsuppress", self._ok)
        app.router.add_route("POST", "/api/v1/customers/{person}/events", self._ok)
        app.router.add_get("/v1/messages", self._messages)
        app.router.add_get("/v1/messages/{id}", self._message)
        app.router.add_get("/v1/campaigns/{id}/metrics", self._campaign_metrics)
        app.router.add_get("/v1/campaigns/{id}/actions/{action}/metrics", self._empty_metrics)
        app.router.add_get("/v1/broadcasts/{id}/metrics", self._empty_metrics)
        app.router.add_get("/v1/newsletters/{id}/metrics", self._empty_metrics)
        app.router.add_get("/v1/transactional/{id}/metrics", self._empty_metrics)
        app.router.add_get("/v1/reporting_webhooks", self._webhooks)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- plumbing ------------------------------------------------------------------
    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if request.path.startswith("/api/v1/"):
            token = base64.b64encode(f"{self.site_id}:{self.track_key}".encode()).decode()
            return header == f"Basic {token}"
        return header == f"Bearer {self.app_key}"

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        if not self._authorised(request):
            response: web.StreamResponse = web.json_response(
                {"meta": {"error": "Unauthorized request"}}, status=401
            )
        elif self._failures:
            failure = self._failures[0]
            failure.remaining -= 1
            if failure.remaining <= 0:
                self._failures.pop(0)
            headers = {"Retry-After": failure.retry_after} if failure.retry_after else {}
            response = web.json_response(
                {"meta": {"error": "injected failure"}}, status=failure.status, headers=headers
            )
        else:
            response = await handler(request)
        self.requests.append(
            Recorded(request.method, request.path, dict(request.query), body, response.status)
        )
        return response

    async def _ok(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _messages(self, request: web.Request) -> web.Response:
        start = int(request.query.get("start", "0") or 0)
        limit = min(int(request.query.get("limit", "50")), self.page_size)
        since = int(request.query.get("start_ts", "0"))
        selected = [m for m in self.messages if m.get("created", 0) >= since]
        page = selected[start : start + limit]
        more = start + limit < len(selected)
        return web.json_response({"messages": page, "next": str(start + limit) if more else ""})

    async def _message(self, request: web.Request) -> web.Response:
        for message in self.messages:
            if message["id"] == request.match_info["id"]:
                return web.json_response({"message": message})
        return web.json_response({"meta": {"error": "not found"}}, status=404)

    async def _campaign_metrics(self, request: web.Request) -> web.Response:
        series = self.campaign_series.get(request.match_info["id"])
        if series is None:
            return web.json_response({"meta": {"error": "not found"}}, status=404)
        return web.json_response({"metric": {"series": series}})

    async def _empty_metrics(self, request: web.Request) -> web.Response:
        return web.json_response({"metric": {"series": {}}})

    async def _webhooks(self, request: web.Request) -> web.Response:
        return web.json_response({"reporting_webhooks": self.webhooks})
