"""A receiver's answers, minute by minute, written to the store for every process to see.

The receiver only counts (``Counters``, and ack latency per bucket in ``AckTimes``):
nothing on the request path touches the store for this.  ``TrafficMeter`` looks at
those running counts every few seconds, adds what changed to the current minute, and
writes that minute's totals with ``Watch.record_traffic`` under a name of its own
(``host:pid:token``), so the dashboard and the alerts see every receiver on the store
summed, and a write that is retried or repeated changes nothing.

A minute's counts are attributed at flush time: a request answered a few seconds
before a minute ends may count in the next one.  A receiver that dies loses at most
its last few seconds of counts; one whose store is down keeps its minutes in memory
(the last hour) and writes them when the store is back.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import Callable

from .settings import TRAFFIC_FLUSH_EVERY
from .store import ACK_BUCKETS, TRAFFIC_COUNTS, TrafficMinute, Watch, minute_of, new_owner

__all__ = ["AckTimes", "TrafficMeter"]

log = logging.getLogger("cio_webhooks.traffic")

#: Minutes not yet written are kept this long at most (a store down for longer loses
#: the oldest: the dashboard shows an hour).
_KEEP_MINUTES = 60


class AckTimes:
    """Ack latency, as a Prometheus histogram counts it: requests per bucket of
    ``ACK_BUCKETS`` (the last past 4 s), and the sum of their seconds."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(ACK_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(ACK_BUCKETS, seconds)] += 1
        self.total += seconds


class _Minute:
    __slots__ = ("ack", "counts")

    def __init__(self, buckets: int) -> None:
        self.counts = dict.fromkeys(TRAFFIC_COUNTS, 0)
        self.ack = [0] * buckets


class TrafficMeter:
    """Turns a receiver's running counts into ``TrafficMinute`` s in the store.

    ``counts`` returns the receiver's outcome counters (``Counters`` as a dict);
    ``acks`` its ``AckTimes``."""

    def __init__(
        self,
        counts: Callable[[], dict[str, int]],
        acks: AckTimes,
        *,
        clock: Callable[[], float] = time.time,
        every: float = TRAFFIC_FLUSH_EVERY,
    ) -> None:
        self.counts = counts
        self.acks = acks
        self.clock = clock
        self.every = every
        self.process = new_owner()
        self._seen = dict.fromkeys(TRAFFIC_COUNTS, 0)
        self._seen_acks = [0] * len(acks.counts)
        self._minutes: dict[float, _Minute] = {}
        self._written: set[float] = set()

    def take(self) -> None:
        """Add what the counters gained since the last look to the current minute.  A
        look that finds nothing new adds no minute: an idle receiver writes nothing."""
        now = self.counts()
        counts = {name: now.get(name, 0) - self._seen[name] for name in TRAFFIC_COUNTS}
        acks = [total - seen for total, seen in zip(self.acks.counts, self._seen_acks, strict=True)]
        if not any(counts.values()) and not any(acks):
            return
        minute = minute_of(self.clock())
        into = self._minutes.setdefault(minute, _Minute(len(acks)))
        for name, delta in counts.items():
            into.counts[name] += delta
            self._seen[name] += delta
        for i, delta in enumerate(acks):
            into.ack[i] += delta
        self._seen_acks = list(self.acks.counts)
        self._written.discard(minute)
        for old in sorted(self._minutes)[:-_KEEP_MINUTES]:
            del self._minutes[old]
            self._written.discard(old)

    def pending(self) -> list[TrafficMinute]:
        """The minutes whose totals the store has not seen yet, oldest first."""
        return [
            TrafficMinute(minute=minute, ack=tuple(m.ack) if any(m.ack) else (), **m.counts)
            for minute, m in sorted(self._minutes.items())
            if minute not in self._written
        ]

    async def flush(self, store: Watch) -> None:
        """Take the counts and write the minutes that changed; raises what the store
        raises (the minutes stay pending)."""
        self.take()
        if minutes := self.pending():
            await store.record_traffic(self.process, minutes)
            self._written.update(m.minute for m in minutes)
        # Only the current minute can still change: forget the others once written.
        current = max(self._minutes, default=None)
        for minute in [m for m in self._written if m != current]:
            del self._minutes[minute]
            self._written.discard(minute)

    async def run(self, store: Watch, stop: asyncio.Event) -> None:
        """Flush every ``every`` seconds until ``stop``, then once more."""
        failing = False
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every)
            try:
                await self.flush(store)
            except Exception as exc:  # the store is down: keep counting, write later
                if not failing:
                    log.warning(
                        "event=traffic_not_recorded error=%s",
                        (str(exc) or type(exc).__name__)[:300],
                    )
                failing = True
            else:
                failing = False
