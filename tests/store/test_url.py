"""Store URLs as users write them: every form the README and libpq accept."""

from __future__ import annotations

import os
import urllib.parse

import pytest
from psycopg.conninfo import conninfo_to_dict

from cio_webhooks import ConfigError
from cio_webhooks.store import open_store, parse_store_url

from .conftest import opened

SOCKET_DIR = "/var/run/postgresql"


def test_a_unix_socket_url_keeps_its_empty_host() -> None:
    # urlunsplit turned postgresql:///db into postgresql:/db, which libpq refuses.
    parsed = parse_store_url(f"postgresql:///cio?host={SOCKET_DIR}&schema=s")
    assert parsed.dsn is not None
    assert conninfo_to_dict(parsed.dsn) == {"dbname": "cio", "host": SOCKET_DIR}
    assert str(parsed).startswith("postgresql:///cio?")


@pytest.mark.skipif(
    not os.path.exists(f"{SOCKET_DIR}/.s.PGSQL.5432"), reason="no PostgreSQL socket here"
)
async def test_a_store_opens_through_a_unix_socket(pg_url: str) -> None:
    parts = urllib.parse.urlsplit(pg_url)
    url = f"postgresql://{parts.username}@{parts.path}?host={SOCKET_DIR}&{parts.query}"
    async with opened(url) as store:
        assert (await store.stats()).events == 0


def test_the_password_is_masked_and_the_rest_kept() -> None:
    parsed = parse_store_url("postgres://u:s3cret@h:5/db?sslmode=require&schema=x")
    assert str(parsed) == "postgresql://u:***@h:5/db?sslmode=require&schema=x"
    assert open_store(parsed).url.count("s3cret") == 0


@pytest.mark.parametrize(
    "netloc",
    [
        "u:ab#cd@h:5432",  # '#' starts a fragment: "ab" became the host
        "u:ab?cd@h:5432",  # '?' starts the query
        "u:ab/cd@h:5432",  # '/' starts the path
        "u:top@secret@h:5432",  # libpq reads the host "secret@h"
        "u:ab%zz@h:5432",  # not an escape
        "u:ab%cd@h:5432",  # an escape, but not UTF-8
    ],
)
def test_a_password_with_an_unencoded_reserved_character_is_refused_unquoted(
    netloc: str,
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_store_url(f"postgresql://{netloc}/db")
    for part in ("ab", "cd", "secret", "zz"):
        assert part not in str(caught.value).replace("percent-encoded", "")


@pytest.mark.parametrize("url", ["postgresql://u@[::1/db", "postgresql://u@h:99999/db"])
def test_a_bad_host_or_port_is_a_usage_error(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_store_url(url)


def test_query_values_reach_libpq_as_written() -> None:
    # libpq decodes %XX but not '+': re-encoding a space as '+' broke options=-c...
    parsed = parse_store_url(
        "postgresql://u@h/db?options=-c%20statement_timeout%3D5000&schema=s&password=a+b"
    )
    assert parsed.dsn is not None
    assert conninfo_to_dict(parsed.dsn)["options"] == "-c statement_timeout=5000"
    assert conninfo_to_dict(parsed.dsn)["password"] == "a+b"
    assert parsed.schema == "s"


@pytest.mark.parametrize(
    "url", ["sqlite:///tmp/x.db?mode=ro", "sqlite:x.db#frag", "sqlite:///var/lib/cio/"]
)
def test_a_sqlite_url_with_a_query_or_a_directory_is_refused(url: str) -> None:
    # Each became a file of a surprising name ("x.db?mode=ro", "cio") without a word.
    with pytest.raises(ConfigError, match="SQLite URL is a file path"):
        parse_store_url(url)


def test_a_sqlite_file_name_may_hold_escaped_characters() -> None:
    assert str(parse_store_url("sqlite:///tmp/a%3Fb%20c.db").path) == "/tmp/a?b c.db"
    assert str(parse_store_url("sqlite:////tmp/abs.db").path).endswith("/tmp/abs.db")


def test_a_schema_name_past_63_bytes_is_refused() -> None:
    # PostgreSQL truncates identifiers to 63 bytes: "a"*63 + "x" and "a"*63 + "y"
    # were the same schema, so two stores meant to be apart shared one queue.
    assert parse_store_url(f"postgresql://h/db?schema={'a' * 63}").schema == "a" * 63
    with pytest.raises(ConfigError, match="longer than 63 bytes"):
        parse_store_url(f"postgresql://h/db?schema={'a' * 63}x")


def test_a_schema_name_postgresql_reserves_is_a_usage_error() -> None:
    # It failed at CREATE SCHEMA: "cannot open the store", exit 3 (try again later).
    with pytest.raises(ConfigError, match="pg_ names are PostgreSQL's own"):
        parse_store_url("postgresql://h/db?schema=pg_cio")
