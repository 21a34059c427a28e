"""The ``store`` fixture: every contract test runs once per backend (SQLite in a
temporary file, PostgreSQL in a schema of its own on the real server)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cio_webhooks import Event, parse_event
from cio_webhooks.store import Store, open_store
from cio_webhooks.testing import make_event

from ..conftest import NOW

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of a new, empty store of each backend."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'inbox.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = open_store(store_url)
    await opened.open()
    yield opened
    await opened.close()


def ev(
    event_id: str,
    received_at: float = NOW,
    metric: str = "delivered",
    object_type: str = "email",
    **data: Any,
) -> Event:
    """A parsed event as the receiver would store it."""
    return parse_event(
        json.dumps(make_event(event_id, object_type, metric, **data)).encode(),
        received_at=received_at,
    )


@contextlib.asynccontextmanager
async def opened(url: str, *, readonly: bool = False) -> AsyncIterator[Store]:
    """The store at ``url``, open for the ``async with`` block."""
    store = open_store(url, readonly=readonly)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
