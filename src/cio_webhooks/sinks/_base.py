"""The ``Sink`` contract."""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["Sink"]


class Sink(Protocol):
    """A consumer that copies every stored event somewhere else.

    A sink follows the inbox in arrival (``seq``) order, keeps its own cursor
    beside its rows (same transaction), and writes rows idempotently by
    ``event_id``, so that a crash replays at most one batch, harmlessly.
    """

    async def load(self) -> int:
        """Copy the next batch; return how many events it held (0: caught up)."""
        ...

    async def run(self, stop: asyncio.Event) -> None:
        """``load`` until ``stop`` is set, pausing briefly whenever caught up."""
        ...

    async def close(self) -> None: ...
