"""The ``Sink`` contract and the loop that feeds a sink from the inbox."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Protocol

from .._exceptions import CioWebhooksError, InvalidEvent
from ..dispatcher import Clock
from ..events import Event, parse_event
from ..inbox import EventFilter, Inbox

__all__ = ["Sink", "WarehouseLoader"]

log = logging.getLogger("cio_webhooks.sinks")


class Sink(Protocol):
    async def cursor(self) -> int:
        """The highest inbox ``seq`` already written."""
        ...

    async def write(self, events: Sequence[Event], *, cursor: int, loaded_at: float) -> None:
        """Write ``events`` idempotently and move the cursor to ``cursor``, atomically."""
        ...

    async def close(self) -> None: ...


class WarehouseLoader:
    """Copies inbox events to a sink in batches of up to ``batch_size``."""

    def __init__(
        self,
        inbox: Inbox,
        sink: Sink,
        *,
        batch_size: int = 1000,
        poll_interval: float = 0.05,
        clock: Clock = time.time,
    ) -> None:
        self.inbox = inbox
        self.sink = sink
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.clock = clock

    async def run_once(self) -> int:
        """Write the next batch; return the number of inbox rows consumed."""
        cursor = await self.sink.cursor()
        events: list[Event] = []
        last = cursor
        consumed = 0
        async for stored in self.inbox.iter_events(
            EventFilter(after_seq=cursor, limit=self.batch_size), batch=self.batch_size
        ):
            last = stored.seq
            consumed += 1
            try:
                events.append(
                    parse_event(
                        stored.body, received_at=stored.received_at, backfilled=stored.backfilled
                    )
                )
            except InvalidEvent as exc:  # the receiver validated it; only old rows can fail
                log.warning("event=warehouse_skip seq=%d reason=%r", stored.seq, str(exc))
        if last == cursor:
            return 0
        await self.sink.write(events, cursor=last, loaded_at=self.clock())
        return consumed

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                moved = await self.run_once()
            except CioWebhooksError as exc:
                log.error("event=warehouse_error error=%r", str(exc))
                moved = 0
            if not moved:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_interval)
