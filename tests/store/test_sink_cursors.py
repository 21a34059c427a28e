"""The sink cursor contract (``SinkCursors`` in ``store/_contract.py``), run against
every backend: where each warehouse sink's loader stands, who may move it on, how it
has been failing, and what ``prune`` keeps for it.

A "loader" is an owner name; two loaders in separate processes are two stores on one
URL (connections of their own), as in ``test_ledger_contract.py``.
"""

from __future__ import annotations

import asyncio

from cio_webhooks import EventFilter
from cio_webhooks.store import SinkState, Store

from ..conftest import NOW
from .conftest import ev, opened

DAY = 86400
LEASE = 60


async def seqs(store: Store) -> list[int]:
    return [e.seq async for e in store.iter_events(EventFilter())]


async def state(store: Store, name: str) -> SinkState:
    [found] = [s for s in await store.sink_states() if s.name == name]
    return found


async def leased(store: Store, name: str = "wh", owner: str = "a", *, now: float = NOW) -> None:
    """Sink ``name``, registered and leased by ``owner``."""
    await store.register_sink(name, f"sqlite:///{name}.db", now=now)
    assert await store.lease_sink(name, owner, now=now, until=now + LEASE)


# -- register, lease -------------------------------------------------------------------
async def test_a_new_sink_starts_before_the_first_event_and_keeps_its_cursor(
    store: Store,
) -> None:
    assert await store.register_sink("wh", "sqlite:///old.db", now=NOW) == SinkState(
        name="wh",
        url="sqlite:///old.db",
        seq=0,
        updated_at=None,
        last_received_at=None,
        error=None,
        error_at=None,
        failures=0,
        owner=None,
        lease_until=None,
    )
    assert await store.lease_sink("wh", "a", now=NOW, until=NOW + LEASE)
    assert await store.advance_sink(
        "wh", "a", from_seq=0, to_seq=7, last_received_at=NOW - 5, now=NOW
    )
    # Registered again (a restart, a new URL for the same sink): where it stands is kept.
    again = await store.register_sink("wh", "sqlite:///new.db", now=NOW + 1)
    assert (again.url, again.seq, again.owner) == ("sqlite:///new.db", 7, "a")
    assert await store.sink_states() == [again]


async def test_one_loader_at_a_time_holds_a_sink_until_its_lease_runs_out(
    store: Store,
) -> None:
    await store.register_sink("wh", "sqlite:///wh.db", now=NOW)
    assert await store.lease_sink("wh", "a", now=NOW, until=NOW + LEASE)
    assert not await store.lease_sink("wh", "b", now=NOW + 1, until=NOW + 1 + LEASE)
    assert await store.lease_sink("wh", "a", now=NOW + 30, until=NOW + 30 + LEASE)  # renewed
    assert not await store.lease_sink("wh", "b", now=NOW + LEASE, until=NOW + 2 * LEASE)
    # a stopped renewing: once its lease has run out, b takes over, and a is out.
    assert await store.lease_sink("wh", "b", now=NOW + 30 + LEASE, until=NOW + 30 + 2 * LEASE)
    assert not await store.lease_sink("wh", "a", now=NOW + 31 + LEASE, until=NOW + 2 * LEASE)
    current = await state(store, "wh")
    assert (current.owner, current.lease_until) == ("b", NOW + 30 + 2 * LEASE)


async def test_a_sink_nobody_registered_cannot_be_leased(store: Store) -> None:
    assert not await store.lease_sink("nobody", "a", now=NOW, until=NOW + LEASE)
    assert await store.sink_states() == []


async def test_two_loaders_leasing_at_once_never_both_get_the_sink(
    store_url: str, store: Store
) -> None:
    await store.register_sink("wh", "sqlite:///wh.db", now=NOW)
    async with opened(store_url) as other:
        for attempt in range(10):
            now = NOW + attempt * 2 * LEASE  # each round starts with the last lease run out
            won = await asyncio.gather(
                store.lease_sink("wh", "a", now=now, until=now + LEASE),
                other.lease_sink("wh", "b", now=now, until=now + LEASE),
            )
            assert sorted(won) == [False, True]
            assert (await state(store, "wh")).owner == ("a" if won[0] else "b")


# -- advance, rewind, failures ---------------------------------------------------------
async def test_only_the_owner_advances_and_only_from_where_the_cursor_is(store: Store) -> None:
    await leased(store, owner="a")
    assert not await store.advance_sink(
        "wh", "b", from_seq=0, to_seq=5, last_received_at=NOW, now=NOW
    )
    assert await store.advance_sink(
        "wh", "a", from_seq=0, to_seq=5, last_received_at=NOW - 9, now=NOW + 1
    )
    # The same batch advanced twice (a retried call): the second finds the cursor moved.
    assert not await store.advance_sink(
        "wh", "a", from_seq=0, to_seq=5, last_received_at=NOW - 9, now=NOW + 2
    )
    current = await state(store, "wh")
    assert (current.seq, current.updated_at, current.last_received_at) == (5, NOW + 1, NOW - 9)


async def test_a_lease_that_ran_out_with_nobody_taking_over_still_lets_its_owner_advance(
    store: Store,
) -> None:
    await leased(store, owner="a")  # until NOW + LEASE; a slow write outlasts it
    assert await store.advance_sink(
        "wh", "a", from_seq=0, to_seq=5, last_received_at=NOW, now=NOW + 10 * LEASE
    )
    assert await store.lease_sink("wh", "b", now=NOW + 10 * LEASE, until=NOW + 11 * LEASE)
    assert not await store.advance_sink(
        "wh", "a", from_seq=5, to_seq=9, last_received_at=NOW, now=NOW + 10 * LEASE
    )
    assert (await state(store, "wh")).seq == 5


async def test_a_rewind_while_a_batch_loads_wins_over_its_advance(store: Store) -> None:
    for i, age in enumerate((30, 20, 10)):
        await store.put(ev(f"e{i}", received_at=NOW - age))
    first, second, third = await seqs(store)
    await leased(store)
    # The loader reads the batch after `third`... an operator replays from `first`...
    assert await store.advance_sink(
        "wh", "a", from_seq=0, to_seq=third, last_received_at=NOW - 10, now=NOW
    )
    assert await store.rewind_sink("wh", first, now=NOW + 1)
    # ...so the loader's advance finds the cursor moved, and loads from `first` next.
    assert not await store.advance_sink(
        "wh", "a", from_seq=third, to_seq=third + 10, last_received_at=NOW, now=NOW + 2
    )
    current = await state(store, "wh")
    assert (current.seq, current.updated_at, current.last_received_at) == (
        first,
        NOW + 1,
        NOW - 30,  # the event the cursor now stands at
    )
    assert await store.advance_sink(
        "wh", "a", from_seq=first, to_seq=second, last_received_at=NOW - 20, now=NOW + 3
    )


async def test_rewinding_a_sink_nobody_registered_says_so(store: Store) -> None:
    assert not await store.rewind_sink("nobody", 0, now=NOW)
    assert await store.sink_states() == []


async def test_failures_count_up_until_a_load_succeeds(store: Store) -> None:
    await leased(store, owner="a")
    await store.sink_failed("wh", "a", "connection refused", now=NOW + 1)
    await store.sink_failed("wh", "a", "x" * 5000, now=NOW + 2)
    failing = await state(store, "wh")
    assert (failing.failures, failing.error_at) == (2, NOW + 2)
    assert failing.error is not None
    assert len(failing.error) == 1000
    assert failing.error.startswith("xxx")
    # Another loader, while a holds the sink, does not speak for it.
    await store.sink_failed("wh", "b", "not mine", now=NOW + 3)
    assert await state(store, "wh") == failing
    assert await store.advance_sink(
        "wh", "a", from_seq=0, to_seq=3, last_received_at=NOW, now=NOW + 4
    )
    healed = await state(store, "wh")
    assert (healed.error, healed.error_at, healed.failures) == (None, None, 0)


async def test_a_failure_text_with_a_nul_is_kept(store: Store) -> None:
    await leased(store)
    await store.sink_failed("wh", "a", "bad byte \x00 in row", now=NOW)
    assert (await state(store, "wh")).error == "bad byte \\x00 in row"


# -- backlog, replay -------------------------------------------------------------------
async def test_the_backlog_counts_events_after_a_cursor_and_dates_the_first(
    store: Store,
) -> None:
    assert await store.sink_backlog(0) == (0, None)
    for i, age in enumerate((30, 20, 10)):
        await store.put(ev(f"e{i}", received_at=NOW - age), handled=i == 1)
    first, second, third = await seqs(store)
    assert await store.sink_backlog(0) == (3, NOW - 30)  # whatever their state
    assert await store.sink_backlog(first) == (2, NOW - 20)
    assert await store.sink_backlog(second, limit=10) == (1, NOW - 10)
    assert await store.sink_backlog(third) == (0, None)
    assert await store.sink_backlog(0, limit=2) == (2, NOW - 30)


async def test_seq_before_is_the_last_event_received_before_a_time(store: Store) -> None:
    assert await store.seq_before(NOW) == 0
    for i, age in enumerate((30, 20, 10)):
        await store.put(ev(f"e{i}", received_at=NOW - age))
    first, _, third = await seqs(store)
    assert await store.seq_before(NOW - 100) == 0
    assert await store.seq_before(NOW - 20) == first  # received at the time: replayed
    assert await store.seq_before(NOW - 19) == first + 1
    assert await store.seq_before(NOW) == third


async def test_seq_before_misses_no_event_received_since_when_seq_and_arrival_disagree(
    store: Store,
) -> None:
    # A receiver whose clock is behind stores a later seq with an earlier time.
    await store.put(ev("early", received_at=NOW - 30))
    await store.put(ev("since", received_at=NOW - 20))
    await store.put(ev("slow-clock", received_at=NOW - 25))
    early, since, slow = await seqs(store)
    assert slow > since
    # The last event received before NOW - 20 is `slow-clock`: from there, `since`
    # would never be loaded again.
    assert await store.seq_before(NOW - 20) == early


# -- forget, prune ---------------------------------------------------------------------
async def test_forget_drops_a_cursor_and_states_list_the_rest_by_name(store: Store) -> None:
    for name in ("pg", "bq", "parquet"):
        await store.register_sink(name, f"{name}://somewhere", now=NOW)
    assert [s.name for s in await store.sink_states()] == ["bq", "parquet", "pg"]
    assert await store.forget_sink("parquet")
    assert not await store.forget_sink("parquet")
    assert [s.name for s in await store.sink_states()] == ["bq", "pg"]
    assert not await store.lease_sink("parquet", "a", now=NOW, until=NOW + LEASE)


async def test_prune_keeps_old_events_a_sink_has_not_loaded_until_it_is_forgotten(
    store: Store,
) -> None:
    for i in range(5):
        await store.put(ev(f"old{i}", received_at=NOW - 40 * DAY), handled=True)
    await store.put(ev("recent", received_at=NOW), handled=True)
    old = (await seqs(store))[:5]
    await leased(store, "behind")
    await leased(store, "ahead")
    assert await store.advance_sink(
        "behind", "a", from_seq=0, to_seq=old[1], last_received_at=NOW - 40 * DAY, now=NOW
    )
    assert await store.advance_sink(
        "ahead", "a", from_seq=0, to_seq=old[3], last_received_at=NOW - 40 * DAY, now=NOW
    )
    # The sink furthest behind decides: it has loaded old0 and old1 only.
    assert await store.prune(received_before=NOW - 30 * DAY) == 2
    assert (await seqs(store))[:3] == old[2:]
    assert await store.forget_sink("behind")  # now "ahead" decides: old2 and old3 go
    assert await store.prune(received_before=NOW - 30 * DAY) == 2
    assert await store.forget_sink("ahead")
    assert await store.prune(received_before=NOW - 30 * DAY) == 1
    assert [e.event_id async for e in store.iter_events(EventFilter())] == ["recent"]


async def test_a_sink_that_has_loaded_nothing_yet_keeps_every_event(store: Store) -> None:
    await store.put(ev("old", received_at=NOW - 40 * DAY), handled=True)
    await store.register_sink("new", "sqlite:///new.db", now=NOW)
    assert await store.prune(received_before=NOW - 30 * DAY) == 0
    assert await store.get_event("old") is not None
