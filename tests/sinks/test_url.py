"""Sink URLs: kinds, names, parameters, and what they show."""

from __future__ import annotations

import pytest

from cio_webhooks import ConfigError
from cio_webhooks.sinks import open_sink, parse_sink_url, parse_sink_urls


def test_each_kind_parses_with_its_defaults() -> None:
    sqlite = parse_sink_url("sqlite:///var/lib/cio/warehouse.db")
    assert (sqlite.kind, sqlite.name, sqlite.target) == (
        "sqlite",
        "sqlite",
        "/var/lib/cio/warehouse.db",
    )
    relative = parse_sink_url("parquet:lake")
    assert (relative.kind, relative.target, str(relative)) == ("parquet", "lake", "parquet:lake")
    pg = parse_sink_url("postgresql://u@db.example/wh?table_prefix=cio_&sslmode=require")
    assert pg.options == {"schema": "cio_warehouse"}
    assert pg.table_prefix == "cio_"
    assert "sslmode=require" in pg.target
    bq = parse_sink_url("bigquery://proj/ds?location=EU&timeout=30")
    assert bq.options == {"project": "proj", "dataset": "ds", "location": "EU", "timeout": "30"}


def test_a_password_never_shows() -> None:
    url = parse_sink_url("postgresql://u:s3cret@db/wh?password=other")
    assert "s3cret" not in str(url)
    assert "other" not in str(url)


def test_privacy_and_pace_options_apply_to_the_sink(tmp_path: object) -> None:
    url = parse_sink_url(
        "sqlite:///tmp/w.db?email=hash&raw=keep&content=drop&batch_size=10&interval=2",
        salt=b"s",
    )
    assert (url.privacy.addresses, url.privacy.raw, url.privacy.content) == ("hash", True, False)
    sink = open_sink(url)
    assert (sink.batch_size, sink.interval) == (10, 2.0)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://x", "expected one of"),
        ("sqlite://", "names no path"),
        ("sqlite:///w.db?colour=blue", "unknown parameter"),
        ("sqlite:///w.db?email=maybe", "use keep, hash or drop"),
        ("sqlite:///w.db?email=hash", "needs a salt"),
        ("sqlite:///w.db?name=1bad", "sink name"),
        ("sqlite:///w.db?table_prefix=a-b", "table_prefix"),
        ("sqlite:///w.db?batch_size=0", "batch_size"),
        ("bigquery://proj", "PROJECT/DATASET"),
        ("bigquery://p/d?timeout=soon", "timeout"),
        ("postgresql://u:pw@h/db?schema=pg_x", "pg_ names"),
        # A typo in a libpq option: a bad setting, not a warehouse down for ever.
        ("postgresql://u:pw@h/db?sslmod=require", "sslmod"),
    ],
)
def test_a_bad_url_is_a_config_error_that_names_no_secret(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        open_sink(parse_sink_url(url))
    assert "pw" not in str(caught.value)


def test_two_sinks_of_one_kind_need_names() -> None:
    with pytest.raises(ConfigError, match="named 'sqlite'"):
        parse_sink_urls(["sqlite:///a.db", "sqlite:///b.db"])
    named = parse_sink_urls(["sqlite:///a.db", "sqlite:///b.db?name=archive"])
    assert [u.name for u in named] == ["sqlite", "archive"]


def test_a_postgresql_sink_takes_its_schema_from_the_url() -> None:
    assert parse_sink_url("postgresql://h/db?schema=analytics").options == {"schema": "analytics"}


def test_the_default_sink_is_the_warehouse_file_named_per_host_on_a_server_store() -> None:
    from pathlib import Path

    from cio_webhooks._service import sink_urls
    from cio_webhooks.settings import Settings
    from cio_webhooks.store import parse_store_url

    local = Settings(store=parse_store_url("sqlite:///a/inbox.db"), warehouse=Path("/a/w.db"))
    [only] = sink_urls(local)
    assert (only.kind, only.name, only.target) == ("sqlite", "sqlite", "/a/w.db")
    # Workers on several hosts each keep a whole local copy under a cursor of their own.
    shared = Settings(store=parse_store_url("postgresql://h/db"), warehouse=Path("/a/w.db"))
    [per_host] = sink_urls(shared)
    assert per_host.name.startswith("sqlite-")
    assert per_host.name != "sqlite-"
    configured = Settings(
        store=parse_store_url("postgresql://h/db"),
        warehouse=Path("/a/w.db"),
        sinks=("parquet:///lake", "postgresql://h/db?schema=wh"),
    )
    assert [u.kind for u in sink_urls(configured)] == ["parquet", "postgresql"]


def test_a_kind_whose_dependency_is_missing_says_which_extra_to_install() -> None:
    import subprocess
    import sys

    script = (
        "import sys; sys.modules['pyarrow'] = None\n"  # as if pyarrow were not installed
        "from cio_webhooks import ConfigError\n"
        "from cio_webhooks.sinks import open_sink, parse_sink_url\n"
        "try:\n"
        "    open_sink(parse_sink_url('parquet:///tmp/lake'))\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert "pip install 'cio-webhooks[parquet]'" in out


def test_a_url_only_read_from_needs_no_salt() -> None:
    # report --sink names the sink as the writers do; reading it hashes nothing.
    url = parse_sink_url("postgresql://h/db?email=hash", reading=True)
    assert url.privacy.addresses == "hash"
