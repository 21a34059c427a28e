"""The HTTP core shared by the Track and App API clients.

One ``aiohttp`` session per client, a client-side rate limit, retries with
exponential backoff for 429, 5xx and connection errors that honour
``Retry-After``, and errors that say what failed without the credentials.
The clock and the sleep function are arguments so tests need not wait.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from ._errors import (
    CustomerIOAuthError,
    CustomerIOConnectionError,
    CustomerIOError,
    CustomerIONotFound,
    CustomerIORateLimited,
    CustomerIOServerError,
)

__all__ = ["HttpClient", "RateLimiter"]

Sleep = Callable[[float], Awaitable[None]]
RETRYABLE = {429, 500, 502, 503, 504}


class RateLimiter:
    """At most ``rate`` requests per second, spaced evenly (no bursts to trip a 429)."""

    def __init__(self, rate: float, *, clock: Callable[[], float], sleep: Sleep) -> None:
        self.interval = 1.0 / rate
        self.clock = clock
        self.sleep = sleep
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = self.clock()
            if self._next > now:
                await self.sleep(self._next - now)
                now = self._next
            self._next = now + self.interval


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
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

    ``authorization`` is the full ``Authorization`` header value; it is sent and
    never repeated in an error, a log line or ``repr``.
    """

    def __init__(
        self,
        base_url: str,
        authorization: str,
        *,
        rate: float,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._authorization = authorization
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.wall_clock = wall_clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.limiter = RateLimiter(rate, clock=clock, sleep=sleep)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.base_url}>"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _delay(self, attempt: int) -> float:
        raw = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return float(raw * (0.5 + self.rng.random() / 2))

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str | int] | None = None,
    ) -> Any:
        """Send one request, retrying what can be retried; return the decoded JSON (or None)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout,
                headers={"Authorization": self._authorization, "Accept": "application/json"},
            )
        url = self.base_url + path
        what = f"{method} {path}"
        attempt = 0
        while True:
            attempt += 1
            await self.limiter.wait()
            try:
                async with self._session.request(
                    method, url, json=json_body, params=params
                ) as response:
                    status = response.status
                    text = await response.text()
                    wait = retry_after(response.headers.get("Retry-After"), self.wall_clock())
            except (aiohttp.ClientError, TimeoutError) as exc:
                if attempt > self.max_retries:
                    raise CustomerIOConnectionError(
                        f"{what}: {type(exc).__name__} after {attempt} attempts"
                    ) from exc
                await self.sleep(self._delay(attempt))
                continue
            if status < 300:
                return json.loads(text) if text.strip() else None
            if status in RETRYABLE and attempt <= self.max_retries:
                await self.sleep(wait if wait is not None else self._delay(attempt))
                continue
            raise _error(what, status, text, attempt)


def _error(what: str, status: int, text: str, attempts: int) -> CustomerIOError:
    excerpt = " ".join(text.split())[:200]
    message = f"{what}: HTTP {status} after {attempts} attempt(s): {excerpt}".rstrip(": ")
    if status in (401, 403):
        return CustomerIOAuthError(message, status=status)
    if status == 404:
        return CustomerIONotFound(message, status=status)
    if status == 429:
        return CustomerIORateLimited(message, status=status)
    if status >= 500:
        return CustomerIOServerError(message, status=status)
    return CustomerIOError(message, status=status)
