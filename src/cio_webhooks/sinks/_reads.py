"""Stored events read and parsed once for every sink: the loader's read cache.

Each sink follows the store at its own pace, but they mostly ask for the same events
(a SQLite and a PostgreSQL sink both load what came in the last half second).  Reading
the bodies and parsing them is most of the loader's own CPU, and it runs in the
receiver's process, so it is done once: a read "after seq X" that returned events up
to seq Y covers the range (X, Y] for good (the store's contract: a seq cursor never
skips an event that commits late), and a later sink whose cursor falls in that range
takes its events from here.

Parsing yields to the event loop every ``_SLICE`` events, so that a large batch never
holds up the requests the receiver beside it is answering.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._exceptions import InvalidEvent
from ..events import Event, normalised_values, parse_event
from ..store import EventFilter, Operations

__all__ = ["Parsed", "ReadCache"]

log = logging.getLogger("cio_webhooks.sinks")

#: Events parsed between two yields to the event loop (a few milliseconds of work).
_SLICE = 256


@dataclass(frozen=True, slots=True)
class Parsed:
    """One stored event, parsed: ``event`` and ``values`` (``normalised_values``) are
    None for a body that no longer parses (stored by an older version)."""

    seq: int
    event_id: str
    received_at: float
    event: Event | None
    values: tuple[Any, ...] | None
    error: str | None = None


@dataclass(frozen=True)
class _Range:
    after: int  # the events with after < seq <= upto, all of them
    upto: int
    parsed: Sequence[Parsed]


class ReadCache:
    """The last few ranges read, at most ``keep`` events in all."""

    def __init__(self, store: Operations, *, keep: int = 10_000) -> None:
        self.store = store
        self.keep = keep
        self._ranges: list[_Range] = []
        self.parsed = 0  # events read and parsed (a test sees the sharing)

    async def after(self, cursor: int, limit: int) -> list[Parsed]:
        """Up to ``limit`` stored events after ``cursor``, in seq order."""
        out: list[Parsed] = []
        for cached in reversed(self._ranges):
            if cached.after <= cursor < cached.upto:
                out = [p for p in cached.parsed if p.seq > cursor][:limit]
                cursor = out[-1].seq if out else cursor
                break
        if len(out) < limit:
            # What came in since the cached range: read and parse only that.
            fresh = await self._read(cursor, limit - len(out))
            if fresh:
                self._remember(_Range(cursor, fresh[-1].seq, fresh))
            out.extend(fresh)
        return out

    async def _read(self, cursor: int, limit: int) -> list[Parsed]:
        out: list[Parsed] = []
        where = EventFilter(after_seq=cursor, limit=limit)
        async for stored in self.store.iter_events(where, batch=limit):
            try:
                event = parse_event(
                    stored.body, received_at=stored.received_at, backfilled=stored.backfilled
                )
            except InvalidEvent as exc:
                out.append(
                    Parsed(stored.seq, stored.event_id, stored.received_at, None, None, str(exc))
                )
            else:
                values = normalised_values(event)
                out.append(Parsed(stored.seq, stored.event_id, stored.received_at, event, values))
            self.parsed += 1
            if len(out) % _SLICE == 0:
                await asyncio.sleep(0)
        return out

    def _remember(self, fresh: _Range) -> None:
        self._ranges.append(fresh)
        total = sum(len(r.parsed) for r in self._ranges)
        while len(self._ranges) > 1 and total > self.keep:
            total -= len(self._ranges.pop(0).parsed)
        if total > self.keep:  # one read larger than the cache: not kept
            self._ranges.clear()
