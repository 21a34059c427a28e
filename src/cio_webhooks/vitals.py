"""The figures the dashboard shows and the alerts judge, each defined once.

Everything here is read from the store, so any process on it (a receiver, a worker,
``cio-webhooks ui`` on another host) sees the same figures::

    read_vitals(store, now)            Vitals: the receivers' last hour minute by minute
                                       (events/s, ack latency, 401s), the inbox gauges,
                                       the last event's time, each sink's lag
    email_rates(store, now, window)    EmailRates: email sent / delivered / bounced /
                                       spammed / unsubscribed in a rolling window, and
                                       the bounce, complaint and unsubscribe rates
    track_failures(store, now, window) failed Track API calls of the policies in a window

Ack latency comes from bucket counts (``store.ACK_BUCKETS``), so its quantiles are
estimates, interpolated inside a bucket as Prometheus' ``histogram_quantile`` does;
a quantile that falls past the last bound (Customer.io's 4 s timeout) reads as that
bound: "4 s or more".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ._exceptions import StoreUnavailable
from .sinks._status import SinkStatus, sink_statuses
from .store import ACK_BUCKETS, Gauges, Store, TrafficMinute, minute_of

__all__ = [
    "TRAFFIC_WINDOW",
    "EmailRates",
    "Vitals",
    "ack_quantile",
    "email_rates",
    "read_vitals",
    "track_failures",
]

#: Seconds of per-minute traffic a ``Vitals`` holds.
TRAFFIC_WINDOW = 3600.0
#: Failed Track calls looked at, at most, when counting them (newest first).
_FAILURES_READ = 10_000


def ack_quantile(buckets: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ack latency from per-bucket counts (``ack`` of a
    ``TrafficMinute``, or several summed); None when nothing was answered."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    lower = 0.0
    for count, upper in zip(buckets, (*ACK_BUCKETS, math.inf), strict=False):
        if count and seen + count >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * max(0.0, rank - seen) / count
        seen += count
        lower = upper if not math.isinf(upper) else lower
    return ACK_BUCKETS[-1]


def _summed(minutes: Iterable[TrafficMinute]) -> list[int]:
    total = [0] * (len(ACK_BUCKETS) + 1)
    for minute in minutes:
        for i, count in enumerate(minute.ack):
            total[i] += count
    return total


@dataclass(frozen=True)
class Vitals:
    """One reading of the service's health, at ``now``.

    ``traffic`` holds the minutes of the last ``TRAFFIC_WINDOW`` that any receiver
    recorded, oldest first (a minute with no request is absent).  ``gauges`` is None
    when the store did not answer them."""

    now: float
    traffic: tuple[TrafficMinute, ...]
    gauges: Gauges | None
    last_received_at: float | None
    sinks: tuple[SinkStatus, ...]

    def recent(self, minutes: float) -> list[TrafficMinute]:
        """The recorded minutes among the last ``minutes`` (the current one included)."""
        start = minute_of(self.now) - (math.ceil(minutes) - 1) * 60.0
        return [m for m in self.traffic if m.minute >= start]

    def rejected(self, minutes: float) -> int:
        """Requests refused for their signature (401) in the last ``minutes``."""
        return sum(m.rejected_signature for m in self.recent(minutes))

    def accepted(self, minutes: float) -> int:
        """Events accepted (stored or duplicate) in the last ``minutes``."""
        return sum(m.stored + m.duplicate for m in self.recent(minutes))

    def ack(self, q: float, minutes: float) -> float | None:
        """The ``q`` quantile of ack latency over the last ``minutes``, in seconds."""
        return ack_quantile(_summed(self.recent(minutes)), q)

    @property
    def since_last_event(self) -> float | None:
        """Seconds since the newest stored event was received (None: no event)."""
        if self.last_received_at is None:
            return None
        return max(0.0, self.now - self.last_received_at)

    def series(self) -> list[dict[str, float | None]]:
        """Per minute of the window, oldest first, every minute present (zero when
        none was recorded): ``t`` (the minute's start), ``events_per_s`` (accepted),
        ``rejected`` (401s), ``ack_p50`` and ``ack_p99`` (seconds, None when no
        request was answered)."""
        by_minute = {m.minute: m for m in self.traffic}
        end = minute_of(self.now)
        start = end - TRAFFIC_WINDOW + 60.0
        rows: list[dict[str, float | None]] = []
        t = start
        while t <= end:
            m = by_minute.get(t)
            if m is None:
                rows.append(
                    {"t": t, "events_per_s": 0.0, "rejected": 0, "ack_p50": None, "ack_p99": None}
                )
            else:
                rows.append(
                    {
                        "t": t,
                        "events_per_s": (m.stored + m.duplicate) / 60.0,
                        "rejected": m.rejected_signature,
                        "ack_p50": ack_quantile(m.ack, 0.5),
                        "ack_p99": ack_quantile(m.ack, 0.99),
                    }
                )
            t += 60.0
        return rows


async def read_vitals(store: Store, *, now: float) -> Vitals:
    """Read ``Vitals`` from ``store``.  Raises ``StoreUnavailable`` when the store does
    not answer the traffic read; the gauges alone may be missing (None)."""
    traffic = await store.traffic(since=minute_of(now) - TRAFFIC_WINDOW + 60.0)
    try:
        gauges: Gauges | None = await store.gauges(now=now)
    except StoreUnavailable:
        gauges = None
    return Vitals(
        now=now,
        traffic=tuple(traffic),
        gauges=gauges,
        last_received_at=await store.last_received_at(),
        sinks=tuple(await sink_statuses(store, now=now)),
    )


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole > 0 else None


@dataclass(frozen=True)
class EmailRates:
    """Email events received in a rolling window, and the rates that decide whether
    mail reaches inboxes.

    A rate is None when its denominator is 0.  Bounces are over the messages that
    reached a verdict (``max(sent, delivered + bounced)``: a workspace whose webhook
    does not send ``sent`` events still gets a rate); complaints (``spammed``) and
    unsubscribes are over ``delivered``, as Google and Yahoo count them.  These are
    event counts in the window, not per-delivery counts: the warehouse's
    ``deliveries`` (the Deliverability page) has those."""

    window: float
    sent: int
    delivered: int
    bounced: int
    spammed: int
    unsubscribed: int
    #: When the counts were read (the window's end); None when not known.
    read_at: float | None = None

    @property
    def attempted(self) -> int:
        return max(self.sent, self.delivered + self.bounced)

    @property
    def bounce_rate(self) -> float | None:
        return _rate(self.bounced, self.attempted)

    @property
    def complaint_rate(self) -> float | None:
        return _rate(self.spammed, self.delivered)

    @property
    def unsubscribe_rate(self) -> float | None:
        return _rate(self.unsubscribed, self.delivered)


async def email_rates(store: Store, *, now: float, window: float) -> EmailRates:
    """Email events received in the ``window`` seconds before ``now``."""
    counts: dict[tuple[str, str], int]
    counts = await store.kind_counts(since=now - window)

    def email(metric: str) -> int:
        return counts.get(("email", metric), 0)

    return EmailRates(
        read_at=now,
        window=window,
        sent=email("sent"),
        delivered=email("delivered"),
        bounced=email("bounced"),
        spammed=email("spammed"),
        unsubscribed=email("unsubscribed"),
    )


async def track_failures(store: Store, *, now: float, window: float) -> int:
    """Policy Track API calls that failed in the ``window`` seconds before ``now`` (the
    ledger's ``failed`` actions; counted among the newest 10,000 at most)."""
    return len(
        await store.ledger().recent(limit=_FAILURES_READ, status="failed", since=now - window)
    )
