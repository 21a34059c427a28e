"""A fake Customer.io for tests: a real HTTP server on 127.0.0.1.  Public testing API.

It speaks the parts of the Track API (under ``/api/v1``, HTTP Basic) and the
App API (under ``/v1``, Bearer) that cio-webhooks uses, as FACTS.md §4-5
document them, on an ephemeral port of the running event loop::

    async with FakeCustomerIO(site_id="s", track_key="k", app_key="a") as fake:
        track = TrackClient("s", "k", base_url=fake.track_url)
        fake.fail_next(2, status=429, retry_after=1)   # then answer normally
        await track.unsubscribe("42")
        assert fake.calls("PUT", "/api/v1/customers/42")[0].body == {"unsubscribed": True}
        assert fake.people["42"]["unsubscribed"] is True

What it does:

- checks credentials on every request (401 when wrong), like one workspace;
- records every request (method, decoded and raw path, query, JSON body, the
  status answered; never the Authorization header) in ``requests``;
- answers ``GET /api/v1/accounts/region`` (the credentials check) with its ``region``;
- keeps Track API state: ``people`` (identify merges attributes; suppress
  deletes the person and adds the identifier to ``suppressed``) and
  ``tracked_events`` (deduplicated on the event ``id``, as Customer.io does);
- serves ``/v1/messages`` from ``messages`` with filters and cursor pagination
  (``page_size`` per page at most, ``next`` an opaque cursor), ``/v1/messages/{id}``,
  metrics from ``campaign_series`` / ``metric_series`` and ``/v1/reporting_webhooks``;
- fails on demand: ``fail_next(n, status, retry_after)`` answers the next
  ``n`` authenticated requests with ``status``, ``drop_next(n)`` closes the
  connection without an answer, ``delay`` stalls every answer.

Customer.io's regions are separate deployments, and a workspace lives in one:
run one instance per region (``region="eu"`` tags it) to test that a client
for the wrong region is refused.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["FakeCustomerIO", "Recorded"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_JSON = web.RequestKey("json", object)  # the request body, decoded once by the middleware


@dataclass(frozen=True)
class Recorded:
    """One request the fake received.  ``status`` is what it answered (0: dropped)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int
    raw_path: str = ""
    region: str = "us"


@dataclass
class _Failure:
    remaining: int
    status: int  # 0 drops the connection
    retry_after: str | None
    message: str
    path: str | None = None  # only requests to this (decoded) path


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _offset(cursor: str) -> int | None:
    try:
        text = base64.urlsafe_b64decode(cursor.encode()).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    kind, _, number = text.partition(":")
    return int(number) if kind == "offset" and number.isdigit() else None


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"meta": {"error": message}}, status=status)


@dataclass
class FakeCustomerIO:
    """One Customer.io workspace in one region.  See the module docstring."""

    site_id: str = "site"
    track_key: str = "track-key"
    app_key: str = "app-key"
    region: str = "us"
    #: Most deliveries ``/v1/messages`` returns per page, whatever ``limit`` asks.
    page_size: int = 2
    requests: list[Recorded] = field(default_factory=list)
    #: Deliveries for ``/v1/messages``: dicts with ``id``, ``type``, ``created``,
    #: ``campaign_id``, ``metrics`` (metric -> unix time), ...
    messages: list[dict[str, Any]] = field(default_factory=list)
    #: ``campaign_id -> {"sent": [...], ...}`` for ``/v1/campaigns/{id}/metrics``.
    campaign_series: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    #: Other metrics by path below ``/v1`` without ``/metrics``, e.g. ``"broadcasts/3"``,
    #: ``"campaigns/7/actions/9"``, ``"transactional/5"``.
    metric_series: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    #: Track API state: person identifier -> attributes.
    people: dict[str, dict[str, Any]] = field(default_factory=dict)
    suppressed: set[str] = field(default_factory=set)
    #: Events Customer.io would process (a repeated ``id`` is dropped): dicts with
    #: ``person``, ``name``, ``data`` and ``id``.
    tracked_events: list[dict[str, Any]] = field(default_factory=list)
    #: Seconds to stall before answering (to exercise client timeouts).
    delay: float = 0.0
    #: Requests received and not yet answered (e.g. stalled by ``delay``).
    in_flight: int = 0
    port: int = 0
    _failures: list[_Failure] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def track_url(self) -> str:
        """Base URL for ``TrackClient(base_url=...)``."""
        return self.url + "/api/v1"

    @property
    def app_url(self) -> str:
        """Base URL for ``AppClient(base_url=...)``."""
        return self.url + "/v1"

    def fail_next(
        self,
        n: int,
        *,
        status: int = 500,
        retry_after: str | int | None = None,
        message: str = "injected failure",
        path: str | None = None,
    ) -> None:
        """Answer the next ``n`` authenticated requests (to ``path`` only, when given)
        with ``status``, the error ``message`` in the body, and ``Retry-After``."""
        ra = None if retry_after is None else str(retry_after)
        self._failures.append(_Failure(n, status, ra, message, path))

    def drop_next(self, n: int, *, path: str | None = None) -> None:
        """Close the connection of the next ``n`` authenticated requests (to ``path``
        only, when given) without answering."""
        self._failures.append(_Failure(n, 0, None, "", path))

    def calls(
        self, method: str | None = None, path: str | None = None, *, ok: bool = True
    ) -> list[Recorded]:
        """Recorded requests, by default only those answered 2xx."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method)
            and (path is None or r.path == path)
            and (not ok or 200 <= r.status < 300)
        ]

    async def start(self) -> FakeCustomerIO:
        """Listen on 127.0.0.1, on a free port (``port``), on the running event loop."""
        app = web.Application(middlewares=[self._middleware])
        track = "/api/v1/customers/{person}"
        app.router.add_put(track, self._identify)
        app.router.add_delete(track, self._delete)
        app.router.add_post(track + "/suppress", self._suppress)
        app.router.add_post(track + "/unsuppress", self._unsuppress)
        app.router.add_post(track + "/events", self._track)
        app.router.add_get("/api/v1/accounts/region", self._account_region)
        app.router.add_get("/v1/messages", self._messages)
        app.router.add_get("/v1/messages/{id}", self._message)
        app.router.add_get("/v1/{path:.+}/metrics", self._metrics)
        app.router.add_get("/v1/reporting_webhooks", self._webhooks)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeCustomerIO:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- plumbing ------------------------------------------------------------------
    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if request.path.startswith("/api/v1/"):
            token = base64.b64encode(f"{self.site_id}:{self.track_key}".encode()).decode()
            return header == f"Basic {token}"
        return header == f"Bearer {self.app_key}"

    def _failure_for(self, path: str) -> _Failure | None:
        return next((f for f in self._failures if f.path in (None, path)), None)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.in_flight += 1
        try:
            return await self._answer(request, handler)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")

        def record(status: int) -> None:
            self.requests.append(
                Recorded(
                    request.method,
                    request.path,
                    dict(request.query),
                    body,
                    status,
                    raw_path=request.raw_path.partition("?")[0],
                    region=self.region,
                )
            )

        if not self._authorised(request):
            response: web.StreamResponse = _error(401, "Unauthorized request")
        elif failure := self._failure_for(request.path):
            failure.remaining -= 1
            if failure.remaining <= 0:
                self._failures.remove(failure)
            if failure.status == 0:
                record(0)
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError  # aiohttp's way out of a dropped connection
            headers = {"Retry-After": failure.retry_after} if failure.retry_after else {}
            response = web.json_response(
                {"meta": {"error": failure.message}}, status=failure.status, headers=headers
            )
        elif isinstance(body, str):
            response = _error(400, "body is not JSON")
        else:
            request[_JSON] = body
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # no such route or method: recorded too
                response = _error(exc.status, exc.reason)
        record(response.status)
        return response

    # -- Track API -----------------------------------------------------------------
    async def _identify(self, request: web.Request) -> web.Response:
        attributes = request[_JSON] or {}
        if not isinstance(attributes, dict):
            return _error(400, "attributes must be a JSON object")
        person = request.match_info["person"]
        self.people.setdefault(person, {}).update(attributes)
        return web.json_response({})

    async def _delete(self, request: web.Request) -> web.Response:
        self.people.pop(request.match_info["person"], None)
        return web.json_response({})

    async def _suppress(self, request: web.Request) -> web.Response:
        person = request.match_info["person"]
        self.people.pop(person, None)  # suppress deletes the person
        self.suppressed.add(person)
        return web.json_response({})

    async def _unsuppress(self, request: web.Request) -> web.Response:
        self.suppressed.discard(request.match_info["person"])
        return web.json_response({})

    async def _track(self, request: web.Request) -> web.Response:
        event = request[_JSON]
        if not isinstance(event, dict) or not event.get("name"):
            return _error(400, "an event needs a name")
        ident = event.get("id")
        if ident is None or all(e["id"] != ident for e in self.tracked_events):
            self.tracked_events.append(
                {
                    "person": request.match_info["person"],
                    "name": event["name"],
                    "data": event.get("data") or {},
                    "id": ident,
                }
            )
        return web.json_response({})

    async def _account_region(self, request: web.Request) -> web.Response:
        host = "track.customer.io" if self.region == "us" else f"track-{self.region}.customer.io"
        return web.json_response(
            {"url": f"https://{host}", "data_center": self.region, "environment_id": 1}
        )

    # -- App API -------------------------------------------------------------------
    async def _messages(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = int(q.get("limit", "50"))
            since = int(q.get("start_ts", "0"))
            until = int(q["end_ts"]) if "end_ts" in q else None
        except ValueError:
            return _error(400, "limit, start_ts and end_ts are integers")
        if not 1 <= limit <= 1000:
            return _error(400, "limit must be between 1 and 1000")
        offset = _offset(q["start"]) if q.get("start") else 0
        if offset is None:
            return _error(400, "invalid start cursor")
        selected = [
            m
            for m in self.messages
            if m.get("created", 0) >= since
            and (until is None or m.get("created", 0) <= until)
            and ("metric" not in q or q["metric"] in (m.get("metrics") or {}))
            and ("campaign_id" not in q or str(m.get("campaign_id")) == q["campaign_id"])
        ]
        end = offset + min(limit, self.page_size)
        more = end < len(selected)
        return web.json_response(
            {"messages": selected[offset:end], "next": _cursor(end) if more else ""}
        )

    async def _message(self, request: web.Request) -> web.Response:
        for message in self.messages:
            if str(message["id"]) == request.match_info["id"]:
                return web.json_response({"message": message})
        return _error(404, "not found")

    async def _metrics(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        kind, _, ident = path.partition("/")
        series = self.metric_series.get(path)
        if series is None and kind == "campaigns" and "/" not in ident:
            series = self.campaign_series.get(ident)
        if series is None:
            return _error(404, "not found")
        return web.json_response({"metric": {"series": series}})

    async def _webhooks(self, request: web.Request) -> web.Response:
        return web.json_response({"reporting_webhooks": self.webhooks})
