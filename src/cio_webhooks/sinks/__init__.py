"""Warehouse sinks: where every stored event lands as one normalised row.

A sink never writes to the inbox, so it cannot slow down ingest.
"""

from ._base import Sink
from .sqlite import SQLiteWarehouse

__all__ = ["SQLiteWarehouse", "Sink"]
