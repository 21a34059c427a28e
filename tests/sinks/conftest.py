"""Fixtures of the sink tests: a store of each backend to load from."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cio_webhooks.store import Store, open_store


@pytest.fixture(params=["sqlite", "postgresql"])
async def source(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A new store of each backend for the loader to follow."""
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'inbox.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    store = open_store(url)
    await store.open()
    yield store
    await store.close()
