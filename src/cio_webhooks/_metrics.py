"""The ``/metrics`` page: Prometheus text, from what runs in this process and the store.

::

    store_lines(store)     store_up, the inbox gauges, the last event's time, each
                           sink's lag: the same on every process on one store
    MetricSources          what this process adds: the receiver's counters
                           (``app.create_app``), the policies' Track calls
                           (``Policies.metric_lines``), registered where they are built

``serve`` exports both; ``worker --port`` the store's and its policies'.  Every store
read is bounded by ``PROBE_TIMEOUT``: a scrape must not hang on a store that does not
answer, and a sick store takes its series away, never the page (``store_up 0`` says why).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable

from .settings import PROBE_TIMEOUT
from .sinks._status import metric_lines, sink_statuses
from .store import Store

__all__ = ["MetricSource", "MetricSources", "store_lines"]

log = logging.getLogger("cio_webhooks.metrics")

#: Lines of Prometheus text, read at each scrape.
MetricSource = Callable[[], Iterable[str]]


class MetricSources:
    """The in-process series of one service: each part that counts something
    registers a ``MetricSource`` here, and ``/metrics`` renders them all in order."""

    def __init__(self, *sources: MetricSource) -> None:
        self._sources = list(sources)

    def add(self, source: MetricSource) -> None:
        self._sources.append(source)

    def lines(self) -> list[str]:
        return [line for source in self._sources for line in source()]


async def store_lines(store: Store, *, now: float) -> list[str]:
    """The store's series: ``store_up``, ``inbox_*`` gauges, ``inbox_last_received_at``
    (unix seconds, absent while no event is stored) and the sinks' series."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            gauges = dataclasses.asdict(await store.gauges(now=now))
    except Exception as exc:  # metrics must not fail because the store is sick
        log.error("event=metrics_store_error error=%s", str(exc) or type(exc).__name__)
        gauges = {}
    # Without the store the inbox gauges are absent, and an alert on a growing
    # backlog sees no series at all: store_up says why, and can be alerted on.
    lines = ["# TYPE cio_webhooks_store_up gauge", f"cio_webhooks_store_up {1 if gauges else 0}"]
    if not gauges:
        return lines
    for name, number in gauges.items():
        lines.append(f"# TYPE cio_webhooks_inbox_{name} gauge")
        lines.append(f"cio_webhooks_inbox_{name} {number:g}")
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            last = await store.last_received_at()
    except Exception as exc:
        log.error("event=metrics_store_error error=%s", str(exc) or type(exc).__name__)
        last = None
    if last is not None:
        # Alert on ``time() - cio_webhooks_inbox_last_received_at``: every receiver's events.
        lines.append("# TYPE cio_webhooks_inbox_last_received_at gauge")
        lines.append(f"cio_webhooks_inbox_last_received_at {last:.3f}")
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            sinks = await sink_statuses(store, now=now)
    except Exception as exc:
        log.error("event=metrics_store_error error=%s", str(exc) or type(exc).__name__)
        sinks = []
    lines.extend(metric_lines(sinks, now=now))
    return lines
