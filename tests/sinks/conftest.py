"""Fixtures of the sink tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._bigquery_peer import Emulator, client_environment, running_emulator


@pytest.fixture(scope="session")
def bigquery_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """One BigQuery emulator for the session, on 127.0.0.1 (each test uses a dataset
    of its own: ``_bigquery_peer.new_dataset``)."""
    with client_environment(), running_emulator(tmp_path_factory.mktemp("bqemulator")) as em:
        yield em
