"""The store contract (``store/_contract.py``), run against every backend.

A backend is done when all of this passes on it.  What only one backend can be
asked (SQLite's file format, PostgreSQL's processes and connections) is in
``tests/test_inbox.py`` and ``tests/store/test_postgres.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
from pathlib import Path
from typing import Any

import httpx2
import pytest

from cio_webhooks import (
    Event,
    EventFilter,
    JobState,
    PutResult,
    StoreUnavailable,
    create_app,
    parse_event,
)
from cio_webhooks.store import HandlerResult, HandlerRun, Job, Outcome, Store, open_store
from cio_webhooks.testing import make_event

from ..conftest import KEY, NOW, post_event
from .conftest import ev, opened

DAY = 86400


def done(job: Job, *handlers: str) -> Outcome:
    ok = tuple(HandlerResult(h) for h in handlers or ("h",))
    return Outcome(job.seq, JobState.DONE, job.attempts, NOW, None, job.token, results=ok)


async def claim_one(store: Store, *, now: float = NOW, interrupted: bool = False) -> Job:
    [job] = await store.claim(now=now, limit=1, lease=60, interrupted=interrupted)
    return job


async def state_of(store: Store, event_id: str) -> tuple[JobState, int]:
    stored = await store.get_event(event_id)
    assert stored is not None
    return stored.state, stored.attempts


# -- ingest ----------------------------------------------------------------------------
async def test_a_put_is_durable_and_deduplicated(store_url: str, store: Store) -> None:
    assert await store.put(ev("a")) is PutResult.STORED
    assert await store.put(ev("a", metric="opened")) is PutResult.DUPLICATE
    # Another store on the same URL (as after a restart, or another process) sees it.
    async with opened(store_url) as other:
        stored = await other.get_event("a")
        assert stored is not None
        assert (stored.metric, stored.state, stored.body) == (
            "delivered",
            JobState.PENDING,
            ev("a").raw,
        )
        assert await other.put(ev("a")) is PutResult.DUPLICATE


async def test_dedupe_holds_whatever_the_state(store: Store) -> None:
    for state in (JobState.RETRYING, JobState.DEAD, JobState.DONE):
        await store.put(ev(state.value))
        job = await claim_one(store)
        assert await store.finish([Outcome(job.seq, state, 1, NOW, None, job.token)], now=NOW)
        assert await store.put(ev(state.value)) is PutResult.DUPLICATE
    await store.put(ev("discarded"))
    assert await store.discard(EventFilter(event_ids=("discarded",)), now=NOW) == 1
    assert await store.put(ev("discarded")) is PutResult.DUPLICATE
    assert await store.put(ev("handled"), handled=True) is PutResult.STORED
    assert await store.put(ev("handled")) is PutResult.DUPLICATE
    assert await state_of(store, "handled") == (JobState.DONE, 0)


async def test_a_backfilled_or_handled_event_is_stored_done(store: Store) -> None:
    await store.put(dataclasses.replace(ev("back"), backfilled=True))
    await store.put(ev("nobody-wants-it"), handled=True)
    assert await store.claim(now=NOW + DAY, limit=10, lease=60) == []
    back = await store.get_event("back")
    assert back is not None
    assert (back.state, back.backfilled) == (JobState.DONE, True)


async def test_concurrent_puts_are_each_stored_once(store: Store) -> None:
    # Group commit is a backend detail; what callers see is each put acked once.
    results = await asyncio.gather(*(store.put(ev(f"e{i}")) for i in range(300)))
    assert results == [PutResult.STORED] * 300
    assert (await store.stats()).events == 300
    seen = [e.event_id async for e in store.iter_events(EventFilter())]
    assert sorted(seen) == sorted(f"e{i}" for i in range(300))


async def test_the_same_event_put_concurrently_is_stored_once(store: Store) -> None:
    results = await asyncio.gather(*(store.put(ev("twin")) for _ in range(5)), store.put(ev("x")))
    assert sorted(results[:5]) == [PutResult.DUPLICATE] * 4 + [PutResult.STORED]
    assert results[5] is PutResult.STORED
    assert (await store.stats()).events == 2


async def test_a_put_returns_only_after_its_commit(store_url: str, store: Store) -> None:
    # Whoever else looks (a new store: its own connections) finds every acked event.
    async with opened(store_url) as other:
        for i in range(20):
            assert await store.put(ev(f"c{i}")) is PutResult.STORED
            assert await other.get_event(f"c{i}") is not None


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda e: dataclasses.replace(e, timestamp=2**63), id="int-past-64-bits"),
        pytest.param(lambda e: dataclasses.replace(e, event_id="nul\x00id"), id="nul-in-event-id"),
        pytest.param(lambda e: dataclasses.replace(e, metric="nul\x00metric"), id="nul-in-metric"),
        pytest.param(
            lambda e: dataclasses.replace(e, event_id=secrets.token_hex(20000)),
            id="event-id-past-an-index-entry",
        ),
    ],
)
async def test_a_value_the_store_refuses_fails_only_its_own_put(store: Store, bad: object) -> None:
    assert callable(bad)
    refused = bad(ev("bad"))
    goods = [ev(f"ok{i}") for i in range(100)]
    results = await asyncio.gather(
        *(store.put(e) for e in [*goods[:50], refused, *goods[50:]]), return_exceptions=True
    )
    outcome = results.pop(50)
    assert results == [PutResult.STORED] * 100
    if isinstance(outcome, BaseException):
        # The caller's to handle (the receiver quarantines the body), never a 503.
        assert not isinstance(outcome, StoreUnavailable)
        assert await store.get_event(refused.event_id) is None  # nothing of it written
        assert (await store.stats()).events == 100
    else:  # this backend holds the value
        assert outcome is PutResult.STORED
    assert await store.put(ev("after")) is PutResult.STORED


async def test_a_nul_in_data_alone_does_not_keep_an_event_from_its_handlers(
    store: Store,
) -> None:
    # The body is kept as bytes; only the delivery_id column is text.  PostgreSQL
    # refused the whole event for a NUL in data.delivery_id (SQLite stored it).
    event = ev("nul-in-data", delivery_id="d\x00x", subject="a\x00b")
    assert await store.put(event) is PutResult.STORED
    stored = await store.get_event("nul-in-data")
    assert stored is not None
    assert stored.body == event.raw
    [job] = await store.claim(now=NOW, limit=10, lease=60)
    assert job.event_id == "nul-in-data"


async def test_the_receiver_keeps_an_event_the_store_refuses(store: Store) -> None:
    app = create_app(store, [KEY])
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await post_event(client, make_event("nul\x00id"))
    assert response.status_code == 200
    stats = await store.stats()
    assert stats.events + stats.quarantined == 1  # stored, or kept in quarantine


async def test_quarantine_keeps_raw_bytes(store: Store) -> None:
    ident = await store.quarantine(b"\x00\xffbinary", "body is not JSON", received_at=NOW)
    [kept] = await store.quarantined(ident=ident)
    assert (kept.body, kept.reason, kept.event_id, kept.received_at) == (
        b"\x00\xffbinary",
        "body is not JSON",
        None,
        NOW,
    )


async def test_a_quarantined_event_id_is_kept_once(store: Store) -> None:
    first = await store.quarantine(b"one", "odd", received_at=NOW, event_id="e1")
    again = await asyncio.gather(
        *(store.quarantine(b"two", "odd", received_at=NOW + 1, event_id="e1") for _ in range(3))
    )
    other = await store.quarantine(b"x", "not JSON", received_at=NOW)
    anonymous = await store.quarantine(b"x", "not JSON", received_at=NOW)
    assert again == [first] * 3
    assert len({first, other, anonymous}) == 3  # bodies without an event_id are all kept
    [kept] = await store.quarantined(ident=first)
    assert (kept.body, kept.event_id) == (b"one", "e1")
    assert (await store.stats()).quarantined == 3


async def test_release_stores_the_event_and_drops_the_quarantined_copy(store: Store) -> None:
    body = json.dumps(make_event("q1")).encode()
    ident = await store.quarantine(body, "old parser", received_at=NOW - 60, event_id="q1")
    event = parse_event(body, received_at=NOW - 60)
    assert await store.release_quarantined(ident, event) is PutResult.STORED
    assert await store.quarantined() == []
    stored = await store.get_event("q1")
    assert stored is not None
    assert (stored.state, stored.received_at, stored.body) == (JobState.PENDING, NOW - 60, body)
    again = await store.quarantine(body, "old parser", received_at=NOW, event_id="q1")
    assert await store.release_quarantined(again, event) is PutResult.DUPLICATE
    assert await store.quarantined() == []


async def test_purge_deletes_quarantined_bodies_received_before_the_cutoff(store: Store) -> None:
    for age in (10, 5, 1):
        await store.quarantine(b"x", "odd", received_at=NOW - age * DAY)
    assert await store.purge_quarantined(received_before=NOW - 3 * DAY) == 2
    [left] = await store.quarantined()
    assert left.received_at == NOW - DAY


async def test_quarantined_pages_newest_first_below_an_id(store: Store) -> None:
    ids = [await store.quarantine(b"x", "odd", received_at=NOW) for _ in range(5)]
    assert [q.id for q in await store.quarantined()] == ids[::-1]
    page = await store.quarantined(limit=2, before_id=ids[3])
    assert [q.id for q in page] == [ids[2], ids[1]]


async def test_close_commits_the_puts_already_queued(store_url: str) -> None:
    store = open_store(store_url)
    await store.open()
    puts = [asyncio.ensure_future(store.put(ev(f"q{i}"))) for i in range(50)]
    await asyncio.sleep(0)  # each put has queued its write
    await store.close()
    assert await asyncio.gather(*puts) == [PutResult.STORED] * 50
    async with opened(store_url) as again:
        assert (await again.stats()).events == 50


async def test_writes_after_close_fail_cleanly(store_url: str) -> None:
    store = open_store(store_url)
    await store.open()
    await store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.put(ev("late"))
    assert not await store.ready()


async def test_a_read_only_store_reads_and_writes_nothing(store_url: str, store: Store) -> None:
    await store.put(ev("a"))
    assert await store.ready()
    async with opened(store_url, readonly=True) as reader:
        assert [e.event_id async for e in reader.iter_events(EventFilter())] == ["a"]
        assert (await reader.stats()).events == 1
        with pytest.raises(StoreUnavailable):
            await reader.put(ev("b"))
        assert not await reader.ready()
    assert await store.get_event("b") is None


async def test_a_read_only_store_that_does_not_exist_is_unavailable(store_url: str) -> None:
    with pytest.raises(StoreUnavailable):
        await open_store(store_url, readonly=True).open()
    # ... and opening it created nothing: a writer still starts from scratch.
    async with opened(store_url) as store:
        assert (await store.stats()).events == 0


# -- queue -----------------------------------------------------------------------------
async def test_a_claim_counts_an_attempt_and_says_when_the_previous_one_never_finished(
    store: Store,
) -> None:
    await store.put(ev("a"))
    first = await claim_one(store)
    assert (first.attempts, first.interrupted, first.event_id) == (1, False, "a")
    assert first.body == ev("a").raw
    # counted before any handler runs: a crash cannot undo it
    assert await state_of(store, "a") == (JobState.PENDING, 1)
    # Held: neither kind of claim takes it while the lease runs.
    assert await store.claim(now=NOW + 59, limit=1, lease=60) == []
    assert await store.claim(now=NOW + 59, limit=1, lease=60, interrupted=True) == []
    assert not await store.interrupted_due(now=NOW + 59)
    # The process died: nothing was finished, and the lease expires.  Only an
    # interrupted claim takes it then (the dispatcher runs those one at a time).
    assert await store.interrupted_due(now=NOW + 61)
    assert await store.claim(now=NOW + 61, limit=1, lease=60) == []
    second = await claim_one(store, now=NOW + 61, interrupted=True)
    assert (second.attempts, second.interrupted) == (2, True)
    assert second.token != first.token


async def test_an_interrupted_claim_takes_only_events_whose_last_claim_never_finished(
    store: Store,
) -> None:
    await store.put(ev("fresh"))
    assert await store.claim(now=NOW, limit=5, lease=60, interrupted=True) == []
    assert not await store.interrupted_due(now=NOW)


async def test_claims_take_due_events_oldest_due_first_up_to_the_limit(store: Store) -> None:
    for i in range(5):
        await store.put(ev(f"e{i}", received_at=NOW - 10 + i))
    await store.put(ev("future", received_at=NOW + 100))
    jobs = await store.claim(now=NOW, limit=3, lease=60)
    assert [j.event_id for j in jobs] == ["e0", "e1", "e2"]
    assert len({j.token for j in jobs}) == 1  # one claim, one token
    rest = await store.claim(now=NOW, limit=10, lease=60)
    assert [j.event_id for j in rest] == ["e3", "e4"]
    assert rest[0].token != jobs[0].token


async def test_a_claim_records_events_no_handler_wants_as_done_without_counting_them(
    store: Store,
) -> None:
    for i in range(5):
        await store.put(ev(f"quiet{i}"))
    await store.put(ev("loud", metric="bounced"))
    await store.put(ev("loud2", metric="bounced"))

    def wanted(object_type: str, metric: str, backfilled: bool) -> bool:
        return metric == "bounced"

    [job] = await store.claim(now=NOW, limit=1, lease=60, wanted=wanted)
    assert job.event_id == "loud"
    for i in range(5):
        assert await state_of(store, f"quiet{i}") == (JobState.DONE, 0)
    # beyond the limit: untouched
    assert await state_of(store, "loud2") == (JobState.PENDING, 0)


async def test_extend_pushes_the_lease_of_claims_still_held(store: Store) -> None:
    await store.put(ev("a"))
    await store.put(ev("b"))
    a, b = await store.claim(now=NOW, limit=2, lease=60)
    assert await store.extend([a, b], until=NOW + 600) == 2
    assert not await store.interrupted_due(now=NOW + 61)  # the heartbeat kept it
    assert await store.claim(now=NOW + 61, limit=5, lease=60, interrupted=True) == []
    await store.requeue(EventFilter(event_ids=("b",)), now=NOW)
    assert await store.extend([a, b], until=NOW + 900) == 1  # b's claim ended
    assert await store.finish([done(a)], now=NOW + 1) == 1
    assert await store.extend([a], until=NOW + 1200) == 0  # finished: nothing held
    assert await store.extend([], until=NOW) == 0


async def test_a_failed_handler_retries_later_and_remembers_what_succeeded(store: Store) -> None:
    await store.put(ev("a"))
    job = await claim_one(store)
    failed = Outcome(
        job.seq,
        JobState.RETRYING,
        job.attempts,
        NOW + 30,
        "bad: boom",
        job.token,
        results=(HandlerResult("good"), HandlerResult("bad", error="boom")),
    )
    assert await store.finish([failed], now=NOW + 1) == 1
    stored = await store.get_event("a")
    assert stored is not None
    assert (stored.state, stored.attempts, stored.next_attempt_at, stored.last_error) == (
        JobState.RETRYING,
        1,
        NOW + 30,
        "bad: boom",
    )
    assert await store.claim(now=NOW + 29, limit=1, lease=60) == []  # backing off
    gauges = await store.gauges(now=NOW + 29)
    assert gauges.backlog == 1
    retry = await claim_one(store, now=NOW + 30)
    assert (retry.attempts, retry.succeeded, retry.interrupted) == (2, frozenset({"good"}), False)
    assert await store.finish([done(retry, "bad")], now=NOW + 31) == 1
    runs = await store.handler_runs(job.seq)
    assert runs == [
        HandlerRun("bad", "ok", 2, None, NOW + 31),
        HandlerRun("good", "ok", 1, None, NOW + 1),
    ]
    assert await state_of(store, "a") == (JobState.DONE, 2)


async def test_a_replay_made_while_handlers_run_wins_over_their_outcome(store: Store) -> None:
    await store.put(ev("a"))
    job = await claim_one(store)
    assert await store.requeue(EventFilter(event_ids=("a",)), now=NOW, rerun="*") == 1
    assert await store.finish([done(job)], now=NOW + 1) == 0
    stored = await store.get_event("a")
    assert stored is not None
    assert (stored.state, stored.attempts, stored.next_attempt_at) == (JobState.PENDING, 0, NOW)
    assert await store.handler_runs(job.seq) == []  # the replay re-runs every handler
    again = await claim_one(store)
    assert again.interrupted is False  # the requeue ended the old claim
    assert await store.finish([done(again)], now=NOW + 2) == 1
    assert [r.status for r in await store.handler_runs(job.seq)] == ["ok"]


async def test_a_discard_made_while_handlers_run_wins_over_their_outcome(store: Store) -> None:
    await store.put(ev("a"))
    job = await claim_one(store)
    assert await store.discard(EventFilter(event_ids=("a",)), now=NOW) == 1
    assert await store.finish([done(job)], now=NOW + 1) == 0
    assert await state_of(store, "a") == (JobState.DISCARDED, 1)
    assert await store.handler_runs(job.seq) == []


async def test_an_outcome_after_the_lease_expired_and_another_claim_is_dropped(
    store: Store,
) -> None:
    await store.put(ev("a"))
    stale = await claim_one(store)
    current = await claim_one(store, now=NOW + 61, interrupted=True)
    assert await store.finish([done(stale)], now=NOW + 62) == 0
    assert (await state_of(store, "a"))[0] is JobState.PENDING  # still the current claim's
    assert await store.finish([done(current)], now=NOW + 63) == 1
    assert await store.finish([done(current)], now=NOW + 64) == 0  # a claim finishes once
    assert [r.attempts for r in await store.handler_runs(current.seq)] == [1]


async def test_dead_letters_wait_for_a_human_then_replay(store: Store) -> None:
    await store.put(ev("a"))
    await store.put(ev("b"))
    jobs = await store.claim(now=NOW, limit=2, lease=60)
    outcomes = [
        Outcome(
            j.seq,
            JobState.DEAD,
            j.attempts,
            NOW,
            "gave up",
            j.token,
            results=(HandlerResult("ok-one"), HandlerResult("bad", error="gave up")),
        )
        for j in jobs
    ]
    assert await store.finish(outcomes, now=NOW) == 2
    gauges = await store.gauges(now=NOW)
    assert (gauges.dead_letters, gauges.backlog) == (2, 0)
    assert await store.claim(now=NOW + DAY, limit=5, lease=60) == []
    dead = [e.event_id async for e in store.iter_events(EventFilter(states=(JobState.DEAD,)))]
    assert dead == ["a", "b"]
    # dlq retry: due now, attempts from zero; the handler that succeeded stays done ...
    assert await store.requeue(EventFilter(event_ids=("a",)), now=NOW + 5) == 1
    retried = await claim_one(store, now=NOW + 5)
    assert (retried.event_id, retried.attempts, retried.succeeded) == (
        "a",
        1,
        frozenset({"ok-one"}),
    )
    # ... unless replay names it (or "*")
    assert await store.requeue(EventFilter(event_ids=("b",)), now=NOW + 5, rerun="ok-one") == 1
    replayed = await claim_one(store, now=NOW + 5)
    assert (replayed.event_id, replayed.succeeded) == ("b", frozenset())
    assert [r.handler for r in await store.handler_runs(replayed.seq)] == ["bad"]
    assert (await store.gauges(now=NOW + 5)).dead_letters == 0


async def test_requeue_and_discard_select_by_filter(store: Store) -> None:
    for i in range(30):
        await store.put(ev(f"e{i:02d}", metric="bounced" if i % 3 == 0 else "opened"))
    assert await store.discard(EventFilter(kinds=("email.opened",)), now=NOW) == 20
    assert (await store.stats()).states["discarded"] == 20
    assert await store.requeue(EventFilter(states=(JobState.DISCARDED,)), now=NOW + 1) == 20
    stats = await store.stats()
    assert (stats.states["pending"], stats.states["discarded"]) == (30, 0)


async def test_wait_for_work_returns_when_an_event_is_put(store: Store) -> None:
    await store.wait_for_work(0.01)  # whatever was pending before
    await store.wait_for_work(0.01)
    waiter = asyncio.create_task(store.wait_for_work(60))
    await asyncio.sleep(0)
    await store.put(ev("wake"))
    await asyncio.wait_for(waiter, 30)  # a deadline, not a timing: it returns on the put


async def test_wait_for_work_returns_after_the_timeout_when_nothing_comes(store: Store) -> None:
    await store.wait_for_work(0.01)
    await store.wait_for_work(0.01)
    await asyncio.wait_for(store.wait_for_work(0.2), 30)


# -- operations ------------------------------------------------------------------------
async def test_prune_ends_dedupe_only_for_old_finished_events(store: Store) -> None:
    for event_id, age_days in [("old-done", 40), ("old-dead", 40), ("new-done", 5)]:
        await store.put(ev(event_id, received_at=NOW - age_days * DAY))
    await store.put(ev("old-handled", received_at=NOW - 40 * DAY), handled=True)
    jobs = {j.event_id: j for j in await store.claim(now=NOW, limit=3, lease=60)}
    await store.put(ev("old-pending", received_at=NOW - 40 * DAY))
    await store.finish(
        [
            Outcome(jobs["old-done"].seq, JobState.DONE, 1, NOW, None, jobs["old-done"].token),
            Outcome(jobs["old-dead"].seq, JobState.DEAD, 3, NOW, "boom", jobs["old-dead"].token),
            Outcome(jobs["new-done"].seq, JobState.DONE, 1, NOW, None, jobs["new-done"].token),
        ],
        now=NOW,
    )
    assert await store.prune(received_before=NOW - 30 * DAY) == 2
    assert await store.get_event("old-done") is None
    assert await store.get_event("old-handled") is None
    assert await store.handler_runs(jobs["old-done"].seq) == []
    assert await store.get_event("old-dead") is not None  # a dead letter waits for a human
    assert await store.get_event("old-pending") is not None  # not handled yet
    assert await store.put(ev("new-done")) is PutResult.DUPLICATE
    assert await store.put(ev("old-done")) is PutResult.STORED  # its dedupe window ended


async def test_prune_removes_everything_due_in_several_chunks(store: Store) -> None:
    for i in range(25):
        await store.put(ev(f"old{i}", received_at=NOW - 40 * DAY), handled=True)
    await store.put(ev("recent", received_at=NOW), handled=True)
    prune = getattr(store, "prune")  # noqa: B009 - chunk is a backend keyword, not contract
    assert await prune(received_before=NOW - 30 * DAY, chunk=10) == 25
    assert (await store.stats()).events == 1


async def test_iter_events_filters_and_pages_in_arrival_order(store: Store) -> None:
    for i in range(25):
        metric = "bounced" if i % 5 == 0 else "delivered"
        await store.put(ev(f"e{i:02d}", received_at=NOW + i, metric=metric))
    everything = [e async for e in store.iter_events(EventFilter(), batch=7)]
    assert [e.event_id for e in everything] == [f"e{i:02d}" for i in range(25)]
    assert [e.seq for e in everything] == sorted(e.seq for e in everything)
    bounced = [
        e.event_id
        async for e in store.iter_events(EventFilter(kinds=("*.bounced",), since=NOW + 1), batch=2)
    ]
    assert bounced == ["e05", "e10", "e15", "e20"]
    window = EventFilter(since=NOW + 3, until=NOW + 6, kinds=("email.*", "push.sent"))
    assert [e.event_id async for e in store.iter_events(window)] == ["e03", "e04", "e05"]
    limited = [e.event_id async for e in store.iter_events(EventFilter(limit=3), batch=2)]
    assert limited == ["e00", "e01", "e02"]
    resumed = EventFilter(after_seq=everything[20].seq)
    assert [e.event_id async for e in store.iter_events(resumed)] == [
        f"e{i:02d}" for i in range(21, 25)
    ]
    chosen = EventFilter(event_ids=("e07", "e03", "missing"))
    assert [e.event_id async for e in store.iter_events(chosen)] == ["e03", "e07"]


async def test_a_stored_event_reads_back_as_it_was_put(store: Store) -> None:
    event = ev("a", received_at=NOW + 0.25, metric="clicked")
    await store.put(event)
    stored = await store.get_event("a")
    assert stored is not None
    assert stored == dataclasses.replace(
        stored,
        event_id="a",
        object_type="email",
        metric="clicked",
        occurred_at=event.timestamp,
        received_at=NOW + 0.25,
        state=JobState.PENDING,
        attempts=0,
        next_attempt_at=NOW + 0.25,
        last_error=None,
        backfilled=False,
    )
    assert stored.body == event.raw
    assert await store.get_event("nope") is None


async def test_stats_and_gauges_count_by_state_kind_and_age(store: Store) -> None:
    await store.put(ev("p1", received_at=NOW - 100))
    await store.put(ev("p2", received_at=NOW - 50, metric="opened"))
    await store.put(ev("h", received_at=NOW - 10, metric="opened"), handled=True)
    await store.quarantine(b"x", "odd", received_at=NOW)
    stats = await store.stats()
    assert stats.events == 3
    assert stats.states == {
        "pending": 2,
        "retrying": 0,
        "done": 1,
        "dead": 0,
        "discarded": 0,
    }
    assert stats.kinds == {"email.opened": 2, "email.delivered": 1}
    assert list(stats.kinds) == ["email.opened", "email.delivered"]  # most first
    assert stats.quarantined == 1
    assert stats.oldest_unfinished_received_at == NOW - 100
    gauges = await store.gauges(now=NOW)
    assert (gauges.backlog, gauges.dead_letters, gauges.quarantined) == (2, 0, 1)
    assert gauges.oldest_backlog_age_seconds == 100


async def test_stats_and_gauges_of_an_empty_store(store: Store) -> None:
    stats = await store.stats()
    assert (stats.events, stats.quarantined, stats.oldest_unfinished_received_at) == (0, 0, None)
    assert set(stats.states.values()) == {0}
    gauges = await store.gauges(now=NOW)
    assert gauges.backlog == gauges.dead_letters == gauges.quarantined == 0
    assert gauges.oldest_backlog_age_seconds == 0.0


async def test_delivery_metrics_by_when_it_occurred_or_else_arrived(store: Store) -> None:
    await store.put(ev("recent", metric="sent"))
    await store.put(ev("old", received_at=NOW, metric="sent", timestamp=NOW - 10 * DAY))
    # Stored with occurred_at NULL ("timestamp": "nan"): still received, so reconcile
    # must not take them for missing and backfill a second copy.
    for event_id, metric in [("t1", "sent"), ("t2", "opened")]:
        body = json.dumps({**make_event(event_id, metric=metric), "timestamp": "nan"}).encode()
        stored = parse_event(body, received_at=NOW)
        assert stored.timestamp is None
        await store.put(stored)
    await store.put(ev("no-delivery", delivery_id=None))
    found = await store.delivery_metrics(occurred_since=NOW - DAY)
    assert found == {("dlv-recent", "sent"), ("dlv-t1", "sent"), ("dlv-t2", "opened")}
    assert await store.delivery_metrics(occurred_since=NOW + 1) == set()


# -- store copy ------------------------------------------------------------------------
async def test_import_events_keeps_states_attempts_times_and_runs(
    store: Store, tmp_path: Path
) -> None:
    async with opened(f"sqlite://{tmp_path}/source.db") as source:
        for i in range(4):
            await source.put(ev(f"e{i}", received_at=NOW + i))
        a, b, _c = await source.claim(now=NOW + 10, limit=3, lease=60)
        await source.finish(
            [
                done(a, "h1", "h2"),
                Outcome(
                    b.seq,
                    JobState.DEAD,
                    1,
                    NOW,
                    "boom",
                    b.token,
                    results=(HandlerResult("h1", error="boom"),),
                ),
            ],
            now=NOW + 11,
        )  # e2 stays claimed, e3 pending
        rows = [
            (e, await source.handler_runs(e.seq)) async for e in source.iter_events(EventFilter())
        ]
    await store.put(ev("e3"))  # already here: skipped
    assert await store.import_events(rows[:2]) == 2
    assert await store.import_events(rows[2:]) == 1
    assert await store.import_events(rows) == 0
    copied = [e async for e in store.iter_events(EventFilter())]
    assert [e.event_id for e in copied] == ["e3", "e0", "e1", "e2"]  # new seqs, given order
    for mine, (theirs, runs) in zip(copied[1:], rows[:3], strict=True):
        assert dataclasses.replace(mine, seq=theirs.seq) == theirs
        assert mine.body == theirs.body
        assert await store.handler_runs(mine.seq) == list(runs)
    # The claim held in the source is not copied: the event is due again, not interrupted.
    jobs = {j.event_id: j for j in await store.claim(now=NOW + 100, limit=5, lease=60)}
    job = jobs["e2"]
    assert (job.event_id, job.interrupted, job.attempts) == ("e2", False, 2)
    assert await store.delivery_metrics(occurred_since=0) >= {("dlv-e0", "delivered")}


async def test_import_quarantined_keeps_order_and_skips_known_event_ids(store: Store) -> None:
    from cio_webhooks.store import Quarantined

    await store.quarantine(b"mine", "odd", received_at=NOW, event_id="q2")
    items = [
        Quarantined(id=7, received_at=NOW - 3, event_id=None, reason="not JSON", body=b"\x00a"),
        Quarantined(id=8, received_at=NOW - 2, event_id="q1", reason="odd", body=b"b"),
        Quarantined(id=9, received_at=NOW - 1, event_id="q2", reason="odd", body=b"c"),
    ]
    assert await store.import_quarantined(items) == 2
    kept = await store.quarantined()
    assert [(q.event_id, q.body) for q in kept] == [("q1", b"b"), (None, b"\x00a"), ("q2", b"mine")]
    assert await store.import_quarantined(items[1:]) == 0


# -- watch: the dashboard and the alerts -----------------------------------------------
def raw(event_id: str, received_at: float = NOW, **data: Any) -> Event:
    """An event whose body holds its text as UTF-8 (as Customer.io sends it), not as
    ``\\u`` escapes."""
    body = json.dumps(make_event(event_id, **data), ensure_ascii=False).encode()
    return parse_event(body, received_at=received_at)


async def ids(store: Store, where: EventFilter) -> list[str]:
    return [e.event_id async for e in store.iter_events(where)]


async def test_the_text_filter_finds_the_text_in_the_body_whatever_its_ascii_case(
    store: Store,
) -> None:
    await store.put(raw("a", subject="Your ORDER has shipped"))
    await store.put(raw("b", subject="order 42"))
    await store.put(raw("c", subject="nothing here"))
    assert await ids(store, EventFilter(text="Order")) == ["a", "b"]
    assert await ids(store, EventFilter(text="HAS SHIPPED")) == ["a"]
    assert await ids(store, EventFilter(text='"subject": "order')) == ["b"]  # raw JSON text
    assert await ids(store, EventFilter(text="missing")) == []
    # A substring, not a pattern: % and _ are themselves.
    assert await ids(store, EventFilter(text="%")) == []
    assert await ids(store, EventFilter(text="order_")) == []
    assert await ids(store, EventFilter(text="", kinds=("email.delivered",))) == ["a", "b", "c"]


async def test_the_text_filter_folds_only_ascii_letters_in_multi_byte_text(
    store: Store,
) -> None:
    await store.put(raw("de", subject="Grüße aus Köln"))
    await store.put(raw("fr", subject="Élodie, café"))
    assert await ids(store, EventFilter(text="grüße")) == ["de"]
    assert await ids(store, EventFilter(text="GRüßE AUS KöLN")) == ["de"]
    assert await ids(store, EventFilter(text="KÖLN")) == []  # Ö is not an ASCII letter
    assert await ids(store, EventFilter(text="élodie")) == []
    assert await ids(store, EventFilter(text="ÉLODIE, CAFé")) == ["fr"]


async def test_a_body_that_is_not_valid_utf8_does_not_fail_a_search(store: Store) -> None:
    body = json.dumps(make_event("latin1", subject="caf@")).encode().replace(b"@", b"\xe9\xff")
    await store.put(parse_event(body, received_at=NOW))
    await store.put(raw("fine", subject="Café"))
    assert await ids(store, EventFilter(text="CAF")) == ["latin1", "fine"]
    assert await ids(store, EventFilter(text="café")) == ["fine"]
    # A body no receiver stores (a NUL is not JSON) but a copy may bring: searched
    # alike, and no text matches across the NUL.
    nul = dataclasses.replace(
        (await store.browse(EventFilter(event_ids=("fine",))))[0],
        event_id="nul",
        body=b'{"x": "\x00Needle\xff"}',
    )
    assert await store.import_events([(nul, [])]) == 1
    assert await ids(store, EventFilter(text="nEEDLE")) == ["nul"]
    assert await ids(store, EventFilter(text='"needle')) == []
    assert await ids(store, EventFilter(text="absent")) == []


async def test_requeue_and_discard_honour_the_text_filter(store: Store) -> None:
    for i in range(6):
        await store.put(raw(f"e{i}", subject="Refund" if i % 2 else "Welcome"))
    assert await store.discard(EventFilter(text="REFUND"), now=NOW) == 3
    stats = await store.stats()
    assert (stats.states["discarded"], stats.states["pending"]) == (3, 3)
    discarded = EventFilter(states=(JobState.DISCARDED,))
    assert await ids(store, discarded) == ["e1", "e3", "e5"]
    assert await store.requeue(dataclasses.replace(discarded, text="nothing"), now=NOW) == 0
    assert await store.requeue(EventFilter(text="refund", event_ids=("e3",)), now=NOW) == 1
    assert await ids(store, discarded) == ["e1", "e5"]


async def test_browse_pages_newest_first_from_a_cursor(store: Store) -> None:
    for i in range(25):
        await store.put(ev(f"e{i:02d}", received_at=NOW + i))
    first = await store.browse(EventFilter(), limit=10)
    assert [e.event_id for e in first] == [f"e{i:02d}" for i in range(24, 14, -1)]
    second = await store.browse(EventFilter(), before_seq=first[-1].seq, limit=10)
    assert [e.event_id for e in second] == [f"e{i:02d}" for i in range(14, 4, -1)]
    third = await store.browse(EventFilter(), before_seq=second[-1].seq, limit=10)
    assert [e.event_id for e in third] == [f"e{i:02d}" for i in range(4, -1, -1)]
    assert await store.browse(EventFilter(), before_seq=third[-1].seq) == []
    assert len(await store.browse(EventFilter())) == 25  # 50 a page by default
    assert third[-1] == await store.get_event("e00")  # whole events, body and all


async def test_browse_honours_every_filter_field(store: Store) -> None:
    for i in range(20):
        metric = "bounced" if i % 4 == 0 else "delivered"
        await store.put(ev(f"e{i:02d}", received_at=NOW + i, metric=metric, subject=f"s{i:02d}"))
    await store.discard(EventFilter(event_ids=("e08", "e09")), now=NOW)
    every = {e.event_id: e for e in await store.browse(EventFilter())}

    async def browse(**where: object) -> list[str]:
        found = await store.browse(EventFilter(**where))  # type: ignore[arg-type]
        return [e.event_id for e in found]

    assert await browse(kinds=("*.bounced",)) == ["e16", "e12", "e08", "e04", "e00"]
    assert await browse(since=NOW + 5, until=NOW + 8) == ["e07", "e06", "e05"]
    assert await browse(states=(JobState.DISCARDED,)) == ["e09", "e08"]
    assert await browse(event_ids=("e03", "e17", "nope")) == ["e17", "e03"]
    assert await browse(text="S1") == [f"e{i}" for i in range(19, 9, -1)]
    assert await browse(after_seq=every["e16"].seq) == ["e19", "e18", "e17"]
    assert await browse(limit=2, kinds=("bounced",)) == ["e16", "e12"]
    page = await store.browse(
        EventFilter(kinds=("email.delivered",), text="s1"), before_seq=every["e14"].seq, limit=3
    )
    assert [e.event_id for e in page] == ["e13", "e11", "e10"]


async def test_recorded_traffic_replaces_a_process_minute_and_sums_over_processes(
    store: Store,
) -> None:
    from cio_webhooks.store import ACK_BUCKETS, TrafficMinute

    m0, m1, m2 = NOW - NOW % 60, NOW - NOW % 60 + 60, NOW - NOW % 60 + 120
    zeros = (0,) * (len(ACK_BUCKETS) + 1)
    ack = tuple(range(1, len(ACK_BUCKETS) + 2))
    await store.record_traffic("a", [TrafficMinute(m0, stored=1, ack=(1, *zeros[1:]))])
    # The running totals of the minute, written again: the last write is what counts.
    running = TrafficMinute(m0, stored=5, duplicate=1, rejected_signature=2, ack=ack)
    await store.record_traffic("a", [running, TrafficMinute(m1, stored=3, ack=zeros)])
    await store.record_traffic("a", [running])  # a retried write changes nothing
    await store.record_traffic(
        "b",
        [
            TrafficMinute(m0, stored=2, quarantined=4, too_large=1, store_unavailable=6, ack=ack),
            TrafficMinute(m2, rejected_signature=7),  # nothing answered: no buckets
        ],
    )
    await store.record_traffic("b", [])
    assert await store.traffic(since=m0) == [
        TrafficMinute(
            m0,
            stored=7,
            duplicate=1,
            quarantined=4,
            rejected_signature=2,
            too_large=1,
            store_unavailable=6,
            ack=tuple(2 * n for n in ack),
        ),
        TrafficMinute(m1, stored=3, ack=zeros),
        TrafficMinute(m2, rejected_signature=7, ack=()),
    ]
    assert [t.minute for t in await store.traffic(since=m1)] == [m1, m2]
    assert await store.traffic(since=m2 + 1) == []
    # A minute where one process answered nothing and another did: zeros added.
    await store.record_traffic("a", [TrafficMinute(m2, stored=1, ack=ack)])
    [last] = await store.traffic(since=m2)
    assert (last.stored, last.rejected_signature, last.ack) == (1, 7, ack)


async def test_prune_drops_the_traffic_of_minutes_before_the_cutoff(store: Store) -> None:
    from cio_webhooks.store import TrafficMinute

    minutes = [NOW - 40 * DAY, NOW - 31 * DAY, NOW - 30 * DAY, NOW - DAY]
    await store.record_traffic("a", [TrafficMinute(m, stored=1) for m in minutes])
    assert await store.prune(received_before=NOW - 30 * DAY) == 0  # no event pruned
    assert [t.minute for t in await store.traffic(since=0)] == minutes[2:]


async def test_kind_counts_count_events_received_since_without_backfilled_ones(
    store: Store,
) -> None:
    await store.put(ev("old", received_at=NOW - 100))
    await store.put(ev("d1", received_at=NOW - 10))
    await store.put(ev("d2", received_at=NOW), handled=True)
    await store.put(ev("o1", received_at=NOW - 10, metric="opened"))
    await store.put(ev("p1", received_at=NOW - 5, object_type="push", metric="sent"))
    await store.put(dataclasses.replace(ev("back", received_at=NOW), backfilled=True))
    assert await store.kind_counts(since=NOW - 10) == {
        ("email", "delivered"): 2,
        ("email", "opened"): 1,
        ("push", "sent"): 1,
    }
    assert await store.kind_counts(since=NOW - 1000) == {
        ("email", "delivered"): 3,
        ("email", "opened"): 1,
        ("push", "sent"): 1,
    }
    assert await store.kind_counts(since=NOW + 1) == {}


async def test_last_received_at_is_the_newest_event_not_backfilled(store: Store) -> None:
    assert await store.last_received_at() is None
    await store.put(dataclasses.replace(ev("back", received_at=NOW + 50), backfilled=True))
    assert await store.last_received_at() is None
    await store.put(ev("b", received_at=NOW + 0.5))
    await store.put(ev("a", received_at=NOW - 10))  # arrived later, received earlier
    assert await store.last_received_at() == NOW + 0.5


async def test_swap_alert_inserts_a_state_once_then_changes_it_from_its_version(
    store: Store,
) -> None:
    from cio_webhooks.store import AlertState

    assert await store.alert_states() == []
    firing = AlertState("no-events", True, 12.5, NOW, None, version=99)  # version: ignored
    assert await store.swap_alert(firing, expected=None)
    assert not await store.swap_alert(firing, expected=None)  # one is recorded already
    assert await store.alert_states() == [dataclasses.replace(firing, version=1)]
    notified = dataclasses.replace(firing, notified_at=NOW + 1)
    assert await store.swap_alert(notified, expected=1)
    assert not await store.swap_alert(notified, expected=1)  # stale: it is at 2 now
    assert not await store.swap_alert(notified, expected=5)
    resolved = AlertState("no-events", False, None, NOW + 2, NOW + 2)
    assert await store.swap_alert(resolved, expected=2)
    assert not await store.swap_alert(resolved, expected=None)
    assert not await store.swap_alert(AlertState("other", True, 1.0, NOW, None), expected=0)
    assert await store.swap_alert(AlertState("burst-401", True, 30.0, NOW, NOW), expected=None)
    assert await store.alert_states() == [
        AlertState("burst-401", True, 30.0, NOW, NOW, 1),
        AlertState("no-events", False, None, NOW + 2, NOW + 2, 3),
    ]


async def test_of_two_stores_swapping_one_alert_at_once_exactly_one_wins(
    store_url: str, store: Store
) -> None:
    from cio_webhooks.store import AlertState

    async with opened(store_url) as other:
        expected: int | None = None
        for round_ in range(20):
            mine = AlertState("dead-letters", round_ % 2 == 0, float(round_), NOW + round_, None)
            theirs = dataclasses.replace(mine, value=-1.0)
            won = await asyncio.gather(
                store.swap_alert(mine, expected=expected),
                other.swap_alert(theirs, expected=expected),
            )
            assert sorted(won) == [False, True]
            [state] = await other.alert_states()
            assert state == dataclasses.replace(mine if won[0] else theirs, version=round_ + 1)
            expected = state.version


async def test_a_read_only_store_serves_the_dashboard_reads(store_url: str, store: Store) -> None:
    from cio_webhooks.store import AlertState, TrafficMinute

    await store.put(ev("a", subject="Findme"))
    await store.record_traffic("r", [TrafficMinute(NOW, stored=1)])
    await store.swap_alert(AlertState("r", True, 1.0, NOW, None), expected=None)
    async with opened(store_url, readonly=True) as reader:
        assert [e.event_id for e in await reader.browse(EventFilter(text="FINDME"))] == ["a"]
        assert await reader.traffic(since=0) == [TrafficMinute(NOW, stored=1)]
        assert await reader.kind_counts(since=0) == {("email", "delivered"): 1}
        assert await reader.last_received_at() == NOW
        assert [s.rule for s in await reader.alert_states()] == ["r"]
        with pytest.raises(StoreUnavailable):
            await reader.record_traffic("r", [TrafficMinute(NOW, stored=2)])
        with pytest.raises(StoreUnavailable):
            await reader.swap_alert(AlertState("r", False, None, NOW, None), expected=1)
    assert await store.traffic(since=0) == [TrafficMinute(NOW, stored=1)]


async def test_operator_actions_read_back_newest_first_up_to_the_limit(store: Store) -> None:
    from cio_webhooks.store import OperatorAction

    assert await store.operator_actions() == []
    first = OperatorAction(NOW, "admin", "dlq_retry", 3, "every dead letter matching metric=x")
    later = OperatorAction(NOW + 5, "cli:ops", "dlq_discard", 1, "dead letter ev-1")
    same_time = OperatorAction(NOW + 5, "token", "quarantine_reingest", 0, "")
    earlier = OperatorAction(NOW - 60, "admin", "dlq_retry", 2, "dead letters a, b")
    for action in (first, later, same_time, earlier):  # recorded out of time order
        await store.record_operator_action(action)
    # by time, newest first; of two at one time, the one recorded last first
    assert await store.operator_actions() == [same_time, later, first, earlier]
    assert await store.operator_actions(limit=2) == [same_time, later]
    assert await store.operator_actions(limit=0) == []


async def test_an_operator_action_keeps_1000_characters_of_any_text(store: Store) -> None:
    from cio_webhooks.store import OperatorAction

    await store.record_operator_action(
        OperatorAction(NOW, "ad\x00min", "dlq_retry", 1, "q=\x00\udcff " + "x" * 2000)
    )
    [kept] = await store.operator_actions()
    assert kept.user == "ad\\x00min"
    assert kept.detail.startswith("q=\\x00\\udcff xx")
    assert len(kept.detail) == 1000
    assert kept.detail.endswith("x\u2026")


async def test_two_stores_on_one_store_list_each_others_operator_actions(
    store_url: str, store: Store
) -> None:
    from cio_webhooks.store import OperatorAction

    async with opened(store_url) as other:
        mine = OperatorAction(NOW, "admin", "dlq_retry", 1, "dead letter a")
        theirs = OperatorAction(NOW + 1, "cli:ops", "dlq_discard", 2, "every dead letter")
        await store.record_operator_action(mine)
        await other.record_operator_action(theirs)
        assert await store.operator_actions() == [theirs, mine]
        assert await other.operator_actions() == [theirs, mine]


async def test_prune_drops_the_operator_actions_taken_before_the_cutoff(store: Store) -> None:
    from cio_webhooks.store import OperatorAction

    times = [NOW - 40 * DAY, NOW - 30 * DAY, NOW - DAY]
    for at in times:
        await store.record_operator_action(OperatorAction(at, "admin", "dlq_retry", 1, ""))
    assert await store.prune(received_before=NOW - 30 * DAY) == 0  # no event pruned
    assert [a.at for a in await store.operator_actions()] == [NOW - DAY, NOW - 30 * DAY]


async def test_a_read_only_store_lists_operator_actions_and_records_none(
    store_url: str, store: Store
) -> None:
    from cio_webhooks.store import OperatorAction

    done = OperatorAction(NOW, "admin", "dlq_retry", 1, "dead letter a")
    await store.record_operator_action(done)
    async with opened(store_url, readonly=True) as reader:
        assert await reader.operator_actions() == [done]
        with pytest.raises(StoreUnavailable):
            await reader.record_operator_action(done)
    assert await store.operator_actions() == [done]


# -- dashboard sessions ended by a logout ---------------------------------------------
async def test_a_session_ended_in_one_store_is_ended_in_every_store_on_it(
    store_url: str, store: Store
) -> None:
    async with opened(store_url) as other:
        assert not await store.session_revoked("sid-a")
        await store.revoke_session("sid-a", until=NOW + 3600)
        assert await store.session_revoked("sid-a")
        assert await other.session_revoked("sid-a")  # another process on the store
        assert not await other.session_revoked("sid-b")
        assert not await other.session_revoked("")


async def test_prune_forgets_ended_sessions_whose_cookies_expired_before_the_cutoff(
    store: Store,
) -> None:
    await store.revoke_session("expired", until=NOW - 40 * DAY)
    await store.revoke_session("live", until=NOW + 3600)
    # ended twice: the later until is kept, whichever came first
    await store.revoke_session("extended", until=NOW - 40 * DAY)
    await store.revoke_session("extended", until=NOW + 3600)
    await store.revoke_session("not-shortened", until=NOW + 3600)
    await store.revoke_session("not-shortened", until=NOW - 40 * DAY)
    assert await store.prune(received_before=NOW - 30 * DAY) == 0
    assert not await store.session_revoked("expired")
    for sid in ("live", "extended", "not-shortened"):
        assert await store.session_revoked(sid), sid


async def test_a_read_only_store_sees_ended_sessions_and_ends_none(
    store_url: str, store: Store
) -> None:
    await store.revoke_session("sid-a", until=NOW + 3600)
    async with opened(store_url, readonly=True) as reader:
        assert await reader.session_revoked("sid-a")
        assert not await reader.session_revoked("sid-b")
        with pytest.raises(StoreUnavailable):
            await reader.revoke_session("sid-b", until=NOW + 3600)
    assert not await store.session_revoked("sid-b")
