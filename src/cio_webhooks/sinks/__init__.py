"""Warehouse sinks: where every stored event lands as one normalised row.

A sink follows the inbox in arrival (``seq``) order and keeps its own cursor
beside its rows, written in the same transaction, so a crash replays at most
the last batch and replays are harmless (rows are idempotent by ``event_id``).
A sink never writes to the inbox, so it cannot slow down ingest.
"""

from ._base import Sink, WarehouseLoader
from .sqlite import SQLiteWarehouse

__all__ = ["SQLiteWarehouse", "Sink", "WarehouseLoader"]
