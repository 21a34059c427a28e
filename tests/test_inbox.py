"""SQLiteStore: durable dedupe, group commit, filters, pruning, reopening."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from cio_webhooks import Event, EventFilter, JobState, PutResult, parse_event
from cio_webhooks._exceptions import StoreUnavailable
from cio_webhooks.store import HandlerResult, Job, Outcome
from cio_webhooks.store.sqlite import SQLiteStore
from cio_webhooks.testing import make_event

from .conftest import NOW

_QUARANTINE_INDEX = (
    "CREATE UNIQUE INDEX IF NOT EXISTS quarantine_event_id ON quarantine (event_id)\n"
    "    WHERE event_id IS NOT NULL;"
)


def ev(
    event_id: str, received_at: float = NOW, metric: str = "delivered", object_type: str = "email"
) -> Event:
    return parse_event(
        json.dumps(make_event(event_id, object_type, metric)).encode(), received_at=received_at
    )


async def test_put_is_durable_and_deduplicated(tmp_path: Path) -> None:
    path = tmp_path / "inbox.db"
    async with SQLiteStore(path) as inbox:
        assert await inbox.put(ev("a")) is PutResult.STORED
        assert await inbox.put(ev("a", metric="opened")) is PutResult.DUPLICATE
    # Another connection, as after a restart, sees exactly one committed row.
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT event_id, metric, state FROM events").fetchall() == [
            ("a", "delivered", "pending")
        ]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_concurrent_puts_share_commits(inbox: SQLiteStore) -> None:
    before = inbox.commit_stats
    results = await asyncio.gather(*(inbox.put(ev(f"e{i}")) for i in range(500)))
    commits, writes = (a - b for a, b in zip(inbox.commit_stats, before, strict=True))
    assert results == [PutResult.STORED] * 500
    assert writes == 500
    assert commits < 100  # one fsync covers many requests


async def test_dedupe_holds_whatever_the_state(inbox: SQLiteStore) -> None:
    for state in (JobState.RETRYING, JobState.DEAD, JobState.DONE):
        await inbox.put(ev(state.value))
        [job] = await inbox.claim(now=NOW, limit=1, lease=60)
        assert await inbox.finish([Outcome(job.seq, state, 1, NOW, None, job.token)], now=NOW)
        assert await inbox.put(ev(state.value)) is PutResult.DUPLICATE


async def test_prune_ends_dedupe_only_for_old_finished_events(inbox: SQLiteStore) -> None:
    day = 86400
    for event_id, age_days in [("old-done", 40), ("old-dead", 40), ("new-done", 5)]:
        await inbox.put(ev(event_id, received_at=NOW - age_days * day))
    jobs = {j.event_id: j for j in await inbox.claim(now=NOW, limit=10, lease=60)}
    await inbox.finish(
        [
            Outcome(jobs["old-done"].seq, JobState.DONE, 1, NOW, None, jobs["old-done"].token),
            Outcome(jobs["old-dead"].seq, JobState.DEAD, 3, NOW, "boom", jobs["old-dead"].token),
            Outcome(jobs["new-done"].seq, JobState.DONE, 1, NOW, None, jobs["new-done"].token),
        ],
        now=NOW,
    )
    assert await inbox.prune(received_before=NOW - 30 * day) == 1
    assert await inbox.get_event("old-done") is None
    assert await inbox.get_event("old-dead") is not None  # a dead letter waits for a human
    assert await inbox.put(ev("new-done")) is PutResult.DUPLICATE


async def test_iter_events_filters_and_pages_in_arrival_order(inbox: SQLiteStore) -> None:
    for i in range(25):
        metric = "bounced" if i % 5 == 0 else "delivered"
        await inbox.put(ev(f"e{i:02d}", received_at=NOW + i, metric=metric))
    everything = [e.event_id async for e in inbox.iter_events(EventFilter(), batch=7)]
    assert everything == [f"e{i:02d}" for i in range(25)]
    bounced = [
        e.event_id
        async for e in inbox.iter_events(EventFilter(kinds=("*.bounced",), since=NOW + 1), batch=2)
    ]
    assert bounced == ["e05", "e10", "e15", "e20"]
    limited = [e.event_id async for e in inbox.iter_events(EventFilter(limit=3), batch=2)]
    assert limited == ["e00", "e01", "e02"]


async def test_quarantine_keeps_raw_bytes(inbox: SQLiteStore) -> None:
    ident = await inbox.quarantine(b"\x00\xffbinary", "body is not JSON", received_at=NOW)
    [kept] = await inbox.quarantined(ident=ident)
    assert kept.body == b"\x00\xffbinary"
    assert kept.reason == "body is not JSON"


async def test_writes_after_close_fail_cleanly(tmp_path: Path) -> None:
    from cio_webhooks import StoreUnavailable

    inbox = SQLiteStore(tmp_path / "inbox.db")
    await inbox.open()
    await inbox.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await inbox.put(ev("late"))
    assert not await inbox.ready()


async def test_same_event_twice_in_one_group_commit_is_stored_once(inbox: SQLiteStore) -> None:
    results = await asyncio.gather(*(inbox.put(ev("twin")) for _ in range(5)), inbox.put(ev("x")))
    assert sorted(results[:5]) == [PutResult.DUPLICATE] * 4 + [PutResult.STORED]
    assert results[5] is PutResult.STORED
    assert (await inbox.stats()).events == 2


async def test_prune_works_in_chunks_and_removes_everything_due(inbox: SQLiteStore) -> None:
    for i in range(25):
        await inbox.put(ev(f"old{i}", received_at=NOW - 40 * 86400), handled=True)
    await inbox.put(ev("recent", received_at=NOW), handled=True)
    commits_before, _ = inbox.commit_stats
    assert await inbox.prune(received_before=NOW - 30 * 86400, chunk=10) == 25
    commits, _ = inbox.commit_stats
    assert commits - commits_before >= 3  # 10 + 10 + 5, each its own transaction
    assert (await inbox.stats()).events == 1


async def test_a_version_1_file_is_migrated_and_keeps_its_events(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the first released schema, without `backfilled`
        from cio_webhooks.store.sqlite._inbox import SCHEMA, SCHEMA_VERSION

        version_1 = (
            SCHEMA.replace(",\n    backfilled      INTEGER NOT NULL DEFAULT 0", "")
            .replace(SCHEMA[SCHEMA.index(",\n    claim_token") : SCHEMA.index("\n);")], "")
            .replace(
                "CREATE INDEX IF NOT EXISTS events_dead ON events (seq) WHERE state = 'dead';", ""
            )
            .replace(_QUARANTINE_INDEX, "")
            .replace(f"PRAGMA user_version = {SCHEMA_VERSION};", "PRAGMA user_version = 1;")
        )
        assert "backfilled" not in version_1
        assert "quarantine_event_id" not in version_1
        assert "claim_token" not in version_1
        assert "user_version = 1" in version_1
        db.executescript(version_1)
        db.execute(
            "INSERT INTO events (event_id, object_type, metric, received_at, body,"
            " next_attempt_at, updated_at) VALUES ('old', 'email', 'sent', 1, x'7b7d', 1, 1)"
        )
    async with SQLiteStore(path) as inbox:
        stored = await inbox.get_event("old")
        assert stored is not None
        assert stored.backfilled is False
        assert await inbox.put(ev("new")) is PutResult.STORED
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'events_dead'").fetchone()


async def test_a_value_sqlite_cannot_hold_fails_only_its_own_write_in_a_group_commit(
    inbox: SQLiteStore,
) -> None:
    import dataclasses
    import threading

    # Hold the writer so that every put below waits in its queue and lands in ONE commit.
    gate = threading.Event()
    held = inbox._writer.submit(lambda conn: gate.wait(10), isolated=True)
    bad = dataclasses.replace(ev("bad"), timestamp=2**63)  # past SQLite's 64-bit INTEGER
    goods = [ev(f"ok{i}") for i in range(400)]
    puts = [asyncio.ensure_future(inbox.put(e)) for e in [*goods[:200], bad, *goods[200:]]]
    await asyncio.sleep(0)  # each put has queued its write
    commits_before, _ = inbox.commit_stats
    gate.set()
    await held
    results = await asyncio.gather(*puts, return_exceptions=True)
    commits, _ = inbox.commit_stats
    assert commits - commits_before <= 2  # the held write's commit, then all 401 puts
    failed = results.pop(200)
    assert isinstance(failed, OverflowError)  # the caller's to handle, not StoreUnavailable
    assert results == [PutResult.STORED] * 400
    assert (await inbox.stats()).events == 400
    assert await inbox.put(ev("bad")) is PutResult.STORED  # nothing of it was written


async def test_a_quarantined_event_id_is_kept_once(inbox: SQLiteStore) -> None:
    first = await inbox.quarantine(b"one", "odd", received_at=NOW, event_id="e1")
    again = await asyncio.gather(
        *(inbox.quarantine(b"two", "odd", received_at=NOW + 1, event_id="e1") for _ in range(3))
    )
    other = await inbox.quarantine(b"x", "not JSON", received_at=NOW)
    anonymous = await inbox.quarantine(b"x", "not JSON", received_at=NOW)
    assert again == [first] * 3
    assert len({first, other, anonymous}) == 3  # bodies without an event_id are all kept
    [kept] = await inbox.quarantined(ident=first)
    assert (kept.body, kept.event_id) == (b"one", "e1")
    assert (await inbox.stats()).quarantined == 3


async def test_release_stores_the_event_and_drops_the_quarantined_copy(
    inbox: SQLiteStore,
) -> None:
    body = json.dumps(make_event("q1")).encode()
    ident = await inbox.quarantine(body, "old parser", received_at=NOW - 60, event_id="q1")
    event = parse_event(body, received_at=NOW - 60)
    assert await inbox.release_quarantined(ident, event) is PutResult.STORED
    assert await inbox.quarantined() == []
    stored = await inbox.get_event("q1")
    assert stored is not None
    assert (stored.state, stored.received_at, stored.body) == (JobState.PENDING, NOW - 60, body)
    again = await inbox.quarantine(body, "old parser", received_at=NOW, event_id="q1")
    assert await inbox.release_quarantined(again, event) is PutResult.DUPLICATE
    assert await inbox.quarantined() == []


async def test_purge_deletes_quarantined_bodies_received_before_the_cutoff(
    inbox: SQLiteStore,
) -> None:
    for age in (10, 5, 1):
        await inbox.quarantine(b"x", "odd", received_at=NOW - age * 86400)
    assert await inbox.purge_quarantined(received_before=NOW - 3 * 86400) == 2
    [left] = await inbox.quarantined()
    assert left.received_at == NOW - 86400


async def test_quarantined_pages_newest_first_below_an_id(inbox: SQLiteStore) -> None:
    ids = [await inbox.quarantine(b"x", "odd", received_at=NOW) for _ in range(5)]
    page = await inbox.quarantined(limit=2, before_id=ids[3])
    assert [q.id for q in page] == [ids[2], ids[1]]


async def test_a_version_3_file_keeps_the_first_copy_of_each_quarantined_event_id(
    tmp_path: Path,
) -> None:
    from cio_webhooks.store.sqlite._inbox import SCHEMA, SCHEMA_VERSION

    path = tmp_path / "v3.db"
    version_3 = (
        SCHEMA.replace(_QUARANTINE_INDEX, "")
        .replace(SCHEMA[SCHEMA.index(",\n    claim_token") : SCHEMA.index("\n);")], "")
        .replace(f"PRAGMA user_version = {SCHEMA_VERSION};", "PRAGMA user_version = 3;")
    )
    assert "quarantine_event_id" not in version_3
    assert "claim_token" not in version_3
    with sqlite3.connect(path) as db:
        db.executescript(version_3)
        db.executemany(
            "INSERT INTO quarantine (received_at, event_id, reason, body) VALUES (?, ?, 'r', ?)",
            [(1, "e1", b"first"), (2, "e1", b"retry"), (3, None, b"a"), (4, None, b"b")],
        )
    async with SQLiteStore(path) as inbox:
        kept = await inbox.quarantined()
        assert [(q.event_id, q.body) for q in kept] == [
            (None, b"b"),
            (None, b"a"),
            ("e1", b"first"),
        ]
        assert await inbox.quarantine(b"more", "r", received_at=5, event_id="e1") == kept[-1].id
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


async def test_a_read_only_inbox_reads_and_changes_no_file(tmp_path: Path) -> None:
    path = tmp_path / "inbox.db"
    async with SQLiteStore(path) as inbox:
        await inbox.put(ev("a"))
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.iterdir()}
    async with SQLiteStore(path, readonly=True) as reader:
        assert [e.event_id async for e in reader.iter_events(EventFilter())] == ["a"]
        assert (await reader.stats()).events == 1
        with pytest.raises(StoreUnavailable):
            await reader.put(ev("b"))
        assert not await reader.ready()
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.iterdir()}
    assert after == before  # not even a -wal or -shm left behind


@pytest.mark.parametrize("content", [None, b"", b"not sqlite at all"])
async def test_a_read_only_inbox_refuses_what_is_not_an_inbox(
    tmp_path: Path, content: bytes | None
) -> None:
    path = tmp_path / "inbox.db"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(StoreUnavailable, match=f"cannot read inbox {path}"):
        await SQLiteStore(path, readonly=True).open()
    assert [p.name for p in tmp_path.iterdir()] == ([] if content is None else ["inbox.db"])
    if content is not None:
        assert path.read_bytes() == content


async def test_a_claim_counts_an_attempt_and_says_when_the_previous_one_never_finished(
    inbox: SQLiteStore,
) -> None:
    await inbox.put(ev("a"))
    [first] = await inbox.claim(now=NOW, limit=1, lease=60)
    assert (first.attempts, first.interrupted) == (1, False)
    stored = await inbox.get_event("a")
    assert stored is not None
    assert stored.attempts == 1  # counted before any handler runs: a crash cannot undo it
    # The process died: nothing was finished, and the lease expires.
    [second] = await inbox.claim(now=NOW + 61, limit=1, lease=60, interrupted=True)
    assert (second.attempts, second.interrupted) == (2, True)
    assert second.token != first.token


def done(job: Job) -> Outcome:
    ok = (HandlerResult("h"),)
    return Outcome(job.seq, JobState.DONE, job.attempts, NOW, None, job.token, results=ok)


async def test_a_replay_made_while_handlers_run_wins_over_their_outcome(
    inbox: SQLiteStore,
) -> None:
    await inbox.put(ev("a"))
    [job] = await inbox.claim(now=NOW, limit=1, lease=60)
    assert await inbox.requeue(EventFilter(event_ids=("a",)), now=NOW, rerun="*") == 1
    assert await inbox.finish([done(job)], now=NOW + 1) == 0
    stored = await inbox.get_event("a")
    assert stored is not None
    assert (stored.state, stored.attempts, stored.next_attempt_at) == (JobState.PENDING, 0, NOW)
    assert await inbox.handler_runs(job.seq) == []  # the replay re-runs every handler
    [again] = await inbox.claim(now=NOW, limit=1, lease=60)
    assert await inbox.finish([done(again)], now=NOW + 2) == 1
    assert [r.status for r in await inbox.handler_runs(job.seq)] == ["ok"]


async def test_a_discard_made_while_handlers_run_wins_over_their_outcome(
    inbox: SQLiteStore,
) -> None:
    await inbox.put(ev("a"))
    [job] = await inbox.claim(now=NOW, limit=1, lease=60)
    assert await inbox.discard(EventFilter(event_ids=("a",)), now=NOW) == 1
    assert await inbox.finish([done(job)], now=NOW + 1) == 0
    stored = await inbox.get_event("a")
    assert stored is not None
    assert stored.state is JobState.DISCARDED


async def test_an_outcome_after_the_lease_expired_and_another_claim_is_dropped(
    inbox: SQLiteStore,
) -> None:
    await inbox.put(ev("a"))
    [stale] = await inbox.claim(now=NOW, limit=1, lease=60)
    [current] = await inbox.claim(now=NOW + 61, limit=1, lease=60, interrupted=True)
    assert await inbox.finish([done(stale)], now=NOW + 62) == 0
    stored = await inbox.get_event("a")
    assert stored is not None
    assert stored.state is JobState.PENDING  # still the current claim's
    assert await inbox.finish([done(current)], now=NOW + 63) == 1
    assert await inbox.finish([done(current)], now=NOW + 64) == 0  # a claim finishes once


async def test_a_claim_records_events_no_handler_wants_as_done_without_counting_them(
    inbox: SQLiteStore,
) -> None:
    for i in range(5):
        await inbox.put(ev(f"quiet{i}"))
    await inbox.put(ev("loud", metric="bounced"))
    await inbox.put(ev("loud2", metric="bounced"))

    def wanted(object_type: str, metric: str, backfilled: bool) -> bool:
        return metric == "bounced"

    [job] = await inbox.claim(now=NOW, limit=1, lease=60, wanted=wanted)
    assert job.event_id == "loud"
    for i in range(5):
        quiet = await inbox.get_event(f"quiet{i}")
        assert quiet is not None
        assert (quiet.state, quiet.attempts) == (JobState.DONE, 0)
    later = await inbox.get_event("loud2")
    assert later is not None
    assert (later.state, later.attempts) == (JobState.PENDING, 0)  # beyond the limit: untouched


async def test_delivery_metrics_include_events_without_a_usable_time(inbox: SQLiteStore) -> None:
    # Stored with occurred_at NULL ("timestamp": "nan"): still received, so reconcile
    # must not take them for missing and backfill a second copy.
    for event_id, metric in [("t1", "sent"), ("t2", "opened")]:
        body = json.dumps({**make_event(event_id, metric=metric), "timestamp": "nan"}).encode()
        stored = parse_event(body, received_at=NOW)
        assert stored.timestamp is None
        await inbox.put(stored)
    found = await inbox.delivery_metrics(occurred_since=NOW - 86400)
    assert found == {("dlv-t1", "sent"), ("dlv-t2", "opened")}
    assert await inbox.delivery_metrics(occurred_since=NOW + 1) == set()
