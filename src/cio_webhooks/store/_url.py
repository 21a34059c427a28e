"""Store URLs: which backend, where, and how to name it without its password.

::

    sqlite:///var/lib/cio/inbox.db     an absolute path (``sqlite:////abs`` works too)
    sqlite:relative/inbox.db           a path relative to the working directory
    postgresql://user@host:5432/db     any libpq URL (``postgres://`` too)
    postgresql://...?schema=cio        tables in schema ``cio`` (default ``cio_webhooks``)
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .._exceptions import ConfigError

__all__ = ["DEFAULT_PG_SCHEMA", "StoreURL", "parse_store_url"]

#: The schema a PostgreSQL store uses when its URL names none.
DEFAULT_PG_SCHEMA = "cio_webhooks"


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL.  ``str()`` gives it with any password masked."""

    backend: str  # "sqlite" | "postgresql"
    path: Path | None = None  # sqlite
    dsn: str | None = None  # postgresql: the libpq URL without our own parameters
    schema: str = DEFAULT_PG_SCHEMA

    def __str__(self) -> str:
        if self.backend == "sqlite":
            return (
                f"sqlite://{self.path}"
                if self.path and self.path.is_absolute()
                else f"sqlite:{self.path}"
            )
        assert self.dsn is not None
        parts = urllib.parse.urlsplit(self.dsn)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        shown = [(k, "***" if k == "password" else v) for k, v in query]
        if self.schema != DEFAULT_PG_SCHEMA:
            shown.append(("schema", self.schema))
        return _pg_url(netloc, parts.path, shown)


def _pg_url(netloc: str, path: str, query: list[tuple[str, str]]) -> str:
    """``postgresql://netloc/path?query``, keeping ``//`` when there is no host
    (``postgresql:///db?host=/var/run/postgresql``, a unix socket): ``urlunsplit``
    drops it, and libpq reads ``postgresql:/db`` as no URL at all."""
    encoded = urllib.parse.urlencode(query, safe="/*")
    return f"postgresql://{netloc}{path}" + (f"?{encoded}" if encoded else "")


def parse_store_url(url: str) -> StoreURL:
    """Parse ``url``; raise ``ConfigError`` with a sentence when it names no store."""
    scheme, sep, rest = url.partition(":")
    scheme = scheme.lower()
    if not sep or not rest:
        raise ConfigError(f"store URL {url!r}: expected sqlite:///PATH or postgresql://...")
    if scheme == "sqlite":
        path = rest[2:] if rest.startswith("//") else rest  # sqlite:///abs -> /abs
        if not path or path == "/":
            raise ConfigError(f"store URL {url!r} names no file")
        return StoreURL("sqlite", path=Path(urllib.parse.unquote(path)))
    if scheme in ("postgresql", "postgres"):
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        schema = DEFAULT_PG_SCHEMA
        kept: list[tuple[str, str]] = []
        for key, value in query:
            if key == "schema":
                schema = value
            else:
                kept.append((key, value))
        if not schema.replace("_", "").isalnum() or schema[0].isdigit():
            raise ConfigError(f"store URL: schema {schema!r} must be letters, digits and _")
        return StoreURL("postgresql", dsn=_pg_url(parts.netloc, parts.path, kept), schema=schema)
    raise ConfigError(
        f"store URL {scheme}:... is not supported: use sqlite:///PATH or postgresql://..."
    )
