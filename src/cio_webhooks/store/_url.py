"""Store URLs: which backend, where, and how to name it without its password.

::

    sqlite:///var/lib/cio/inbox.db     an absolute path (``sqlite:////abs`` works too)
    sqlite:relative/inbox.db           a path relative to the working directory
    postgresql://user@host:5432/db     any libpq URL (``postgres://`` too)
    postgresql://...?schema=cio        tables in schema ``cio`` (default ``cio_webhooks``)
"""

from __future__ import annotations

import re
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

    @property
    def on_this_host(self) -> bool:
        """True when the store is a file that only processes on this host share (SQLite);
        False for a server that workers on several hosts may share."""
        return self.path is not None

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
        shown = [
            f"{key}=***" if urllib.parse.unquote(key) == "password" else f"{key}={value}"
            for key, value in _query_items(parts.query)
        ]
        if self.schema != DEFAULT_PG_SCHEMA:
            shown.append(f"schema={urllib.parse.quote(self.schema)}")
        return _pg_url(netloc, parts.path, shown)


def _query_items(query: str) -> list[tuple[str, str]]:
    """The ``key=value`` pairs of a URL query, still percent-encoded: libpq decodes
    ``%XX`` but not ``+``, so a value must reach it byte for byte as written (decoding
    and re-encoding turned ``options=-c%20x%3Dy`` into ``-c+x%3Dy``)."""
    return [(k, v) for k, _, v in (item.partition("=") for item in query.split("&") if item)]


def _pg_url(netloc: str, path: str, query: list[str]) -> str:
    """``postgresql://netloc/path?query``, keeping ``//`` when there is no host
    (``postgresql:///db?host=/var/run/postgresql``, a unix socket): ``urlunsplit``
    drops it, and libpq reads ``postgresql:/db`` as no URL at all."""
    return f"postgresql://{netloc}{path}" + (f"?{'&'.join(query)}" if query else "")


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
        if "?" in path or "#" in path or path.endswith("/"):
            # sqlite:///x.db?mode=ro made a file named "x.db?mode=ro", silently.
            raise ConfigError(
                f"store URL {url!r}: a SQLite URL is a file path, with no ?query, #fragment"
                " or trailing / (write ? and # in a file name as %3F and %23)"
            )
        return StoreURL("sqlite", path=Path(urllib.parse.unquote(path)))
    if scheme in ("postgresql", "postgres"):
        parts = _split_pg_url(url)
        schema = DEFAULT_PG_SCHEMA
        kept: list[str] = []
        for key, value in _query_items(parts.query):
            if urllib.parse.unquote(key) == "schema":
                schema = urllib.parse.unquote(value)
            else:
                kept.append(f"{key}={value}")
        if not schema.replace("_", "").isalnum() or schema[0].isdigit():
            raise ConfigError(f"store URL: schema {schema!r} must be letters, digits and _")
        if schema.startswith("pg_"):
            # PostgreSQL refuses it at CREATE SCHEMA: a bad setting, not an outage.
            raise ConfigError(f"store URL: schema {schema!r}: pg_ names are PostgreSQL's own")
        if len(schema.encode()) > 63:
            # PostgreSQL cuts a longer name to 63 bytes: two long names that share
            # those would be one store.
            raise ConfigError(f"store URL: schema {schema!r} is longer than 63 bytes")
        return StoreURL("postgresql", dsn=_pg_url(parts.netloc, parts.path, kept), schema=schema)
    raise ConfigError(
        f"store URL {scheme}:... is not supported: use sqlite:///PATH or postgresql://..."
    )


def _split_pg_url(url: str) -> urllib.parse.SplitResult:
    """``url`` split, refusing what libpq would read otherwise than we do.

    A password holding ``@ / ? #`` unencoded splits differently for urllib and libpq,
    and either way part of it lands in the host, the path or the query, and from there
    in an error message.  The sentence names no part of the URL."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # an unclosed [IPv6] host
        raise ConfigError("store URL is not a valid postgresql:// URL (its host)") from None
    after_netloc = url.split("//", 1)[-1][len(parts.netloc) :]
    if (
        parts.fragment
        or parts.netloc.count("@") > 1
        or "@" in after_netloc
        or not _percent_encoded(parts.netloc)
    ):
        raise ConfigError(
            "store URL: a user name or password holding @ : / ? # or % must be"
            " percent-encoded (%40 %3A %2F %3F %23 %25)"
        )
    try:
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:  # its message quotes what follows the host: no password here
        raise ConfigError("store URL: the port is not a number from 0 to 65535") from None
    return parts


def _percent_encoded(text: str) -> bool:
    """Whether every ``%`` in ``text`` starts an escape of UTF-8 (as libpq needs)."""
    if re.search(r"%(?![0-9A-Fa-f]{2})", text):
        return False
    try:
        urllib.parse.unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
