"""The loader: follows the store in ``seq`` order and feeds each sink on its own.

Per sink, in a task of its own::

    lease the sink in the store (one loader per sink, across every worker)
    open the sink (create its tables) -- retried like a write
    loop: read up to batch_size events after the sink's cursor (the store's contract:
          a seq cursor never skips an event that commits late)
          -> rows (the sink's Privacy applied) -> sink.write(batch)
          -> advance the cursor in the store, compare-and-set from where the batch began

The write comes before the cursor, so a crash in between writes the batch again,
which sinks take idempotently.  The compare-and-set loses to ``sinks replay`` (a
rewind in between): the loader then reads from the rewound cursor.

A failing sink retries with exponential backoff (``RETRY_BASE`` doubling up to
``RETRY_MAX``, with jitter), records its error in the store (``sinks status``,
``/metrics``) and never holds up ingest or the other sinks: they run in their own
tasks, and a sink's write runs off the event loop (in its own thread or socket).
A sink added later starts at the oldest event the store still holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .._exceptions import SinkError, StoreUnavailable
from ..events import iso
from ..store import SinkState, Store, new_owner, owner_alive
from ._contract import Batch, Sink
from ._reads import ReadCache
from ._rows import delivery_rows, event_row

__all__ = ["IDLE_POLL", "LEASE", "RETRY_BASE", "RETRY_MAX", "Loader"]

log = logging.getLogger("cio_webhooks.sinks")

#: Seconds a loader holds a sink before another process may take it over.
LEASE = 30.0
#: First and longest wait after a failed write or open.
RETRY_BASE = 1.0
RETRY_MAX = 300.0
#: Longest wait between looks at the store while no events come.
IDLE_POLL = 1.0
#: First wait when a look finds nothing: doubled up to ``IDLE_POLL``.
_POLL = 0.05


@dataclass
class SinkProgress:
    """What this process's loader knows of one sink (the store has the rest)."""

    name: str
    rows: int = 0  # events written since start
    batches: int = 0
    errors: int = 0
    leased: bool = False


class Loader:
    """Feeds ``sinks`` from ``store``; ``run`` until ``stop``.

    ``lease``: seconds a loader holds each sink (renewed at a third of it); ``owner``
    names this process in the store (default: host, pid, random).  ``retry_base``/
    ``retry_max``: the backoff of a failing sink.  ``idle_poll``: the longest pause
    between looks while caught up.  ``clock`` gives unix seconds (``loaded_at``, the
    lease); pauses use the event loop's own clock.
    """

    def __init__(
        self,
        store: Store,
        sinks: Sequence[Sink],
        *,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
        lease: float = LEASE,
        retry_base: float = RETRY_BASE,
        retry_max: float = RETRY_MAX,
        idle_poll: float = IDLE_POLL,
    ) -> None:
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must differ: {names}")
        self.store = store
        self.sinks = list(sinks)
        self.clock = clock
        self.owner = owner or new_owner()
        self.lease = lease
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.idle_poll = idle_poll
        self.progress = {s.name: SinkProgress(s.name) for s in sinks}
        #: Events read and parsed once for all the sinks (they mostly want the same).
        self.reads = ReadCache(store)
        self._cursor: dict[str, int] = {}
        self._opened: set[str] = set()
        self._lease_until: dict[str, float] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Run every sink's loop until ``stop``; then close the sinks."""
        try:
            await asyncio.gather(*(self._follow(sink, stop) for sink in self.sinks))
        finally:
            await self._release()
            for sink in self.sinks:
                with contextlib.suppress(Exception):
                    await sink.close()

    async def catch_up(self) -> int:
        """Load every sink until it holds all the store holds now; return the stored
        events covered.  Raises like ``load``, and ``SinkError`` when another process
        holds a sink's lease.  For tests, scripts and one-off loads."""
        total = 0
        try:
            for sink in self.sinks:
                while held := await self.load(sink):
                    total += held
        finally:
            await self._release()
        return total

    async def _release(self) -> None:
        """Hand back the leases this loader holds, so that another process (the next
        `catch_up`, a worker after a clean shutdown) takes the sinks over at once."""
        now = self.clock()
        for name, until in list(self._lease_until.items()):
            if until > now:
                with contextlib.suppress(Exception):
                    await self.store.lease_sink(name, self.owner, now=now, until=now)
            self._lease_until[name] = 0.0
            self.progress[name].leased = False

    async def _follow(self, sink: Sink, stop: asyncio.Event) -> None:
        failures = 0
        idle = _POLL
        while not stop.is_set():
            wait: float
            try:
                if not await self._hold(sink):
                    wait = self.lease / 3  # another process loads this sink
                else:
                    held = await self._load(sink)
                    failures = 0
                    if held >= sink.batch_size:
                        continue  # behind: the next batch at once
                    idle = _POLL if held else min(idle * 2, self.idle_poll)
                    wait = max(sink.interval, idle) if held else idle
            except Exception as exc:
                # SinkError and StoreUnavailable are expected; anything else is a bug in
                # a sink, logged with its traceback, and retried all the same: one sink
                # must never take the loader (and the other sinks) down.
                if not isinstance(exc, SinkError | StoreUnavailable):
                    log.exception("event=sink_bug sink=%s", sink.name)
                failures += 1
                self.progress[sink.name].errors += 1
                wait = min(self.retry_base * 2 ** (failures - 1), self.retry_max)
                wait *= random.uniform(0.8, 1.2)
                log.error(
                    "event=sink_failed sink=%s failures=%d retry_in=%.1f error=%s",
                    sink.name,
                    failures,
                    wait,
                    str(exc),
                )
                with contextlib.suppress(StoreUnavailable, SinkError):
                    await self.store.sink_failed(sink.name, self.owner, str(exc), now=self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)

    async def _hold(self, sink: Sink) -> bool:
        """Take or renew this process's lease on ``sink``; register it the first time."""
        now = self.clock()
        if self._lease_until.get(sink.name, 0.0) - now > self.lease * 2 / 3:
            return True
        if sink.name not in self._cursor:
            before = await self._state(sink.name)
            state = await self.store.register_sink(sink.name, sink.url, now=now)
            self._cursor[sink.name] = state.seq
            if before is not None and before.url != sink.url and before.seq:
                # The same name now writes somewhere else (a new file, another
                # database): that place has none of the rows the cursor says are loaded.
                log.warning(
                    "event=sink_moved sink=%s was=%s now=%s reloading_from_seq=0",
                    sink.name,
                    before.url,
                    sink.url,
                )
                await self.store.rewind_sink(sink.name, 0, now=now)
                self._cursor[sink.name] = 0
        held = await self.store.lease_sink(sink.name, self.owner, now=now, until=now + self.lease)
        if not held:
            held = await self._take_from_the_dead(sink.name, now)
        progress = self.progress[sink.name]
        if held and not progress.leased:
            # Another loader may have moved the cursor while it held the sink.
            self._cursor[sink.name] = await self._stored_cursor(sink.name)
            log.info("event=sink_leased sink=%s owner=%s", sink.name, self.owner)
        progress.leased = held
        self._lease_until[sink.name] = now + self.lease if held else 0.0
        return held

    async def _write(self, sink: Sink, batch: Batch) -> None:
        """``sink.write(batch)``, renewing the lease while it runs: a write can outlast
        the lease (a warehouse answering slowly, BigQuery's jobs), and another loader
        taking the sink over meanwhile would write beside it."""
        renewing = asyncio.create_task(self._keep_lease(sink))
        try:
            await sink.write(batch)
        finally:
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)

    async def _keep_lease(self, sink: Sink) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            now = self.clock()
            if not await self.store.lease_sink(
                sink.name, self.owner, now=now, until=now + self.lease
            ):
                log.warning("event=sink_lease_lost sink=%s owner=%s", sink.name, self.owner)
                return
            self._lease_until[sink.name] = now + self.lease

    async def _take_from_the_dead(self, name: str, now: float) -> bool:
        """Take the lease of a loader that died on this host (SIGKILL, OOM) without
        waiting for it to run out: a worker restarted after a crash loads at once.
        Its lease counts as over at its own end time, so a live loader that renewed it
        meanwhile keeps it."""
        state = await self._state(name)
        if state is None or state.owner is None or state.lease_until is None:
            return False
        if owner_alive(state.owner):
            return False
        log.info("event=sink_lease_taken_over sink=%s dead_owner=%s", name, state.owner)
        return await self.store.lease_sink(
            name, self.owner, now=max(now, state.lease_until), until=now + self.lease
        )

    async def _state(self, name: str) -> SinkState | None:
        for state in await self.store.sink_states():
            if state.name == name:
                return state
        return None

    async def _stored_cursor(self, name: str) -> int:
        state = await self._state(name)
        return state.seq if state is not None else 0

    async def load(self, sink: Sink) -> int:
        """Write the next batch after ``sink``'s cursor and advance it; return how many
        stored events the batch covered (0: caught up).  Raises ``SinkError`` or
        ``StoreUnavailable``, the cursor then staying where it was; ``SinkError`` too
        when another process holds the sink's lease."""
        if not await self._hold(sink):
            raise SinkError(f"sink {sink.name} is being loaded by another process")
        return await self._load(sink)

    async def _load(self, sink: Sink) -> int:
        if sink.name not in self._opened:
            await sink.open()
            self._opened.add(sink.name)
        cursor = self._cursor.get(sink.name, 0)
        loaded_at = self.clock()
        stamp = iso(loaded_at)
        read = await self.reads.after(cursor, sink.batch_size)
        held = len(read)
        first = read[0].seq if read else cursor
        last = read[-1].seq if read else cursor
        last_received = read[-1].received_at if read else None
        rows = []
        for n, parsed in enumerate(read, 1):
            if parsed.event is None:
                # Stored by an older version with looser checks: skip it, never stall.
                log.warning(
                    "event=sink_skipped sink=%s seq=%d event_id=%s error=%s",
                    sink.name,
                    parsed.seq,
                    parsed.event_id,
                    parsed.error,
                )
                continue
            rows.append(event_row(parsed.event, stamp, sink.privacy, values=parsed.values))
            if n % 512 == 0:
                await asyncio.sleep(0)  # the receiver beside us answers in between
        if not held:
            # Caught up, or rewound by `sinks replay` in another process: the store's
            # cursor says which.
            stored_cursor = await self._stored_cursor(sink.name)
            if stored_cursor == cursor:
                return 0
            self._cursor[sink.name] = stored_cursor
            return await self._load(sink)
        # Folding a large batch takes tens of milliseconds: off the event loop.
        deliveries = (
            await asyncio.to_thread(delivery_rows, rows, stamp)
            if len(rows) > 2000
            else delivery_rows(rows, stamp)
        )
        batch = Batch(rows, deliveries, first, last, loaded_at)
        await self._write(sink, batch)
        moved = await self.store.advance_sink(
            sink.name,
            self.owner,
            from_seq=cursor,
            to_seq=last,
            last_received_at=last_received,
            now=self.clock(),
        )
        progress = self.progress[sink.name]
        if moved:
            self._cursor[sink.name] = last
            progress.rows += len(rows)
            progress.batches += 1
            # One line per batch (debug: two a second under load); bench/sink_lag.py
            # reads them to time each event from its ack to its row.
            log.debug(
                "event=sink_loaded sink=%s rows=%d from_seq=%d to_seq=%d",
                sink.name,
                len(rows),
                first,
                last,
            )
        else:
            # Rewound by `sinks replay`, or the lease was lost: start from the store's.
            self._cursor[sink.name] = await self._stored_cursor(sink.name)
            self._lease_until[sink.name] = 0.0
        return held
