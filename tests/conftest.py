"""Shared fixtures: a signing key, a fixed clock, a real SQLite inbox, an in-process client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from cio_webhooks import create_app
from cio_webhooks.app import WebhookApp
from cio_webhooks.store.sqlite import SQLiteStore
from cio_webhooks.testing import FixedClock, signed_request

SAMPLES = Path(__file__).resolve().parent / "samples"  # copies of shared/customerio/samples
KEY = "test-signing-key-0123456789abcdef"
NOW = 1_700_000_000


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
