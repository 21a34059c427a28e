"""The HTTP core shared by the Track and App API clients.

One ``aiohttp`` session per client, a client-side rate limit, retries with
exponential backoff and jitter for 429, 5xx and connection errors that honour
``Retry-After``, timeouts, and errors that say what failed without the
credentials.  The clocks, the sleep function and the random source are
arguments, so tests need neither patching nor real waiting.

Why not aiolimiter and stamina (stack-measurements.md §6 suggests them): both
read the event loop's clock and sleep through asyncio, with no way to inject
either (stamina's test switch is process-global); aiolimiter lets a burst of
``max_rate`` requests through at once; stamina retries on exceptions, so
honouring ``Retry-After`` needs a custom wait anyway.  The limiter and the
retry loop below are about 60 lines together.

Waits longer than a handler should block for (``max_retry_after``,
``max_elapsed``) are not slept here: the request fails at once, and the
dispatcher's durable retry takes over (never sleep minutes in memory).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypedDict
from urllib.parse import quote

import aiohttp
from yarl import URL

from ._errors import (
    CustomerIOAuthError,
    CustomerIOConnectionError,
    CustomerIOError,
    CustomerIONotFound,
    CustomerIORateLimited,
    CustomerIOServerError,
)

__all__ = ["HttpClient", "HttpOptions", "RateLimiter", "path_segment", "retry_after"]

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

#: Statuses worth asking again: rate limited, or Customer.io (or a proxy) failing.
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
EXCERPT = 200
REDACTED = "[redacted]"


def _user_agent() -> str:
    try:
        return f"cio-webhooks/{version('cio-webhooks')}"
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "cio-webhooks"


class HttpOptions(TypedDict, total=False):
    """Transport settings the clients pass on to ``HttpClient`` (all optional)."""

    max_retries: int
    backoff: float
    max_backoff: float
    timeout: float
    max_retry_after: float
    max_elapsed: float | None
    connections: int
    clock: Clock
    wall_clock: Clock
    sleep: Sleep
    rng: random.Random


class RateLimiter:
    """At most ``rate`` requests per second, spaced evenly: no burst to trip a 429."""

    def __init__(self, rate: float, *, clock: Clock, sleep: Sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive (requests per second)")
        self.interval = 1.0 / rate
        self.clock = clock
        self.sleep = sleep
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        """Return when the next request may start."""
        async with self._lock:
            now = self.clock()
            if self._next > now:
                await self.sleep(self._next - now)
                now = self._next
            self._next = now + self.interval


def path_segment(value: int | str) -> str:
    """``value`` as one escaped URL path segment (``/``, ``@``, ``+``, spaces ...).  The
    request URL is sent as built, so ``.`` and ``..`` are escaped too: as they are,
    URLs resolve them away, and a person named ``..`` became ``PUT /api/v1/``."""
    segment = quote(str(value), safe="")
    if not segment.strip("."):
        segment = segment.replace(".", "%2E")
    return segment


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class HttpClient:
    """JSON over HTTP to one Customer.io API.

    ``authorization`` is the full ``Authorization`` header value.  It and every
    string in ``secrets`` (the API key, its encodings) are never repeated in an
    error, a log line or ``repr``: they are cut out of quoted bodies too.

    A request is tried at most ``1 + max_retries`` times.  Between tries it
    waits ``Retry-After`` when Customer.io gave one, else ``backoff * 2**n``
    (capped at ``max_backoff``, with jitter).  It gives up early, raising the
    last error, when ``Retry-After`` exceeds ``max_retry_after`` or the next
    wait would take it past ``max_elapsed`` seconds since the first try.
    ``timeout`` bounds each try (connect, send and read the whole answer).
    """

    def __init__(
        self,
        base_url: str,
        authorization: str,
        *,
        rate: float,
        secrets: Iterable[str] = (),
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        timeout: float = 10.0,
        max_retry_after: float = 60.0,
        max_elapsed: float | None = None,
        connections: int = 16,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries cannot be negative")
        self.base_url = base_url.rstrip("/")
        self._authorization = authorization
        self._secrets = tuple(s for s in (authorization, *secrets) if s)
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.max_retry_after = max_retry_after
        self.max_elapsed = max_elapsed
        self.connections = connections
        self.clock = clock
        self.wall_clock = wall_clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.limiter = RateLimiter(rate, clock=clock, sleep=sleep)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.base_url}>"

    async def close(self) -> None:
        """Close the connection pool; the next request opens a new one."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def _backoff(self, attempt: int) -> float:
        raw = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return float(raw * (0.5 + self.rng.random() / 2))

    def _open(self) -> aiohttp.ClientSession:
        # Created on first use: a session belongs to the running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout,
                connector=aiohttp.TCPConnector(limit=self.connections),
                headers={
                    "Authorization": self._authorization,
                    "Accept": "application/json",
                    "User-Agent": _user_agent(),
                },
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str | int] | None = None,
    ) -> Any:
        """Send one request, retrying what can be retried; return the decoded JSON
        answer (None for an empty one).  Raises a ``CustomerIOError`` subclass."""
        session = self._open()
        # Sent as built: the path's segments are escaped (path_segment), and a URL
        # parsed again would resolve dot segments and unescape what we escaped.
        url = URL(self.base_url + path, encoded=True)
        what = f"{method} {path}"
        started = self.clock()
        attempt = 0
        while True:
            attempt += 1
            await self.limiter.wait()
            try:
                async with session.request(method, url, json=json_body, params=params) as answer:
                    status = answer.status
                    text = await answer.text(errors="replace")
                    asked = retry_after(answer.headers.get("Retry-After"), self.wall_clock())
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Not chained: an aiohttp error can carry the request headers.
                reason = self._redact(" ".join(str(exc).split()))[:EXCERPT]
                error: CustomerIOError = CustomerIOConnectionError(
                    f"{what}: {type(exc).__name__} after {attempt} attempt(s)"
                    + (f": {reason}" if reason else ""),
                    method=method,
                    path=path,
                )
                wait = self._backoff(attempt)
                if attempt > self.max_retries or self._out_of_time(started, wait):
                    raise error from None
                await self.sleep(wait)
                continue
            if status < 300:
                return self._decode(what, status, text, method, path)
            error = self._error(what, status, text, attempt, method, path, asked)
            if status not in RETRYABLE or attempt > self.max_retries:
                raise error
            if asked is not None and asked > self.max_retry_after:
                raise self._error(
                    what, status, text, attempt, method, path, asked, note="Retry-After too long"
                )
            wait = asked if asked is not None else self._backoff(attempt)
            if self._out_of_time(started, wait):
                raise error
            await self.sleep(wait)

    def _out_of_time(self, started: float, wait: float) -> bool:
        return self.max_elapsed is not None and self.clock() + wait - started > self.max_elapsed

    def _decode(self, what: str, status: int, text: str, method: str, path: str) -> Any:
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError:
            raise CustomerIOError(
                f"{what}: HTTP {status} but the answer is not JSON: {self._excerpt(text)}",
                status=status,
                method=method,
                path=path,
            ) from None

    def _excerpt(self, text: str) -> str:
        return self._redact(" ".join(text.split()))[:EXCERPT]

    def _error(
        self,
        what: str,
        status: int,
        text: str,
        attempts: int,
        method: str,
        path: str,
        asked: float | None,
        *,
        note: str = "",
    ) -> CustomerIOError:
        message = f"{what}: HTTP {status} after {attempts} attempt(s)"
        if asked is not None:
            message += f", Retry-After {asked:g}s"
        if note:
            message += f" ({note})"
        if status in (401, 403):
            message += " (check the site id and API key, and the region)"
        excerpt = self._excerpt(text)
        if excerpt:
            message += f": {excerpt}"
        kind: type[CustomerIOError] = CustomerIOError
        if status in (401, 403):
            kind = CustomerIOAuthError
        elif status == 404:
            kind = CustomerIONotFound
        elif status == 429:
            kind = CustomerIORateLimited
        elif status >= 500:
            kind = CustomerIOServerError
        return kind(message, status=status, method=method, path=path, retry_after=asked)
