"""The embedded backend: the inbox in one SQLite file, the ledger in another beside it."""

from ._files import probe_file
from ._inbox import SQLiteStore, connect_readonly, readonly_uri
from ._ledger import SQLiteLedger

__all__ = ["SQLiteLedger", "SQLiteStore", "connect_readonly", "probe_file", "readonly_uri"]
