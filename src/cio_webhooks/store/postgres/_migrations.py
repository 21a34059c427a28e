"""Versioned migrations of a PostgreSQL store's schema.

Every ``migrations/NNNN_name.sql`` file is one version, applied once and in order;
``schema_migrations`` records which were.  Any number of processes may migrate one
store at once: each takes the same transaction-scoped advisory lock first, so one
applies what is missing and the others then find nothing left to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

__all__ = ["MIGRATION_LOCK", "Migration", "applied_versions", "migrate", "migrations"]

#: The advisory lock every migration transaction holds (any constant unique to us).
MIGRATION_LOCK = 0x63696F5F6D696772  # "cio_migr"

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped with this package, by version."""
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version: {versions}")
    return found


async def applied_versions(conn: psycopg.AsyncConnection[Any], schema: str) -> set[int]:
    """The versions recorded in ``schema``; empty when it has no migrations table."""
    cur = await conn.execute(
        "SELECT to_regclass(format('%%I.schema_migrations', %s::text)) IS NOT NULL", [schema]
    )
    row = await cur.fetchone()
    if not row or not row[0]:
        return set()
    cur = await conn.execute(
        sql.SQL("SELECT version FROM {}.schema_migrations").format(sql.Identifier(schema))
    )
    return {version for (version,) in await cur.fetchall()}


async def migrate(conn: psycopg.AsyncConnection[Any], schema: str) -> list[int]:
    """Create ``schema`` if needed and apply the migrations it lacks, in one transaction;
    return the versions applied (empty when it was up to date).  ``conn`` must be in
    autocommit mode (not inside a transaction)."""
    ident = sql.Identifier(schema)
    if {m.version for m in migrations()} <= await applied_versions(conn, schema):
        # Up to date: write nothing, so a receiver starts on a server that is read-only
        # for now (a standby being promoted) and many starts take no lock.
        return []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        # The migration files name tables unqualified: they land in ``schema``.
        await conn.execute("SELECT set_config('search_path', %s, true)", [_quoted(schema)])
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = await applied_versions(conn, schema)
        applied = []
        for migration in migrations():
            if migration.version in done:
                continue
            await conn.execute(migration.sql.encode())
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                [migration.version, migration.name],
            )
            applied.append(migration.version)
    return applied


def _quoted(schema: str) -> str:
    """``schema`` as one search_path element (double-quoted, so its case is kept)."""
    return '"' + schema.replace('"', '""') + '"'
