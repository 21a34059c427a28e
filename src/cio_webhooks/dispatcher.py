"""Running handlers for stored events, with durable retries and a dead-letter state.

The dispatcher claims due events from the inbox in batches, runs every handler
whose pattern matches and that has not yet succeeded for that event, and
records the outcome in the inbox.  Nothing about a retry lives in memory: a
failed event gets ``next_attempt_at`` in the store, so retries survive restarts.
After ``RetryPolicy.max_attempts`` the event becomes ``DEAD`` with its last error
(``cio-webhooks dlq`` lists, retries or discards it).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._exceptions import InvalidEvent, StoreUnavailable
from .events import Event, parse_event
from .handlers import Route, Router
from .inbox import HandlerResult, Inbox, Job, JobState, Outcome

__all__ = ["Clock", "Dispatcher", "RetryPolicy"]

log = logging.getLogger("cio_webhooks.dispatcher")

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits about ``base * 2**(n-1)`` s,
    capped at ``max_delay``, then randomised by +-``jitter`` of itself."""

    max_attempts: int = 10
    base: float = 5.0
    max_delay: float = 3600.0
    jitter: float = 0.25

    def delay(self, attempt: int, rng: random.Random) -> float:
        raw = min(self.max_delay, self.base * 2.0 ** max(0, attempt - 1))
        return float(raw * (1 + self.jitter * (2 * rng.random() - 1)))


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}"[:2000] if text else name


class Dispatcher:
    """Runs the ``router``'s handlers for events in ``inbox``.

    ``clock`` and ``rng`` are injected so tests can drive time and jitter.
    ``lease`` is how long a claimed event stays hidden from other dispatchers;
    it must exceed ``handler_timeout``.
    """

    def __init__(
        self,
        inbox: Inbox,
        router: Router,
        *,
        retry: RetryPolicy | None = None,
        clock: Clock = time.time,
        rng: random.Random | None = None,
        batch_size: int = 200,
        concurrency: int = 32,
        handler_timeout: float = 30.0,
        poll_interval: float = 0.05,
    ) -> None:
        self.inbox = inbox
        self.router = router
        self.retry = retry or RetryPolicy()
        self.clock = clock
        self.rng = rng or random.Random()
        self.batch_size = batch_size
        self.handler_timeout = handler_timeout
        self.lease = handler_timeout * 2 + 30
        self.poll_interval = poll_interval
        self._limit = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Tell an idle dispatcher that new events were stored."""
        self._wake.set()

    async def run_once(self) -> int:
        """Claim one batch of due events and process it; return how many were claimed."""
        jobs = await self.inbox.claim(now=self.clock(), limit=self.batch_size, lease=self.lease)
        if not jobs:
            return 0
        now = self.clock()
        outcomes: list[Outcome] = []
        routed: list[Job] = []
        for job in jobs:
            if self.router.match(job.object_type, job.metric):
                routed.append(job)
            else:  # most events: nothing to run, nothing to parse
                outcomes.append(
                    Outcome(
                        seq=job.seq,
                        state=JobState.DONE,
                        attempts=job.attempts,
                        next_attempt_at=now,
                        last_error=None,
                    )
                )
        if routed:
            outcomes.extend(await asyncio.gather(*(self._process(job) for job in routed)))
        await self.inbox.finish(outcomes, now=self.clock())
        return len(jobs)

    async def run(self, stop: asyncio.Event) -> None:
        """Process until ``stop`` is set; the batch in progress is finished first."""
        while not stop.is_set():
            try:
                claimed = await self.run_once()
            except StoreUnavailable as exc:
                log.error("event=dispatch_store_error error=%s", str(exc))
                claimed = 0
            if claimed:
                continue
            self._wake.clear()
            waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(
                waiters, timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in waiters:
                waiter.cancel()

    async def _process(self, job: Job) -> Outcome:
        try:
            event = parse_event(job.body, received_at=job.received_at)
        except InvalidEvent as exc:  # stored by an older version with looser checks
            return Outcome(
                seq=job.seq,
                state=JobState.DEAD,
                attempts=job.attempts + 1,
                next_attempt_at=self.clock(),
                last_error=str(exc),
            )
        routes = [
            r
            for r in self.router.match(event.object_type, event.metric)
            if r.name not in job.succeeded
        ]
        results = tuple([await self._run(route, event) for route in routes])
        failures = [r for r in results if not r.ok]
        now = self.clock()
        if not failures:
            return Outcome(
                seq=job.seq,
                state=JobState.DONE,
                attempts=job.attempts + int(bool(routes)),
                next_attempt_at=now,
                last_error=None,
                results=results,
            )
        attempts = job.attempts + 1
        last_error = "; ".join(f"{r.handler}: {r.error}" for r in failures)
        if attempts >= self.retry.max_attempts:
            log.warning(
                "event=dead_letter event_id=%s attempts=%d error=%s",
                event.event_id,
                attempts,
                last_error,
            )
            return Outcome(
                seq=job.seq,
                state=JobState.DEAD,
                attempts=attempts,
                next_attempt_at=now,
                last_error=last_error,
                results=results,
            )
        delay = self.retry.delay(attempts, self.rng)
        log.info(
            "event=handler_retry event_id=%s attempts=%d delay_s=%.1f error=%s",
            event.event_id,
            attempts,
            delay,
            last_error,
        )
        return Outcome(
            seq=job.seq,
            state=JobState.RETRYING,
            attempts=attempts,
            next_attempt_at=now + delay,
            last_error=last_error,
            results=results,
        )

    async def _run(self, route: Route, event: Event) -> HandlerResult:
        async with self._limit:
            try:
                if route.is_async:
                    result = route.handler(event)
                else:
                    result = await asyncio.wait_for(
                        asyncio.to_thread(route.handler, event), self.handler_timeout
                    )
                if inspect.isawaitable(result):  # also catches async handlers wrapped oddly
                    await asyncio.wait_for(result, self.handler_timeout)
            except TimeoutError:
                return HandlerResult(route.name, f"timed out after {self.handler_timeout:g}s")
            except Exception as exc:
                return HandlerResult(route.name, _describe(exc))
        return HandlerResult(route.name)
