"""Sink URLs: which warehouse, where, under what name, with which personal-data options.

::

    sqlite:///var/lib/cio/warehouse.db            a SQLite file (sqlite:rel/path too)
    postgresql://user@host/db?schema=cio&table_prefix=cio_
                                                  default schema cio_warehouse
    bigquery://PROJECT/DATASET?credentials=/path/key.json&location=EU
                                                  Application Default Credentials when no
                                                  key file; ?api_endpoint= for an emulator
    parquet:///data/lake                          a local directory (parquet:rel/dir too)

Parameters every kind takes:

- ``name``: the sink's name, its cursor in the store (default: the kind).  Two sinks
  of one kind need names.
- ``email=keep|hash|drop``: email addresses and recipients (``hash`` is salted
  SHA-256, salt from ``CIO_WEBHOOKS_PII_SALT``); ``raw=keep|drop``: the raw JSON
  column; ``content=keep|drop``: message ``content``/``headers`` inside it.
- ``table_prefix``: before every table and view name (SQL kinds).
- ``batch_size``, ``interval``: the most events one write takes, and the seconds
  between writes while events keep coming (defaults: the kind's own).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from .._exceptions import ConfigError
from ..store import parse_store_url
from ._rows import Privacy

__all__ = ["DEFAULT_SINK_SCHEMA", "KINDS", "SinkURL", "parse_sink_url", "parse_sink_urls"]

#: The sink kinds, by URL scheme.
KINDS = ("sqlite", "postgresql", "bigquery", "parquet")
#: The PostgreSQL schema of a sink whose URL names none: not the store's, so that a
#: sink on the store's own database never meets the inbox's tables.
DEFAULT_SINK_SCHEMA = "cio_warehouse"
_COMMON = {"name", "email", "raw", "content", "batch_size", "interval"}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,30}$")


@dataclass(frozen=True)
class SinkURL:
    """A parsed sink URL.  ``str()`` gives it with any secret masked.

    ``target`` is the file or directory (``sqlite``, ``parquet``), the libpq URL without
    our parameters (``postgresql``), or ``PROJECT/DATASET`` (``bigquery``); ``options``
    holds the kind's own parameters (``schema``, ``api_endpoint``, ...)."""

    kind: str
    name: str
    target: str
    privacy: Privacy = field(default_factory=Privacy)
    table_prefix: str = ""
    options: dict[str, str] = field(default_factory=dict)
    shown: str = ""
    batch_size: int | None = None
    interval: float | None = None

    @property
    def path(self) -> Path:
        return Path(self.target)

    def __str__(self) -> str:
        return self.shown


def _file_target(url: str, rest: str) -> str:
    path = rest[2:] if rest.startswith("//") else rest
    path = path.split("?", 1)[0]
    if not path or path == "/":
        raise ConfigError(f"sink URL {url!r} names no path")
    return urllib.parse.unquote(path)


def parse_sink_url(url: str, *, salt: bytes | None = None, reading: bool = False) -> SinkURL:
    """Parse ``url``; raise ``ConfigError`` with a sentence when it names no sink.
    ``salt`` is the personal-data salt, required by ``email=hash`` unless the URL is
    only ``reading`` what a sink wrote (``report --sink``)."""
    scheme, sep, rest = url.strip().partition(":")
    kind = {"postgres": "postgresql"}.get(scheme.lower(), scheme.lower())
    if not sep or not rest or kind not in KINDS:
        raise ConfigError(
            f"sink URL {_masked_scheme(url)}: expected one of sqlite:///PATH,"
            " postgresql://..., bigquery://PROJECT/DATASET, parquet:///DIR"
        )
    query = urllib.parse.urlsplit(url).query if "?" in url else ""
    params: dict[str, str] = {}
    passthrough: list[str] = []
    for item in (q for q in query.split("&") if q):
        key, _, value = item.partition("=")
        key = urllib.parse.unquote(key)
        if key in _COMMON or key in ("table_prefix", "schema") or kind != "postgresql":
            params[key] = urllib.parse.unquote(value)
        else:
            passthrough.append(item)  # libpq's own parameters, byte for byte
    name = params.pop("name", kind)
    if not _NAME.match(name):
        raise ConfigError(f"sink name {name!r}: letters, digits, _ and -, starting with a letter")
    privacy = _privacy(params, salt, reading=reading)
    pace = _pace(name, params)
    prefix = params.pop("table_prefix", "")
    if prefix and not _PREFIX.match(prefix):
        raise ConfigError(f"sink {name}: table_prefix {prefix!r} must be letters, digits and _")
    if kind in ("sqlite", "parquet"):
        target = _file_target(url, rest)
        if params:
            raise ConfigError(f"sink {name}: unknown parameter(s) {', '.join(sorted(params))}")
        shown = f"{kind}://{target}" if target.startswith("/") else f"{kind}:{target}"
        return SinkURL(kind, name, target, privacy, prefix, {}, shown, *pace)
    if kind == "postgresql":
        schema = params.pop("schema", None) or DEFAULT_SINK_SCHEMA
        if params:
            raise ConfigError(f"sink {name}: unknown parameter(s) {', '.join(sorted(params))}")
        base = url.split("?", 1)[0]
        query_kept = [*passthrough, f"schema={urllib.parse.quote(schema)}"]
        try:
            store = parse_store_url(f"{base}?{'&'.join(query_kept)}")
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("store URL", f"sink {name}")) from None
        assert store.dsn is not None
        import psycopg  # here: the other kinds and the CLI's start need no libpq
        from psycopg.conninfo import conninfo_to_dict

        try:
            conninfo_to_dict(store.dsn)
        except psycopg.ProgrammingError as exc:
            # An option libpq does not know (a typo): fix the URL, rather than retry
            # "the warehouse is down" for ever.  libpq's sentence names the option only.
            raise ConfigError(f"sink {name}: {exc}") from None
        return SinkURL(kind, name, store.dsn, privacy, prefix, {"schema": store.schema}, str(store))
    # bigquery://PROJECT/DATASET
    parts = urllib.parse.urlsplit(url)
    project, dataset = parts.netloc, parts.path.strip("/")
    if not project or not dataset or "/" in dataset:
        raise ConfigError(f"sink {name}: expected bigquery://PROJECT/DATASET")
    known = {"credentials", "location", "api_endpoint", "timeout"}
    if set(params) - known:
        raise ConfigError(
            f"sink {name}: unknown parameter(s) {', '.join(sorted(set(params) - known))}"
        )
    options = {"project": project, "dataset": dataset, **params}
    shown = f"bigquery://{project}/{dataset}"
    return SinkURL(kind, name, f"{project}/{dataset}", privacy, prefix, options, shown, *pace)


def _pace(name: str, params: dict[str, str]) -> tuple[int | None, float | None]:
    batch_size = params.pop("batch_size", None)
    interval = params.pop("interval", None)
    try:
        size = int(batch_size) if batch_size is not None else None
        pause = float(interval) if interval is not None else None
    except ValueError:
        raise ConfigError(f"sink {name}: batch_size and interval must be numbers") from None
    if (size is not None and size < 1) or (pause is not None and not 0 <= pause < float("inf")):
        raise ConfigError(f"sink {name}: batch_size >= 1 and a finite interval >= 0")
    return size, pause


def _privacy(params: dict[str, str], salt: bytes | None, *, reading: bool) -> Privacy:
    addresses = params.pop("email", "keep")
    if addresses not in ("keep", "hash", "drop"):
        raise ConfigError(f"email={addresses!r}: use keep, hash or drop")
    keep = {}
    for option in ("raw", "content"):
        value = params.pop(option, "keep")
        if value not in ("keep", "drop"):
            raise ConfigError(f"{option}={value!r}: use keep or drop")
        keep[option] = value == "keep"
    if addresses == "hash" and not salt and not reading:
        raise ConfigError("email=hash needs a salt: set CIO_WEBHOOKS_PII_SALT")
    return Privacy(
        addresses=cast(Literal["keep", "hash", "drop"], addresses),
        raw=keep["raw"],
        content=keep["content"],
        salt=salt or b"",
    )


def _masked_scheme(url: str) -> str:
    # The URL may carry a password: show its scheme only.
    return repr(url.partition(":")[0] + ":...")


def parse_sink_urls(urls: Sequence[str], *, salt: bytes | None = None) -> list[SinkURL]:
    """Parse several sink URLs; their names must differ."""
    sinks = [parse_sink_url(u, salt=salt) for u in urls]
    names = [s.name for s in sinks]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(
                f"two sinks are named {name!r}: give each its own ?name= (the name keys its"
                " cursor in the store)"
            )
    return sinks
