"""Fixtures of the sink tests: a store of each backend to load from, and one BigQuery
emulator for the session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cio_webhooks.store import Store

from ..conftest import store_per_backend
from ._bigquery_peer import Emulator, client_environment, running_emulator
from ._postgres_peer import postgres_peer

__all__ = ["postgres_peer"]  # a fixture, here for every sink test


@pytest.fixture(params=["sqlite", "postgresql"])
async def source(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A new store of each backend for the loader to follow."""
    async with store_per_backend(request, tmp_path) as store:
        yield store


@pytest.fixture(scope="session")
def bigquery_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """One BigQuery emulator for the session, on 127.0.0.1 (each test uses a dataset
    of its own: ``_bigquery_peer.new_dataset``)."""
    with client_environment(), running_emulator(tmp_path_factory.mktemp("bqemulator")) as em:
        yield em
