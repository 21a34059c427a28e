"""The embedded backend: the inbox in one SQLite file, the ledger in another beside it."""

from ._files import probe_file
from ._inbox import LEDGER_FILE, SQLiteStore, connect_readonly, readonly_uri
from ._ledger import SQLiteLedger

__all__ = [
    "LEDGER_FILE",
    "SQLiteLedger",
    "SQLiteStore",
    "connect_readonly",
    "probe_file",
    "readonly_uri",
]
