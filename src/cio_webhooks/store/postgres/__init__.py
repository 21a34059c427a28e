"""The PostgreSQL backend: many receivers and workers on one database."""

from ._store import PostgresStore

__all__ = ["PostgresStore"]
