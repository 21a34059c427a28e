"""The HTTP service: ``POST /webhooks/customerio``, ``/healthz``, ``/readyz``, ``/metrics``.

Answers follow Customer.io's delivery rules (FACTS.md §3), where any 4xx/5xx
other than 503 stalls the whole stream for an hour:

====================================================  ======
authentic event, stored (or already stored)            200
authentic body that is not a valid event (quarantined) 200
missing/invalid signature, stale timestamp             401
body over the limit                                    413
the store could not take it (Customer.io retries)      503
====================================================  ======

The webhook path is served by a plain ASGI callable, outside Starlette's
routing and middleware, because it is the hot path; everything else is Starlette.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, fields
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ._exceptions import InvalidEvent, SignatureError, StaleTimestamp
from .dispatcher import Dispatcher
from .events import parse_event
from .inbox import Inbox, PutResult
from .signature import DEFAULT_TOLERANCE, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

__all__ = ["Counters", "Receiver", "WebhookApp", "create_app"]

log = logging.getLogger("cio_webhooks.receiver")

WEBHOOK_PATH = "/webhooks/customerio"
DEFAULT_MAX_BODY = 2 * 1024 * 1024
Background = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


@dataclass
class Counters:
    """Request outcomes since start, exported at ``/metrics``."""

    stored: int = 0
    duplicate: int = 0
    quarantined: int = 0
    rejected_signature: int = 0
    rejected_stale: int = 0
    too_large: int = 0
    store_unavailable: int = 0


_STORED = (200, b'{"ok":true,"status":"stored"}')
_DUPLICATE = (200, b'{"ok":true,"status":"duplicate"}')
_QUARANTINED = (200, b'{"ok":true,"status":"quarantined"}')
_BAD_SIGNATURE = (401, b'{"error":"invalid_signature"}')
_STALE = (401, b'{"error":"stale_timestamp"}')
_TOO_LARGE = (413, b'{"error":"body_too_large"}')
_UNAVAILABLE = (503, b'{"error":"store_unavailable","retry":true}')
_NOT_ALLOWED = (405, b'{"error":"method_not_allowed"}')


async def _send(
    send: Send, answer: tuple[int, bytes], extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    status, body = answer
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Receiver:
    """ASGI app for the webhook endpoint: verify, store durably, then answer."""

    def __init__(
        self,
        inbox: Inbox,
        keys: Sequence[str],
        *,
        tolerance: float = DEFAULT_TOLERANCE,
        max_body: int = DEFAULT_MAX_BODY,
        clock: Callable[[], float] = time.time,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        if not keys:
            raise ValueError("the receiver needs at least one signing key")
        self.inbox = inbox
        self.keys = tuple(keys)
        self.tolerance = tolerance
        self.max_body = max_body
        self.clock = clock
        self.dispatcher = dispatcher
        self.counters = Counters()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await _send(send, _NOT_ALLOWED, [(b"allow", b"POST")])
            return
        signature = timestamp = ""
        for name, value in scope["headers"]:
            if name == b"x-cio-signature":
                signature = value.decode("latin-1")
            elif name == b"x-cio-timestamp":
                timestamp = value.decode("latin-1")
            elif name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                self.counters.too_large += 1
                await _send(send, _TOO_LARGE)
                return
        body = await self._read_body(receive)
        if body is None:
            self.counters.too_large += 1
            await _send(send, _TOO_LARGE)
            return
        now = self.clock()
        try:
            verify(
                body,
                {SIGNATURE_HEADER: signature, TIMESTAMP_HEADER: timestamp},
                self.keys,
                tolerance=self.tolerance,
                now=now,
            )
        except StaleTimestamp as exc:
            self.counters.rejected_stale += 1
            log.warning(
                "event=request_rejected reason=stale_timestamp skew_s=%.0f tolerance_s=%.0f",
                exc.skew,
                exc.tolerance,
            )
            await _send(send, _STALE)
            return
        except SignatureError as exc:
            self.counters.rejected_signature += 1
            log.warning("event=request_rejected reason=invalid_signature detail=%s", str(exc))
            await _send(send, _BAD_SIGNATURE)
            return
        await _send(send, await self._store(body, now))

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it exceeds ``max_body``."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _store(self, body: bytes, now: float) -> tuple[int, bytes]:
        try:
            event = parse_event(body, received_at=now)
        except InvalidEvent as exc:
            try:
                await self.inbox.quarantine(body, str(exc), received_at=now)
            except Exception as store_exc:
                return self._unavailable(store_exc)
            self.counters.quarantined += 1
            log.warning("event=quarantined reason=%s", str(exc))
            return _QUARANTINED
        # With the dispatcher in this process, an event no handler wants is stored as
        # done: the dispatcher never has to claim it (the common case, and it keeps
        # claim and finish writes off the writer thread that acks requests).
        dispatcher = self.dispatcher
        handled = dispatcher is not None and not dispatcher.router.match(
            event.object_type, event.metric
        )
        try:
            result = await self.inbox.put(event, handled=handled)
        except Exception as exc:
            return self._unavailable(exc)
        if result is PutResult.DUPLICATE:
            self.counters.duplicate += 1
            return _DUPLICATE
        self.counters.stored += 1
        if dispatcher is not None and not handled:
            dispatcher.wake()
        return _STORED

    def _unavailable(self, exc: Exception) -> tuple[int, bytes]:
        # Not stored: a 503 makes Customer.io keep the event and retry it.
        self.counters.store_unavailable += 1
        log.error("event=store_unavailable error=%s", str(exc))
        return _UNAVAILABLE


def create_app(
    inbox: Inbox,
    keys: Sequence[str],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    max_body: int = DEFAULT_MAX_BODY,
    clock: Callable[[], float] = time.time,
    background: Sequence[Background] = (),
    dispatcher: Dispatcher | None = None,
    path: str = WEBHOOK_PATH,
) -> WebhookApp:
    """The ASGI application.  Its lifespan opens ``inbox``, runs each ``background``
    task (dispatcher, warehouse loader) until shutdown, then closes the inbox after
    the in-flight requests have been answered."""
    receiver = Receiver(
        inbox, keys, tolerance=tolerance, max_body=max_body, clock=clock, dispatcher=dispatcher
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await inbox.open()
        stop = asyncio.Event()
        tasks = [asyncio.create_task(task(stop)) for task in background]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await inbox.close()

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        if await inbox.ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "store_unavailable"}, status_code=503)

    async def metrics(_: Request) -> Response:
        lines = ["# TYPE cio_webhooks_requests_total counter"]
        for f in fields(receiver.counters):
            value: Any = getattr(receiver.counters, f.name)
            lines.append(f'cio_webhooks_requests_total{{outcome="{f.name}"}} {value}')
        try:
            gauges = await inbox.gauges(now=clock())
        except Exception as exc:  # metrics must not fail because the store is sick
            log.error("event=metrics_store_error error=%s", str(exc))
            gauges = {}
        for name, number in gauges.items():
            lines.append(f"# TYPE cio_webhooks_inbox_{name} gauge")
            lines.append(f"cio_webhooks_inbox_{name} {number:g}")
        return PlainTextResponse("\n".join(lines) + "\n")

    site = Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)],
        lifespan=lifespan,
    )
    return WebhookApp(receiver, site, path)


class WebhookApp:
    """The ASGI app ``create_app`` returns: the webhook path goes straight to the
    ``receiver``; health, readiness, metrics and lifespan go to Starlette."""

    def __init__(self, receiver: Receiver, site: Starlette, path: str) -> None:
        self.receiver = receiver
        self.site = site
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path:
            await self.receiver(scope, receive, send)
        else:
            await self.site(scope, receive, send)
