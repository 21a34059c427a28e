"""Running handlers for stored events, with durable retries and a dead-letter state.

The dispatcher claims due events from the inbox and processes each one on its
own: it runs every handler whose pattern matches and that has not yet succeeded
for that event, and records that event's outcome as soon as its handlers are
done, while it goes on claiming others (at most ``concurrency`` events in
flight).  A slow handler delays only its own event, and retries come due on
schedule.  Nothing about a retry lives in memory: a failed event gets
``next_attempt_at`` in the store, so retries survive restarts.  After
``RetryPolicy.max_attempts`` the event becomes ``DEAD`` with its last error
(``cio-webhooks dlq`` lists, retries or discards it).

A claim counts as an attempt, so an event whose handler kills the process is
dead-lettered after ``max_attempts`` claims rather than retried every lease
forever.  A claim carries a token and its outcome is recorded only while the
claim holds: an operator's ``replay``, ``dlq retry`` or ``dlq discard`` made
while the handlers run wins over their result.

Sync handlers run on the dispatcher's own bounded pool of threads, never on
asyncio's default executor, which the inbox's reads use: handlers that block
cannot delay a read.  A handler's timeout counts from when it starts.

Leases are short and kept alive by a heartbeat (see ``Dispatcher``): an event
claimed by a worker that died is claimed again after ``DEFAULT_LEASE`` seconds,
however long its handlers may take on a live worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from ._exceptions import InvalidEvent, StoreUnavailable
from .events import Event, parse_event
from .handlers import Route, Router
from .settings import (
    DEFAULT_CONCURRENCY,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_HANDLER_TIMEOUT,
    DEFAULT_LEASE,
    RetryPolicy,
)
from .store import HandlerResult, Job, JobState, Outcome, Queue

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_HANDLER_TIMEOUT",
    "DEFAULT_LEASE",
    "Clock",
    "Dispatcher",
    "HandlerThreads",
    "RetryPolicy",
]

log = logging.getLogger("cio_webhooks.dispatcher")

Clock = Callable[[], float]
T = TypeVar("T")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}"[:2000] if text else name


class _TimedOut(Exception):
    """The dispatcher's own deadline for a handler passed (not a TimeoutError the
    handler raised itself)."""


class _StillRunning(Exception):
    """A sync handler's call for this event from an earlier attempt has not returned."""


class HandlerThreads:
    """A bounded pool of daemon threads for sync handlers.

    Not ``concurrent.futures.ThreadPoolExecutor``: that one joins its threads when
    the interpreter exits, so one handler stuck past the drain timeout would keep
    the process from stopping.  A thread is started only when none is idle, up to
    ``size``, and ends after ``idle_exit`` seconds without work.
    """

    idle_exit = 60.0

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a handler pool needs at least one thread")
        self.size = size
        self._calls: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads = 0

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._calls.put((future, fn))
        with self._lock:
            if not self._idle.acquire(blocking=False) and self._threads < self.size:
                self._threads += 1
                name = f"cio-handler-{self._threads}"
                threading.Thread(target=self._work, name=name, daemon=True).start()
        return future

    def _work(self) -> None:
        while True:
            try:
                future, fn = self._calls.get(timeout=self.idle_exit)
            except queue.Empty:
                with self._lock:
                    # Still counted idle: no submit is counting on this thread.
                    if self._idle.acquire(blocking=False):
                        self._threads -= 1
                        return
                continue
            if future.set_running_or_notify_cancel():
                try:
                    result = fn()
                except BaseException as exc:  # SystemExit too: the future must settle
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, fn  # do not keep the last event alive while idle
            self._idle.release()


#: The longest ``Retry-After`` the dispatcher honours: a day.
MAX_RETRY_AFTER = 86400.0


def _retry_after(exc: BaseException) -> float | None:
    """The wait a handler's error carries as ``retry_after`` (as the Customer.io
    clients' errors do), when it is a sane number of seconds."""
    value = getattr(exc, "retry_after", None)
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return min(float(value), MAX_RETRY_AFTER)  # inf becomes a day; nan fails the test
    return None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Dispatcher:
    """Runs the ``router``'s handlers for events in ``store``.

    ``clock`` and ``rng`` are injected so tests can drive time and jitter.  At most
    ``concurrency`` events are in flight; each of its handlers gets
    ``handler_timeout`` seconds from when it starts.  ``drain_timeout`` bounds how
    long ``run`` waits for the events in flight once told to stop.

    Leases and heartbeat: a claim hides an event from other claims for ``lease``
    seconds (``DEFAULT_LEASE``).  While events are in flight, every ``heartbeat``
    seconds (a third of the lease) one ``Queue.extend`` call pushes the lease of
    every claim still held to now + ``lease``: an event stays claimed however long
    its handlers run one after another, and a dead worker's events are due again
    one lease after its last heartbeat.  A claim that ``extend`` finds gone
    (``requeue``, ``discard``, a claim after the lease ran out) is no longer
    extended; its handlers run on, and ``finish`` drops their outcome (fencing).

    What the heartbeat covers is the claim, from ``claim`` to the recorded outcome:

    - A sync handler runs on its own thread, so it cannot stop the heartbeat (which
      runs on the event loop): a blocked handler keeps its claim until its
      ``handler_timeout``.
    - A sync handler that outlives its timeout cannot be stopped.  Its event's
      outcome (timed out, retried) is recorded, which ends the claim: it is not
      extended while the thread runs on, since a handler that never returns would
      hold its event for good, never dead-lettered.  The thread keeps its slot, and
      this dispatcher does not start that (event, handler) again while it runs;
      another worker may run the retry meanwhile, as before leases were short.
    - Code that blocks the event loop itself (an ``async`` handler calling blocking
      code) stops the heartbeat too: past ``lease`` seconds, another worker may
      claim the event.  The lease must exceed the longest such stall.
    """

    def __init__(
        self,
        store: Queue,
        router: Router,
        *,
        retry: RetryPolicy | None = None,
        clock: Clock = time.time,
        rng: random.Random | None = None,
        batch_size: int = 200,
        concurrency: int = DEFAULT_CONCURRENCY,
        handler_timeout: float = DEFAULT_HANDLER_TIMEOUT,
        lease: float = DEFAULT_LEASE,
        heartbeat: float | None = None,
        poll_interval: float = 0.05,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    ) -> None:
        heartbeat = lease / 3 if heartbeat is None else heartbeat
        if not 0 < heartbeat < lease:
            raise ValueError("the heartbeat must come more often than the lease runs out")
        self.store = store
        self.router = router
        self.retry = retry or RetryPolicy()
        self.clock = clock
        self.rng = rng or random.Random()
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.handler_timeout = handler_timeout
        #: Seconds a claim holds without a heartbeat.
        self.lease = lease
        #: Seconds between two extensions of the claims in flight.
        self.heartbeat = heartbeat
        self.poll_interval = poll_interval
        self._idle_wait = poll_interval
        self.drain_timeout = drain_timeout
        self._threads = HandlerThreads(concurrency)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._latest: dict[int, asyncio.Task[None]] = {}  # seq -> its newest task
        # The claim each task in flight holds, while the heartbeat still extends it.
        self._held: dict[asyncio.Task[None], Job] = {}
        self._beating: asyncio.Task[None] | None = None
        # Threads of sync handlers that timed out but are still running: each keeps
        # a slot, so that a sync handler always finds a free thread when it starts.
        self._stuck_threads = 0
        self._stuck: set[tuple[str, str]] = set()  # (event_id, handler) still running
        self._alone: asyncio.Task[None] | None = None  # an interrupted event, run alone
        self._suspects = False  # interrupted events are due (see _claim)
        self._next_suspect_check = 0.0
        self._wake = asyncio.Event()
        self._freed = asyncio.Event()

    def wake(self) -> None:
        """Tell an idle dispatcher that new events were stored."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        """Events being processed right now."""
        return len(self._in_flight)

    @property
    def heartbeating(self) -> bool:
        """True while some claim in flight is being extended."""
        return self._beating is not None

    async def extend_claims(self) -> int:
        """One heartbeat: push the lease of every claim in flight still held to now +
        ``lease``, in one ``extend`` call; stop extending those no longer held.
        Returns how many still hold.  ``run`` calls it every ``heartbeat`` s."""
        held = dict(self._held)
        if not held:
            return 0
        until = self.clock() + self.lease
        kept = await self.store.extend(list(held.values()), until=until)
        if kept < len(held):
            # Rare (a requeue, a discard, a stall past the lease): find which, one by
            # one, so the others keep their claim.
            kept = 0
            for task, job in held.items():
                if await self.store.extend([job], until=until):
                    kept += 1
                elif self._held.get(task) is job:  # lost, not finished meanwhile
                    del self._held[task]
                    log.info(
                        "event=claim_lost event_id=%s note='requeued, discarded or claimed"
                        " again while its handlers run: their outcome will be dropped'",
                        job.event_id,
                    )
            if not self._held:
                self._stop_heartbeat()
        return kept

    async def _heartbeat(self) -> None:
        """Extend the claims in flight every ``heartbeat`` s, until none is left
        (``_stop_heartbeat`` cancels it then).  A store error is logged and the next
        beat tries again: two may fail before a lease runs out."""
        while self._held:
            await asyncio.sleep(self.heartbeat)
            try:
                await self.extend_claims()
            except StoreUnavailable as exc:
                log.error("event=heartbeat_store_error error=%s", str(exc))
            except Exception:  # a heartbeat that died would let every lease run out
                log.exception("event=heartbeat_failed")

    def _start_heartbeat(self) -> None:
        if self._beating is None:
            self._beating = asyncio.create_task(self._heartbeat(), name="dispatch-heartbeat")

    def _let_go(self, task: asyncio.Task[None] | None) -> None:
        """Extend ``task``'s claim no more (its outcome is being recorded, or it ended)."""
        if task is not None:
            self._held.pop(task, None)
        if not self._held:
            self._stop_heartbeat()

    def _stop_heartbeat(self) -> None:
        if self._beating is not None:
            # Forgotten at once: a claim made from now on starts a new heartbeat.
            self._beating.cancel()
            self._beating = None

    def _free_slots(self) -> int:
        return self.concurrency - len(self._in_flight) - self._stuck_threads

    async def run_once(self) -> int:
        """Claim one batch of due events (as many as there are free slots) and
        process it to the end; return how many due events it took care of (those
        no handler wants included).  For tests and tools: ``run`` is the service's
        loop."""
        claimed, started = await self._claim()
        if started:
            await asyncio.gather(*started)
        return claimed

    async def run(self, stop: asyncio.Event) -> None:
        """Process until ``stop`` is set, then drain: claim nothing more and return
        once the events in flight are finished, or after ``drain_timeout``.  Events
        still running then are left claimed: nothing is recorded for them, and they
        are retried when their lease expires."""
        try:
            while not stop.is_set():
                self._wake.clear()
                self._freed.clear()
                try:
                    claimed, _ = await self._claim()
                except StoreUnavailable as exc:
                    log.error("event=dispatch_store_error error=%s", str(exc))
                    claimed = 0
                if claimed:
                    self._idle_wait = self.poll_interval
                else:
                    await self._idle(stop, self._idle_wait)
                    # Nothing found: look again later and later, up to what the store
                    # advises (it wakes us for new work), so an idle worker costs no CPU.
                    limit = max(self.poll_interval, self.store.idle_poll)
                    self._idle_wait = min(self._idle_wait * 2, limit)
        finally:
            await self._drain()

    async def _idle(self, stop: asyncio.Event, timeout: float) -> None:
        """Wait for new events (the store says, or ``wake``), a freed slot, ``stop``
        or ``timeout``."""
        signals = (self._wake, self._freed, stop)
        waiters: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(signal.wait()) for signal in signals
        ]
        waiters.append(asyncio.ensure_future(self.store.wait_for_work(timeout)))
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _drain(self) -> None:
        if not self._in_flight:
            return
        log.info("event=dispatch_draining in_flight=%d", len(self._in_flight))
        _, pending = await asyncio.wait(set(self._in_flight), timeout=self.drain_timeout)
        if not pending:
            log.info("event=dispatch_drained")
            return
        log.warning(
            "event=drain_timeout in_flight=%d drain_timeout_s=%g"
            " note='left claimed: retried when their lease expires'",
            len(pending),
            self.drain_timeout,
        )
        for task in pending:
            task.cancel()

    async def _claim(self) -> tuple[int, list[asyncio.Task[None]]]:
        """Claim what the free slots allow and start a task for each event.  The
        inbox records the events no handler wants as done in the same write (most
        events, when the receiver runs in another process): they need no slot.

        An event whose last claim never finished may be the one whose handler killed
        the process: it runs alone, with nothing else in flight, so that a crash it
        causes again costs an attempt to it and not to the events beside it."""
        if self._alone is not None and not self._alone.done():
            return 0, []
        if await self._interrupted_due():
            if self._in_flight:
                return 0, []  # let them finish; run() waits for a freed slot
            claimed, started = await self._claim_some(limit=1, interrupted=True)
            if claimed:
                self._alone = started[0] if started else None
                return claimed, started
            self._suspects = False
        limit = min(self.batch_size, self._free_slots())
        if limit <= 0:
            return 0, []
        return await self._claim_some(limit=limit, interrupted=False)

    async def _interrupted_due(self) -> bool:
        """Whether interrupted events are due, read at most once a second."""
        now = time.monotonic()
        if now >= self._next_suspect_check:
            self._next_suspect_check = now + 1.0
            self._suspects = await self.store.interrupted_due(now=self.clock())
        return self._suspects

    async def _claim_some(
        self, *, limit: int, interrupted: bool
    ) -> tuple[int, list[asyncio.Task[None]]]:
        skipped = 0

        def wanted(object_type: str, metric: str, backfilled: bool) -> bool:
            nonlocal skipped
            if self.router.match(object_type, metric, backfilled=backfilled):
                return True
            skipped += 1
            return False

        jobs = await self.store.claim(
            now=self.clock(), limit=limit, lease=self.lease, wanted=wanted, interrupted=interrupted
        )
        # Every job is one ``wanted`` said yes to; ``_process`` matches the routes
        # anyway (and records "nothing to run" should the router have changed).
        return len(jobs) + skipped, [self._start(job) for job in jobs]

    def _start(self, job: Job) -> asyncio.Task[None]:
        # An event replayed while it runs is claimed again: its new run waits for
        # the old one, so that one process never runs one event's handlers twice at once.
        previous = self._latest.get(job.seq)
        task = asyncio.create_task(self._handle(job, previous), name=f"event-{job.event_id}")
        self._latest[job.seq] = task
        self._in_flight.add(task)
        self._held[task] = job
        self._start_heartbeat()

        def finished(task: asyncio.Task[None]) -> None:
            self._in_flight.discard(task)
            self._let_go(task)
            if self._latest.get(job.seq) is task:
                del self._latest[job.seq]
            self._freed.set()

        task.add_done_callback(finished)
        return task

    async def _handle(self, job: Job, previous: asyncio.Task[None] | None) -> None:
        """Process one job and record its outcome; never raises (but may be cancelled)."""
        if previous is not None:
            await asyncio.wait([previous])
        try:
            outcome = await self._process(job)
            # Recorded now: a heartbeat from here on could only find the claim gone.
            self._let_go(asyncio.current_task())
            recorded = await self.store.finish([outcome], now=self.clock())
        except StoreUnavailable as exc:
            log.error("event=dispatch_store_error event_id=%s error=%s", job.event_id, str(exc))
            return  # still claimed: retried when the lease expires
        except Exception:
            log.exception("event=dispatch_failed event_id=%s", job.event_id)
            return
        if not recorded:
            log.info(
                "event=outcome_superseded event_id=%s"
                " note='replayed, discarded or claimed again while its handlers ran'",
                job.event_id,
            )

    def _nothing_to_run(self, job: Job) -> Outcome:
        return Outcome(
            seq=job.seq,
            state=JobState.DONE,
            attempts=job.attempts - 1,  # the claim counted an attempt; nothing ran
            next_attempt_at=self.clock(),
            last_error=None,
            token=job.token,
        )

    async def _process(self, job: Job) -> Outcome:
        if job.interrupted:
            log.warning(
                "event=claim_expired event_id=%s attempts=%d lease_s=%g"
                " note='the previous attempt did not finish: the process stopped or the"
                " lease expired'",
                job.event_id,
                job.attempts - 1,
                self.lease,
            )
        try:
            event = parse_event(job.body, received_at=job.received_at, backfilled=job.backfilled)
        except InvalidEvent as exc:  # stored by an older version with looser checks
            return Outcome(
                seq=job.seq,
                state=JobState.DEAD,
                attempts=job.attempts,
                next_attempt_at=self.clock(),
                last_error=str(exc),
                token=job.token,
            )
        routes = [
            r
            for r in self.router.match(event.object_type, event.metric, backfilled=event.backfilled)
            if r.name not in job.succeeded
        ]
        if not routes:
            return self._nothing_to_run(job)
        if job.attempts > self.retry.max_attempts:
            # Only claims that never finished get here: every one of them counted.
            used = job.attempts - 1
            last_error = (
                f"gave up after {used} attempts: the last did not finish"
                " (the process stopped or its lease expired)"
            )
            log.warning(
                "event=dead_letter event_id=%s attempts=%d error=%s",
                event.event_id,
                used,
                last_error,
            )
            return Outcome(
                seq=job.seq,
                state=JobState.DEAD,
                attempts=used,
                next_attempt_at=self.clock(),
                last_error=last_error,
                token=job.token,
            )
        results = tuple([await self._run(route, event) for route in routes])
        failures = [r for r in results if not r.ok]
        now = self.clock()
        if not failures:
            return Outcome(
                seq=job.seq,
                state=JobState.DONE,
                attempts=job.attempts,
                next_attempt_at=now,
                last_error=None,
                token=job.token,
                results=results,
            )
        attempts = job.attempts
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
                token=job.token,
                results=results,
            )
        delay = self.retry.delay(attempts, self.rng)
        # A server that said when to come back (429 + Retry-After) is not asked sooner:
        # retrying earlier only spends the event's attempts.
        asked = [r.retry_after for r in failures if r.retry_after is not None]
        delay = max([delay, *asked])
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
            token=job.token,
            results=results,
        )

    async def _run(self, route: Route, event: Event) -> HandlerResult:
        try:
            result: object
            if route.is_async:
                result = route.handler(event)
            else:
                result = await self._call_in_thread(route, event)
            if inspect.isawaitable(result):  # also catches async handlers wrapped oddly
                await self._within_timeout(result)
        except _StillRunning:
            return HandlerResult(
                route.name,
                "its call of an earlier attempt is still running (a sync handler cannot be"
                " interrupted): not started again",
            )
        except _TimedOut:
            log.warning(
                "event=handler_timeout handler=%s event_id=%s timeout_s=%g stuck_threads=%d",
                route.name,
                event.event_id,
                self.handler_timeout,
                self._stuck_threads,  # sync handlers still running after their timeout
            )
            return HandlerResult(route.name, f"timed out after {self.handler_timeout:g}s")
        except Exception as exc:
            # The traceback goes to the log; the short error is the event's last_error.
            log.error(
                "event=handler_failed handler=%s event_id=%s error=%s",
                route.name,
                event.event_id,
                _describe(exc),
                exc_info=exc,
            )
            return HandlerResult(route.name, _describe(exc), retry_after=_retry_after(exc))
        return HandlerResult(route.name)

    async def _within_timeout(self, awaitable: Any) -> Any:
        deadline = asyncio.timeout(self.handler_timeout)
        try:
            async with deadline:
                return await awaitable
        except TimeoutError:
            if deadline.expired():
                raise _TimedOut from None
            raise

    async def _call_in_thread(self, route: Route, event: Event) -> object:
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()

        def call() -> object:
            loop.call_soon_threadsafe(_resolve, started)
            return route.handler(event)

        key = (event.event_id, route.name)
        if key in self._stuck:
            # Its earlier call is still running: a second thread for the same call
            # would take another slot at every retry, until none is left for anyone.
            raise _StillRunning
        future = self._threads.submit(call)
        # At once: a slot is only free when a thread is (see _stuck_threads).  The
        # timeout counts from here, not from the submission.
        await started
        try:
            return await self._within_timeout(asyncio.wrap_future(future))
        except _TimedOut:
            self._hold_slot_until_done(key, future, loop)
            raise

    def _hold_slot_until_done(
        self, key: tuple[str, str], future: Future[Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        """A timed-out sync handler cannot be stopped: its thread keeps a slot until it
        returns, and the same (event, handler) is not started again meanwhile."""
        self._stuck_threads += 1
        self._stuck.add(key)

        def release() -> None:
            self._stuck_threads -= 1
            self._stuck.discard(key)
            self._freed.set()

        def returned(_: Future[Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(release)

        future.add_done_callback(returned)
