"""The PostgreSQL backend: many receivers and workers on one database.

::

    _store.py       PostgresStore: the whole Store contract on a small connection pool
    _ingest.py      group commit: one INSERT ... unnest per batch, under SEQ_LOCK
    _wakeup.py      LISTEN on a connection of its own; NOTIFY in the writing transaction
    _migrations.py  migrations/NNNN_name.sql, applied once under an advisory lock
    _ledger.py      PostgresLedger: the policies' ledger in the same schema
"""

from ._store import PostgresStore

__all__ = ["PostgresStore"]
