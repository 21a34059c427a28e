"""search: events found by person, email, delivery, campaign and body text, on both stores."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cio_webhooks import parse_event
from cio_webhooks.search import EventQuery, find_events, matching_ids
from cio_webhooks.store import JobState, Store
from cio_webhooks.testing import make_event

from .conftest import store_per_backend

T0 = 1_700_000_000.0


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with store_per_backend(request, tmp_path) as store:
        events = [
            make_event("a1", "email", "sent", person_id="ann", delivery_id="d-a", campaign_id=7),
            make_event("a2", "email", "opened", person_id="ann", delivery_id="d-a", campaign_id=7),
            make_event("b1", "email", "bounced", person_id="bob", delivery_id="d-b", campaign_id=8),
            # bob's address appears in ann's body, but not as ann's address
            make_event("a3", "email", "clicked", person_id="ann", href="mailto:bob@example.com"),
            make_event("c1", "email", "sent", person_id="cy", delivery_id="d-c", broadcast_id=7),
        ]
        for i, payload in enumerate(events):
            body = json.dumps(payload).encode()
            await store.put(parse_event(body, received_at=T0 + i))
        yield store


async def ids(store: Store, query: EventQuery, **kw: int) -> list[str]:
    return [e.event_id for e in (await find_events(store, query, **kw)).events]


async def test_everything_newest_first(store: Store) -> None:
    assert await ids(store, EventQuery()) == ["c1", "a3", "b1", "a2", "a1"]


async def test_by_person(store: Store) -> None:
    assert await ids(store, EventQuery(person="ann")) == ["a3", "a2", "a1"]


async def test_by_email_in_any_case_and_not_by_a_mention(store: Store) -> None:
    assert await ids(store, EventQuery(email="BOB@example.com")) == ["b1"]


async def test_by_delivery(store: Store) -> None:
    assert await ids(store, EventQuery(delivery="d-a")) == ["a2", "a1"]


async def test_by_campaign_matches_broadcasts_too(store: Store) -> None:
    assert await ids(store, EventQuery(campaign="7")) == ["c1", "a2", "a1"]


async def test_by_body_text_and_kind(store: Store) -> None:
    assert await ids(store, EventQuery(text="MAILTO:")) == ["a3"]
    assert await ids(store, EventQuery(kinds=("email.sent",))) == ["c1", "a1"]


async def test_fields_combine(store: Store) -> None:
    assert await ids(store, EventQuery(person="ann", kinds=("opened",))) == ["a2"]
    assert await ids(store, EventQuery(person="ann", delivery="d-b")) == []


async def test_pages_follow_their_cursor(store: Store) -> None:
    first = await find_events(store, EventQuery(person="ann"), limit=2)
    assert [e.event_id for e in first.events] == ["a3", "a2"]
    assert first.next_before is not None
    rest = await find_events(store, EventQuery(person="ann"), before_seq=first.next_before)
    assert [e.event_id for e in rest.events] == ["a1"]
    assert rest.next_before is None


async def test_matching_ids_for_bulk_actions_by_state(store: Store) -> None:
    query = EventQuery(person="ann", states=(JobState.PENDING,))
    assert await matching_ids(store, query) == ["a1", "a2", "a3"]
    assert await matching_ids(store, query, limit=1) == ["a1"]


async def test_an_email_beyond_ascii_is_found_in_any_case(store: Store) -> None:
    body = json.dumps(make_event("u1", "email", "sent", recipient="émile@example.com")).encode()
    await store.put(parse_event(body, received_at=T0 + 10))
    assert await ids(store, EventQuery(email="ÉMILE@example.com")) == ["u1"]
