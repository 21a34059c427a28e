"""The sink contract: what the loader hands a warehouse, and what it expects back.

A sink only writes.  The loader (``_loader``) reads committed events from the store in
``seq`` order, turns them into rows (``_rows``, with the sink's ``Privacy`` applied),
calls ``write`` and only then moves the sink's cursor in the store.  A crash between
the two writes the same batch again, so ``write`` must be idempotent: one row per
``event_id`` however often a batch comes, and ``deliveries`` merged with
``merge_delivery`` (which is idempotent too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ._rows import DeliveryRow, EventRow, Privacy

__all__ = ["Batch", "Sink"]


@dataclass(frozen=True, slots=True)
class Batch:
    """Consecutive stored events, as rows.

    ``events`` are in ``EVENT_COLUMNS`` order with unique ``event_id``s; ``deliveries``
    in ``DELIVERY_COLUMNS`` order, one per ``delivery_id`` of these events, already
    folded over the batch (merge each with the row the sink holds).  ``first_seq``..
    ``last_seq`` is the range of store ``seq`` the batch covers (events the loader
    skipped as unreadable included); ``loaded_at`` is the loader's clock at read time.
    """

    events: Sequence[EventRow]
    deliveries: Sequence[DeliveryRow]
    first_seq: int
    last_seq: int
    loaded_at: float


class Sink(Protocol):
    """A warehouse the loader writes to."""

    #: The sink's cursor key in the store (the URL's ``?name=``, else its kind).
    name: str
    #: The URL to show, with every secret masked.
    url: str
    #: Personal-data options the loader applies to the rows it hands over.
    privacy: Privacy
    #: The most events one ``write`` takes.
    batch_size: int
    #: Seconds between writes while events keep coming: large for warehouses where
    #: every write is a job (BigQuery), small for local ones.
    interval: float

    async def open(self) -> None:
        """Create what is missing (tables, views, directories); idempotent.  Raise
        ``SinkError`` when the warehouse cannot be reached."""
        ...

    async def write(self, batch: Batch) -> None:
        """Upsert ``batch.events`` by ``event_id`` and merge ``batch.deliveries`` into
        ``deliveries``, all or nothing where the warehouse allows.  Raise ``SinkError``
        on failure; the loader calls again with the same or a larger batch."""
        ...

    async def close(self) -> None: ...
