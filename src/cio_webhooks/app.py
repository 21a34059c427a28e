"""The HTTP service: ``POST /webhooks/customerio``, ``/healthz``, ``/readyz``, ``/metrics``.

Answers follow Customer.io's delivery rules (FACTS.md §3), where any 4xx/5xx
other than 503 stalls the whole stream for an hour, so an authentic request is
never refused for what it contains:

=========================================================  ======
authentic event, stored (or already stored)                 200
authentic, signed outside the tolerance but within the      200
dedupe horizon: stored and processed, counted ``late``
authentic, signed beyond the dedupe horizon: quarantined    200
(reason ``stale``), never dispatched
authentic body that is not a valid event, or any            200
unexpected error after the signature checked: quarantined
missing, malformed, repeated or invalid signature headers   401
body over the limit                                         413
the store could not take it (Customer.io retries)           503
=========================================================  ======

The webhook path is served by a plain ASGI callable, outside Starlette's
routing and middleware, because it is the hot path; everything else is Starlette.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, fields
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._exceptions import ConfigError, InvalidEvent, SignatureError, StoreUnavailable
from ._exposition import label_value
from ._metrics import MetricSources, store_lines
from ._traffic import AckTimes, TrafficMeter
from .events import Event, parse_event
from .handlers import Router
from .settings import (
    DEFAULT_DEDUPE_DAYS,
    DEFAULT_MAX_BODY,
    DEFAULT_TOLERANCE,
    PROBE_TIMEOUT,
    UI_PATH,
    WEBHOOK_PATH,
)
from .signature import verify_values
from .store import ACK_BUCKETS, Ingest, PutResult, Store

__all__ = ["Counters", "Receiver", "WebhookApp", "create_app"]

log = logging.getLogger("cio_webhooks.receiver")

#: Distinct (object_type, metric) series ``/metrics`` counts at most: Customer.io's
#: documented kinds number about 60; an authentic sender inventing more gets no more.
_MAX_KINDS = 200
#: How the reason of a request signed beyond the dedupe horizon starts.
STALE_REASON = "stale"
Background = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


@dataclass
class Counters:
    """Request outcomes since start, exported at ``/metrics``."""

    stored: int = 0
    duplicate: int = 0
    quarantined: int = 0
    #: Authentic but signed beyond the dedupe horizon: quarantined, never dispatched.
    stale: int = 0
    #: Authentic but signed outside the tolerance (also counted as stored or duplicate).
    late: int = 0
    rejected_signature: int = 0
    too_large: int = 0
    store_unavailable: int = 0
    #: The connection ended before the body did: nothing to verify, nobody to answer.
    incomplete: int = 0


class _ClientGone(Exception):
    """The client disconnected before sending the whole body."""


class _Answer:
    """One canned response: both ASGI messages, built once and sent as they are (the
    server reads them and copies the headers out; nothing mutates them), so that the
    hot path builds no dict, list or header per request."""

    __slots__ = ("body", "start")

    def __init__(self, status: int, body: bytes, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
        self.start: Message = {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
        self.body: Message = {"type": "http.response.body", "body": body}


_STORED = _Answer(200, b'{"ok":true,"status":"stored"}')
_DUPLICATE = _Answer(200, b'{"ok":true,"status":"duplicate"}')
_QUARANTINED = _Answer(200, b'{"ok":true,"status":"quarantined"}')
_BAD_SIGNATURE = _Answer(401, b'{"error":"invalid_signature"}')
_TOO_LARGE = _Answer(413, b'{"error":"body_too_large"}')
_UNAVAILABLE = _Answer(503, b'{"error":"store_unavailable","retry":true}')
_NOT_ALLOWED = _Answer(405, b'{"error":"method_not_allowed"}', [(b"allow", b"POST")])


async def _send(send: Send, answer: _Answer) -> None:
    await send(answer.start)
    await send(answer.body)


class Receiver:
    """ASGI app for the webhook endpoint: verify, store durably, then answer.

    The signature decides authenticity; the request timestamp only decides how an
    authentic request is kept.  Outside ``tolerance`` seconds it is *late*: stored
    and processed as usual (dedupe stops a replay), counted and logged with its
    skew.  Beyond ``dedupe_days`` the inbox may have forgotten the event_id, so a
    replay could act twice: it is quarantined as *stale* instead.  A ``tolerance``
    of 0 turns both checks off.
    """

    def __init__(
        self,
        inbox: Ingest,
        keys: Sequence[str],
        *,
        tolerance: float = DEFAULT_TOLERANCE,
        dedupe_days: float = DEFAULT_DEDUPE_DAYS,
        max_body: int = DEFAULT_MAX_BODY,
        clock: Callable[[], float] = time.time,
        router: Router | None = None,
    ) -> None:
        if not keys:
            raise ValueError("the receiver needs at least one signing key")
        try:
            # Checked once, here: ``verify`` encodes every key for every request, and one
            # key that cannot be (undecodable bytes, as from a mis-set environment
            # variable) would fail every request with a 500, the valid keys' too.
            for key in keys:
                key.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError("a signing key holds bytes that are not UTF-8 text") from None
        self.inbox = inbox
        self.keys = tuple(keys)
        self.tolerance = tolerance
        self.horizon = dedupe_days * 86400
        self.max_body = max_body
        self.clock = clock
        self.router = router
        self.counters = Counters()
        self.acks = AckTimes()
        #: Events stored, by (object_type, metric), since start (``/metrics``).
        self.kinds: dict[tuple[str, str], int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        unanswered = self.counters.incomplete
        await self._answer(scope, receive, send)
        # From the app's first look at the request to its answer: what Customer.io's
        # 4 s timeout is measured against, less the network and the server's queue.
        # A request whose client left before its body ended got no answer to time.
        if self.counters.incomplete == unanswered:
            self.acks.observe(time.perf_counter() - start)

    def traffic_counts(self) -> dict[str, int]:
        """The counts a ``TrafficMeter`` reads: ``Counters``, with the stale bodies
        (quarantined, but kept out of ``quarantined`` at ``/metrics``) among the
        quarantined, as the dashboard shows them."""
        counts = dataclasses.asdict(self.counters)
        counts["quarantined"] += counts["stale"]
        return counts

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await _send(send, _NOT_ALLOWED)
            return
        signature: str | None = None
        timestamp: str | None = None
        repeated = False
        for name, value in scope["headers"]:
            if name == b"x-cio-signature":
                repeated |= signature is not None
                signature = value.decode("latin-1")
            elif name == b"x-cio-timestamp":
                repeated |= timestamp is not None
                timestamp = value.decode("latin-1")
            elif name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                self.counters.too_large += 1
                await _send(send, _TOO_LARGE)
                return
        if repeated:
            # Which of two signatures would we check?  Neither: refuse.
            self._reject("repeated X-CIO-Signature or X-CIO-Timestamp header")
            await _send(send, _BAD_SIGNATURE)
            return
        try:
            body = await self._read_body(receive)
        except _ClientGone:
            # A half-sent body (the read timeout closed it, or the client hung up) is
            # neither a forgery nor an event: nobody is left to answer.
            self.counters.incomplete += 1
            return
        if body is None:
            self.counters.too_large += 1
            await _send(send, _TOO_LARGE)
            return
        now = self.clock()
        try:
            # Tolerance 0: verify only authenticates; the timestamp is judged below.
            sent_at = verify_values(body, signature, timestamp, self.keys, tolerance=0, now=now)
        except SignatureError as exc:
            self._reject(str(exc))
            await _send(send, _BAD_SIGNATURE)
            return
        if self.tolerance > 0 and abs(now - sent_at) > self.tolerance:
            await _send(send, await self._late(body, now, now - sent_at))
            return
        await _send(send, await self._store(body, now))

    def metric_lines(self) -> list[str]:
        """This receiver's series: requests by outcome, ack latency, events by kind."""
        lines = ["# TYPE cio_webhooks_requests_total counter"]
        for f in fields(self.counters):
            value: Any = getattr(self.counters, f.name)
            lines.append(f'cio_webhooks_requests_total{{outcome="{f.name}"}} {value}')
        lines.extend(_ack_lines(self.acks))
        lines.append("# TYPE cio_webhooks_events_total counter")
        for (object_type, metric), count in sorted(self.kinds.items()):
            labels = f'object_type="{label_value(object_type)}",metric="{label_value(metric)}"'
            lines.append(f"cio_webhooks_events_total{{{labels}}} {count}")
        return lines

    def _reject(self, detail: str) -> None:
        self.counters.rejected_signature += 1
        log.warning("event=request_rejected reason=invalid_signature detail=%s", detail)

    async def _late(self, body: bytes, now: float, skew: float) -> _Answer:
        if abs(skew) > self.horizon:
            self.counters.stale += 1
            log.warning(
                "event=stale_request skew_s=%.0f dedupe_horizon_s=%.0f action=quarantined",
                skew,
                self.horizon,
            )
            try:
                event_id: str | None = parse_event(body).event_id
            except InvalidEvent as exc:
                event_id = exc.event_id
            except Exception:
                event_id = None
            reason = (
                f"{STALE_REASON}: signed {skew:+.0f}s from receipt,"
                f" beyond the {self.horizon / 86400:g}-day dedupe horizon"
            )
            return await self._quarantine(body, reason, now, event_id, count=False)
        self.counters.late += 1
        log.warning(
            "event=late_request skew_s=%.0f tolerance_s=%.0f action=stored",
            skew,
            self.tolerance,
        )
        return await self._store(body, now)

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it exceeds ``max_body``.  Raises
        ``_ClientGone`` when the connection ends before the body does."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _store(self, body: bytes, now: float) -> _Answer:
        """Store an authentic body as an event, else quarantine it.  Only a failing
        store answers non-2xx (503); any other error keeps the body in quarantine."""
        event: Event | None = None
        try:
            event = parse_event(body, received_at=now)
            # Knowing the handlers (``router``), an event no handler wants is stored as
            # done: no worker has to claim it (the common case, and it keeps claim and
            # finish writes off the commits that ack requests).  Without a router every
            # event waits for a worker, which decides.
            router = self.router
            handled = router is not None and not router.match(event.object_type, event.metric)
            result = await self.inbox.put(event, handled=handled)
        except StoreUnavailable as exc:
            return self._unavailable(exc)
        except InvalidEvent as exc:
            return await self._quarantine(body, str(exc), now, exc.event_id)
        except Exception as exc:
            # Whatever it is, it must not cost Customer.io's stream a 5xx: keep the body.
            reason = f"could not store the event: {type(exc).__name__}: {exc}"
            return await self._quarantine(body, reason, now, event.event_id if event else None)
        if result is PutResult.DUPLICATE:
            self.counters.duplicate += 1
            return _DUPLICATE
        self.counters.stored += 1
        kind = (event.object_type, event.metric)
        if kind in self.kinds or len(self.kinds) < _MAX_KINDS:
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
        return _STORED

    async def _quarantine(
        self, body: bytes, reason: str, now: float, event_id: str | None, *, count: bool = True
    ) -> _Answer:
        # Surrogates cannot be stored as text: escape them, the raw body keeps the rest.
        reason = reason.encode("utf-8", "backslashreplace").decode("utf-8")
        try:
            await self.inbox.quarantine(body, reason, received_at=now, event_id=event_id)
        except StoreUnavailable as exc:
            return self._unavailable(exc)
        except Exception as exc:
            if event_id is None:
                return self._unavailable(exc)
            # The event_id was the trouble (text SQLite refuses): keep the body without it.
            return await self._quarantine(body, reason, now, None, count=count)
        if count:
            self.counters.quarantined += 1
        log.warning("event=quarantined reason=%s", reason[:500])
        return _QUARANTINED

    def _unavailable(self, exc: Exception) -> _Answer:
        # Not stored: a 503 makes Customer.io keep the event and retry it.
        self.counters.store_unavailable += 1
        log.error("event=store_unavailable error=%s", str(exc))
        return _UNAVAILABLE


def create_app(
    inbox: Store,
    keys: Sequence[str],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    dedupe_days: float = DEFAULT_DEDUPE_DAYS,
    max_body: int = DEFAULT_MAX_BODY,
    clock: Callable[[], float] = time.time,
    background: Sequence[Background] = (),
    router: Router | None = None,
    path: str = WEBHOOK_PATH,
    ui: ASGIApp | None = None,
    metrics: MetricSources | None = None,
) -> WebhookApp:
    """The ASGI application.  ``dedupe_days`` is the inbox's dedupe horizon (see
    ``Receiver``).  Its lifespan opens ``inbox``, runs each ``background``
    task (dispatcher, warehouse loader) and the receiver's ``TrafficMeter`` until
    shutdown, then closes the inbox after the in-flight requests have been answered.
    ``ui`` (the dashboard, on ``inbox``) is served at ``UI_PATH``; ``/metrics`` shows the
    receiver's series, then those of ``metrics`` (e.g. the policies'), then the store's."""
    sources = metrics or MetricSources()
    receiver = Receiver(
        inbox,
        keys,
        tolerance=tolerance,
        dedupe_days=dedupe_days,
        max_body=max_body,
        clock=clock,
        router=router,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await inbox.open()
        stop = asyncio.Event()
        meter = TrafficMeter(receiver.traffic_counts, receiver.acks, clock=clock)
        tasks = [asyncio.create_task(task(stop)) for task in background]
        tasks.append(asyncio.create_task(meter.run(inbox, stop)))
        # What start-up made (modules, routes, the server) lives until exit: keep the
        # collector from walking it again on every full collection under load.
        gc.freeze()
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await inbox.close()

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                ready = await inbox.ready()
        except TimeoutError:
            ready = False
        if ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "store_unavailable"}, status_code=503)

    async def metrics_page(_: Request) -> Response:
        lines = [*receiver.metric_lines(), *sources.lines()]
        lines.extend(await store_lines(inbox, now=clock()))
        return PlainTextResponse("\n".join(lines) + "\n")

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_page),
    ]
    if ui is not None:
        routes.append(Mount(UI_PATH, app=ui))
    site = Starlette(routes=routes, lifespan=lifespan)
    return WebhookApp(receiver, site, path)


def _ack_lines(acks: AckTimes) -> list[str]:
    """The ack latency histogram, Prometheus style (cumulative ``le`` buckets)."""
    lines = ["# TYPE cio_webhooks_ack_seconds histogram"]
    running = 0
    for bound, count in zip((*ACK_BUCKETS, None), acks.counts, strict=True):
        running += count
        le = "+Inf" if bound is None else f"{bound:g}"
        lines.append(f'cio_webhooks_ack_seconds_bucket{{le="{le}"}} {running}')
    lines.append(f"cio_webhooks_ack_seconds_sum {acks.total:.6f}")
    lines.append(f"cio_webhooks_ack_seconds_count {running}")
    return lines


class WebhookApp:
    """The ASGI app ``create_app`` returns: the webhook path goes straight to the
    ``receiver``; health, readiness, metrics and lifespan go to Starlette."""

    def __init__(self, receiver: Receiver, site: Starlette, path: str) -> None:
        self.receiver = receiver
        self.site = site
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # With or without a trailing slash: a webhook URL typed with one must not
        # answer 404 (any 4xx stalls Customer.io's stream).
        if scope["type"] == "http" and scope["path"].rstrip("/") == self.path:
            await self.receiver(scope, receive, send)
        else:
            await self.site(scope, receive, send)
