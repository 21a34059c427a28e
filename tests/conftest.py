"""Shared fixtures: a signing key, a fixed clock, a real SQLite inbox, an in-process client,
and the real PostgreSQL on this machine: one database per test run (dropped after it),
one schema per test (``pg_url``)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest

from cio_webhooks import create_app
from cio_webhooks.app import WebhookApp
from cio_webhooks.store import Store, open_store
from cio_webhooks.store.sqlite import SQLiteStore
from cio_webhooks.testing import FixedClock, signed_request

SAMPLES = Path(__file__).resolve().parent / "samples"  # copies of shared/customerio/samples
KEY = "test-signing-key-0123456789abcdef"
NOW = 1_700_000_000


#: The server ``make test`` starts when it is down; override with CIO_WEBHOOKS_TEST_PG.
PG_SERVER = os.environ.get("CIO_WEBHOOKS_TEST_PG", "postgresql://root@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A libpq URL of a database made for this test run, dropped at its end."""
    name = f"cio_test_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(PG_SERVER, autocommit=True) as admin:
        _drop_orphans(admin)
        admin.execute(f"CREATE DATABASE {name}")
    base = PG_SERVER.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_SERVER, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _drop_orphans(admin: psycopg.Connection[Any]) -> None:
    """Drop the databases of earlier test runs that were killed before dropping theirs
    (their process is gone)."""
    rows = admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'cio_test_%'")
    for (name,) in rows.fetchall():
        pid = name.split("_")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """A store URL of a schema of its own in this run's database (made on first open)."""
    return f"{pg_database}?schema=t_{secrets.token_hex(6)}"


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(float(NOW))


@pytest.fixture
async def inbox(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "inbox.db")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def app(inbox: SQLiteStore, clock: FixedClock) -> WebhookApp:
    return create_app(inbox, [KEY], clock=clock)


@pytest.fixture
async def client(app: WebhookApp) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def post_event(
    client: httpx2.AsyncClient,
    event: dict[str, Any] | bytes,
    *,
    key: str = KEY,
    timestamp: int = NOW,
) -> httpx2.Response:
    body, headers = signed_request(event, key=key, timestamp=timestamp)
    return await client.post("/webhooks/customerio", content=body, headers=headers)


def sample_files() -> list[Path]:
    return sorted(p for p in SAMPLES.glob("*.json") if not p.name.endswith("signature-vector.json"))


def load_sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SAMPLES / name).read_bytes())
    return data


@contextlib.asynccontextmanager
async def store_per_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A new, opened store of the backend ``request.param`` names (``sqlite`` or
    ``postgresql``), for fixtures parametrised over both."""
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'inbox.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    store = open_store(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
