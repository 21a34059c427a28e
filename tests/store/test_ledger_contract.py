"""The policies' ledger contract, run against every backend: SQLite (``SQLiteLedger`` on
a file) and the real PostgreSQL on this machine (``store.ledger()`` of a
``PostgresStore`` in a schema of its own per test).

A "worker" is one ledger with connections of its own (SQLite: its own connection to
the file; PostgreSQL: its own store, so its own pool), as separate processes or hosts
have: every guarantee below must hold between workers, not only within one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import random
import socket
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cio_webhooks import StoreUnavailable
from cio_webhooks.store import (
    IN_FLIGHT_LEASE,
    ActionInFlight,
    Ledger,
    Verdict,
    Window,
    open_store,
    parse_store_url,
)
from cio_webhooks.store._ledger import LEDGER_TABLES, LedgerBookkeeping
from cio_webhooks.store.sqlite import SQLiteLedger

NOW = 1_700_000_000.0
DAY = 86400.0
THREE_IN_30_DAYS = Window(count=3, within=30 * DAY)


@dataclass
class Place:
    """Where one backend keeps one ledger, and how to open workers on it."""

    backend: str
    open: Callable[..., Awaitable[tuple[Ledger, Callable[[], Awaitable[None]]]]]
    exists: Callable[[], Awaitable[bool]]  # has anything been created here?
    break_audit: Callable[[], Awaitable[None]]  # make every audit write fail
    mend_audit: Callable[[], Awaitable[None]]
    write_refused: tuple[type[Exception], ...]  # what a write of a read-only worker raises
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def worker(self, *, read_only: bool = False) -> Ledger:
        """A new worker's ledger (``read_only``: as the CLI's read commands open it)."""
        ledger, close = await self.open(read_only=read_only)
        self.closers.append(close)
        return ledger


# --------------------------------------------------------------------------- backends


def sqlite_place(path: Path) -> Place:
    async def open_(*, read_only: bool = False) -> tuple[Ledger, Callable[[], Awaitable[None]]]:
        ledger = SQLiteLedger(path, read_only=read_only)
        return ledger, ledger.close

    async def exists() -> bool:
        return path.exists()

    def script(text: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            with contextlib.closing(sqlite3.connect(path)) as db, db:
                db.execute(text)

        return run

    return Place(
        "sqlite",
        open_,
        exists,
        script(
            "CREATE TRIGGER audit_fails BEFORE INSERT ON actions"
            " BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        ),
        script("DROP TRIGGER audit_fails"),
        (sqlite3.Error,),
    )


def pg_place(url: str) -> Place:
    """The store at ``url`` (a schema of its own, made and migrated by the first worker)."""
    parsed = parse_store_url(url)
    dsn, schema = parsed.dsn, parsed.schema
    assert dsn is not None

    async def open_(*, read_only: bool = False) -> tuple[Ledger, Callable[[], Awaitable[None]]]:
        store = open_store(parsed, readonly=read_only)
        await store.open()
        return store.ledger(), store.close

    async def exists() -> bool:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,)
            )
            row = await cur.fetchone()
            return row is not None and row[0] > 0

    def script(text: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute(sql.SQL(text).format(schema=sql.Identifier(schema)))

        return run

    return Place(
        "postgresql",
        open_,
        exists,
        script(
            "CREATE FUNCTION {schema}.audit_fails() RETURNS trigger LANGUAGE plpgsql"
            " AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$;"
            " CREATE TRIGGER audit_fails BEFORE INSERT ON {schema}.actions"
            " FOR EACH ROW EXECUTE FUNCTION {schema}.audit_fails()"
        ),
        script("DROP FUNCTION {schema}.audit_fails() CASCADE"),
        (StoreUnavailable,),
    )


@contextlib.asynccontextmanager
async def opened(place: Place) -> AsyncIterator[Place]:
    try:
        yield place
    finally:
        for close in place.closers:
            await close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def place(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Place]:
    made = (
        sqlite_place(tmp_path / "actions.db")
        if request.param == "sqlite"
        else pg_place(request.getfixturevalue("pg_url"))
    )
    async with opened(made) as p:
        yield p


@pytest.fixture
async def ledger(place: Place) -> Ledger:
    return await place.worker()


# --------------------------------------------------------------------------- helpers


async def act(
    ledger: Ledger,
    event_id: str,
    *,
    rule: str = "r",
    person: str | None = "42",
    dry_run: bool = False,
    now: float = NOW,
    threshold: Window | None = None,
    occurred_at: float | None = None,
) -> Verdict:
    return await ledger.reserve(
        rule=rule,
        event_id=event_id,
        person=person,
        dry_run=dry_run,
        now=now,
        threshold=threshold,
        occurred_at=occurred_at if occurred_at is not None else now,
    )


async def finish(
    ledger: Ledger,
    event_id: str,
    status: str,
    *,
    rule: str = "r",
    person: str | None = "42",
    dry_run: bool = False,
    at: float = NOW,
) -> None:
    await ledger.finish(
        rule=rule,
        event_id=event_id,
        person=person,
        action="unsubscribe",
        request={"action": "unsubscribe", "person": person},
        status=status,
        detail=None if status != "failed" else "HTTP 500",
        dry_run=dry_run,
        at=at,
    )


async def acting_hits(
    ledger: Ledger, hits: Sequence[tuple[str, float]], *, person: str = "42"
) -> list[str]:
    """Record ``(event_id, occurred_at)`` hits in this order; the ids reserved to act."""
    acted = []
    for event_id, at in hits:
        with contextlib.suppress(ActionInFlight):  # the one that acted holds it
            verdict = await act(
                ledger, event_id, person=person, threshold=THREE_IN_30_DAYS, occurred_at=at
            )
            if verdict is Verdict.ACT:
                acted.append(event_id)
    return acted


def dead_owner() -> str:
    """The owner name of a process that has exited (as after a SIGKILL)."""
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    return f"{socket.gethostname()}:{gone.pid}:killed"


def named(ledger: Ledger, owner: str) -> Ledger:
    """``ledger`` as the worker ``owner`` (``host:pid:token``) would be."""
    assert isinstance(ledger, LedgerBookkeeping)
    ledger.owner = owner
    return ledger


def by_key(table_rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows in key order (backends export in their own order); actions without their id."""
    return sorted(table_rows, key=lambda row: tuple(map(str, row[:3])))


async def rows(ledger: Ledger, table: str) -> list[tuple[Any, ...]]:
    return [row async for row in ledger.export_rows(table)]


# --------------------------------------------------------------------------- decisions


async def test_a_reserved_call_once_finished_is_settled(ledger: Ledger) -> None:
    assert await ledger.decision("r", "e1") is None
    assert await act(ledger, "e1") is Verdict.ACT
    assert await ledger.decision("r", "e1") == "in_flight"
    await finish(ledger, "e1", "ok")
    assert await ledger.decision("r", "e1") == "ok"
    assert await act(ledger, "e1") is Verdict.SETTLED  # a duplicate, a retry, a replay
    [row] = await ledger.recent()
    assert (row.event_id, row.rule, row.person, row.status, row.dry_run) == (
        "e1",
        "r",
        "42",
        "ok",
        False,
    )
    assert row.request == '{"action": "unsubscribe", "person": "42"}'


@pytest.mark.parametrize(
    "person",
    ["nul\x00inside", "x" * 20_000, "lone\ud800surrogate"],
    ids=["nul", "20-kB", "surrogate"],
)
async def test_any_person_id_is_decided_and_counted_apart(ledger: Ledger, person: str) -> None:
    # Customer.io ids are short, but an event may carry anything: the ledger must still
    # decide once (PostgreSQL can neither hold a NUL nor index 20 kB as they are).
    assert await act(ledger, "e1", person=person) is Verdict.ACT
    await finish(ledger, "e1", "ok", person=person)
    assert await act(ledger, "e1", person=person) is Verdict.SETTLED
    assert await acting_hits(ledger, [("a", DAY), ("b", 2 * DAY)], person=person) == []
    other = person[:-1] + "?"
    assert await acting_hits(ledger, [("c", DAY), ("d", 2 * DAY)], person=other) == []
    assert await acting_hits(ledger, [("f", 3 * DAY)], person=person) == ["f"]


async def test_a_long_person_id_of_a_version_1_sqlite_file_still_counts(tmp_path: Path) -> None:
    """Version 1 kept a long person id as it was; after the upgrade that person's hits
    and windows acted on still count (no second action in a window acted on)."""
    from cio_webhooks.store.sqlite._ledger import SCHEMA_VERSION

    path = tmp_path / "actions.db"
    person = "x" * 2000
    old = SQLiteLedger(path)
    hits = [("a", NOW + DAY), ("b", NOW + 2 * DAY), ("c", NOW + 3 * DAY)]
    assert await acting_hits(old, hits, person=person) == ["c"]
    await finish(old, "c", "ok", person=person)
    await old.close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:  # as version 1 wrote it
        for table in ("hits", "decisions", "actions"):
            db.execute(f"UPDATE {table} SET person = ? WHERE person IS NOT NULL", (person,))
        db.execute("PRAGMA user_version = 1")
    upgraded = SQLiteLedger(path)
    try:
        later = [("d", NOW + 4 * DAY), ("e", NOW + 5 * DAY), ("f", NOW + 6 * DAY)]
        assert await acting_hits(upgraded, later, person=person) == []
        assert await act(upgraded, "c", person=person) is Verdict.SETTLED
    finally:
        await upgraded.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert {row[0] for row in db.execute("SELECT person FROM hits")} == {
            f"sha256:{hashlib.sha256(person.encode()).hexdigest()}"
        }


async def test_a_skipped_decision_is_settled_too(ledger: Ledger) -> None:
    assert await act(ledger, "e1", person=None) is Verdict.ACT
    await finish(ledger, "e1", "skipped", person=None)
    assert await act(ledger, "e1", person=None) is Verdict.SETTLED


async def test_a_failed_call_is_reserved_again(place: Place, ledger: Ledger) -> None:
    assert await act(ledger, "e1") is Verdict.ACT
    await finish(ledger, "e1", "failed")
    assert await ledger.decision("r", "e1") == "failed"
    other = await place.worker()  # any worker takes it up
    assert await act(other, "e1", now=NOW + 60) is Verdict.ACT
    await finish(other, "e1", "ok", at=NOW + 60)
    [decision] = await rows(ledger, "decisions")
    columns = dict(zip(LEDGER_TABLES["decisions"], decision, strict=True))
    assert (columns["state"], columns["attempts"], columns["owner"]) == ("ok", 2, None)
    assert [r.status for r in await ledger.recent()] == ["ok", "failed"]


async def test_recent_rows_since_a_time(ledger: Ledger) -> None:
    for i, at in enumerate((NOW, NOW + 60, NOW + 120)):
        assert await act(ledger, f"e{i}", now=at) is Verdict.ACT
        await finish(ledger, f"e{i}", "failed", at=at)
    since = await ledger.recent(status="failed", since=NOW + 60)
    assert [r.event_id for r in since] == ["e2", "e1"]
    assert await ledger.recent(since=NOW + 121) == []


async def test_a_call_in_flight_in_another_live_worker_is_waited_for(
    place: Place, ledger: Ledger
) -> None:
    other = await place.worker()  # this process, so alive
    assert await act(other, "e1") is Verdict.ACT
    with pytest.raises(ActionInFlight):
        await act(ledger, "e1")
    with pytest.raises(ActionInFlight):
        await act(ledger, "e1", now=NOW + IN_FLIGHT_LEASE - 1)
    # it never finished: its lease runs out, and another worker takes over
    assert await act(ledger, "e1", now=NOW + IN_FLIGHT_LEASE) is Verdict.ACT
    await finish(ledger, "e1", "ok")
    await finish(other, "e1", "ok")  # late: no longer its reservation; audited, not settled
    assert await ledger.decision("r", "e1") == "ok"


async def test_a_call_in_flight_on_another_host_is_waited_for_until_its_lease_ends(
    place: Place, ledger: Ledger
) -> None:
    other = named(await place.worker(), f"not-{socket.gethostname()}:1:abcd")  # another machine
    assert await act(other, "e1") is Verdict.ACT
    with pytest.raises(ActionInFlight):  # its process cannot be looked at: only the lease tells
        await act(ledger, "e1", now=NOW + IN_FLIGHT_LEASE - 1)
    assert await act(ledger, "e1", now=NOW + IN_FLIGHT_LEASE) is Verdict.ACT


async def test_a_call_left_in_flight_by_a_dead_process_is_taken_over(
    place: Place, ledger: Ledger
) -> None:
    crashed = named(await place.worker(), dead_owner())  # its process was SIGKILLed
    assert await act(crashed, "e1") is Verdict.ACT
    assert await act(ledger, "e1", now=NOW + 1) is Verdict.ACT  # long before its lease ends
    await finish(ledger, "e1", "ok")
    assert await ledger.decision("r", "e1") == "ok"


async def test_a_cancelled_call_of_this_worker_is_taken_up_again(ledger: Ledger) -> None:
    """The dispatcher's handler timeout cancels a call: the next attempt reserves it."""
    assert await act(ledger, "e1") is Verdict.ACT
    with pytest.raises(ActionInFlight):  # still calling
        await act(ledger, "e1")
    ledger.release(rule="r", event_id="e1", dry_run=False)  # as Policies.apply on a cancel
    assert await act(ledger, "e1") is Verdict.ACT
    assert await ledger.decision("r", "e1") == "in_flight"


async def test_rules_and_events_are_decided_apart(ledger: Ledger) -> None:
    assert await act(ledger, "e1", rule="a") is Verdict.ACT
    assert await act(ledger, "e1", rule="b") is Verdict.ACT
    assert await act(ledger, "e2", rule="a") is Verdict.ACT


async def test_a_dry_run_does_not_settle_the_live_run(ledger: Ledger) -> None:
    assert await act(ledger, "e1", dry_run=True) is Verdict.ACT
    await finish(ledger, "e1", "dry_run", dry_run=True)
    assert await act(ledger, "e1", dry_run=True) is Verdict.SETTLED
    assert await ledger.decision("r", "e1", dry_run=True) == "dry_run"
    assert await ledger.decision("r", "e1") is None
    assert await act(ledger, "e1") is Verdict.ACT  # dry-run switched off, then a replay
    await finish(ledger, "e1", "ok")
    assert [r.dry_run for r in await ledger.recent()] == [False, True]


async def test_a_live_call_settles_the_dry_run(ledger: Ledger) -> None:
    assert await act(ledger, "e1") is Verdict.ACT
    await finish(ledger, "e1", "ok")
    assert await act(ledger, "e1", dry_run=True) is Verdict.SETTLED


async def test_a_call_whose_outcome_could_not_be_written_is_recorded_not_made_again(
    place: Place, ledger: Ledger
) -> None:
    assert await ledger.recent() == []  # the tables exist
    assert await act(ledger, "e1") is Verdict.ACT
    await place.break_audit()
    with pytest.raises(place.write_refused):  # Customer.io took the call; the write failed
        await finish(ledger, "e1", "ok")
    ledger.release(rule="r", event_id="e1", dry_run=False)  # as Policies.apply does
    await place.mend_audit()
    assert await act(ledger, "e1") is Verdict.SETTLED  # the retry records the outcome
    assert await ledger.decision("r", "e1") == "ok"
    [row] = await ledger.recent()
    assert (row.event_id, row.status) == ("e1", "ok")
    assert await act(ledger, "e1") is Verdict.SETTLED


async def test_the_outcome_of_a_call_made_is_written_once_the_store_takes_writes_again(
    place: Place, ledger: Ledger
) -> None:
    # Retried in place: another worker taking the event over would call again.
    assert await act(ledger, "e1") is Verdict.ACT
    await place.break_audit()
    finishing = asyncio.create_task(finish(ledger, "e1", "ok"))
    await asyncio.sleep(0.3)  # the first tries fail (the retries span about 2.6 s)
    assert not finishing.done()
    await place.mend_audit()
    await finishing  # written by a later try: no error for the dispatcher to retry
    assert await ledger.decision("r", "e1") == "ok"
    [row] = await ledger.recent()
    assert (row.event_id, row.status) == ("e1", "ok")


async def test_a_failed_call_whose_outcome_could_not_be_written_is_called_again(
    place: Place, ledger: Ledger
) -> None:
    assert await act(ledger, "e1") is Verdict.ACT
    await place.break_audit()
    with pytest.raises(place.write_refused):
        await finish(ledger, "e1", "failed")
    ledger.release(rule="r", event_id="e1", dry_run=False)
    await place.mend_audit()
    assert await act(ledger, "e1") is Verdict.ACT  # nothing went through: call again


# --------------------------------------------------------------------------- thresholds


async def test_any_order_of_hits_in_one_window_acts_exactly_once(ledger: Ledger) -> None:
    days = [0, 3, 11, 20, 29]  # five hits, all within 30 days of each other
    for n, order in enumerate(itertools.permutations(range(5))):
        person = f"p{n}"  # each order a person of its own
        hits = [(f"{person}-b{i}", NOW + days[i] * DAY) for i in order]
        acted = await acting_hits(ledger, hits, person=person)
        assert acted == [f"{person}-b{order[2]}"], order  # the third to arrive, whatever its time


async def test_a_new_window_needs_count_new_hits_after_the_last_one(ledger: Ledger) -> None:
    """Once per window: an action covers ``within_days`` from the first hit it counted;
    hits inside never count again, and ``count`` hits beyond it act again."""
    hits = [("d0", 0), ("d10", 10), ("d20", 20), ("d25", 25), ("d29", 29)]
    hits += [("d30", 30), ("d40", 40), ("d50", 50)]
    acted = await acting_hits(ledger, [(e, NOW + d * DAY) for e, d in hits])
    assert acted == ["d20", "d50"]  # windows [0, 30) and [30, 60)


async def test_hits_outside_the_window_do_not_count(ledger: Ledger) -> None:
    acted = await acting_hits(ledger, [("a", NOW), ("b", NOW + 20 * DAY), ("c", NOW + 31 * DAY)])
    assert acted == []


async def test_a_hit_seen_before_never_decides_again(ledger: Ledger) -> None:
    hits = [("b0", NOW), ("b1", NOW + DAY), ("b2", NOW + 2 * DAY)]
    assert await acting_hits(ledger, hits) == ["b2"]
    await finish(ledger, "b2", "ok")
    assert await acting_hits(ledger, hits) == []  # duplicates and replays
    verdicts = [await act(ledger, e, threshold=THREE_IN_30_DAYS, occurred_at=at) for e, at in hits]
    assert verdicts == [Verdict.NOT_DUE, Verdict.NOT_DUE, Verdict.SETTLED]


async def test_a_failed_threshold_action_is_retried_on_its_own_hit(ledger: Ledger) -> None:
    hits = [("b0", NOW), ("b1", NOW + DAY), ("b2", NOW + 2 * DAY)]
    assert await acting_hits(ledger, hits) == ["b2"]
    await finish(ledger, "b2", "failed")
    assert await acting_hits(ledger, hits) == ["b2"]  # the dispatcher's retry of b2 only


async def test_persons_and_dry_runs_count_apart(ledger: Ledger) -> None:
    for i in range(2):
        for person in ("a", "b"):
            await act(ledger, f"{person}{i}", person=person, threshold=THREE_IN_30_DAYS)
        verdict = await act(ledger, f"d{i}", dry_run=True, threshold=THREE_IN_30_DAYS)
        assert verdict is Verdict.NOT_DUE
    assert await act(ledger, "a2", person="a", threshold=THREE_IN_30_DAYS) is Verdict.ACT
    assert await act(ledger, "b2", person="b", threshold=THREE_IN_30_DAYS) is Verdict.ACT
    # live hits do not count for the dry run: its own third hit completes its window
    assert await act(ledger, "d2", dry_run=True, threshold=THREE_IN_30_DAYS) is Verdict.ACT


async def test_a_threshold_event_without_a_person_is_decided_alone(ledger: Ledger) -> None:
    assert await act(ledger, "e1", person=None, threshold=THREE_IN_30_DAYS) is Verdict.ACT
    await finish(ledger, "e1", "skipped", person=None)
    assert await rows(ledger, "hits") == []


async def test_threshold_counts_are_shared_by_every_worker(place: Place) -> None:
    workers = [await place.worker() for _ in range(3)]
    verdicts = [
        await act(w, f"b{i}", threshold=THREE_IN_30_DAYS, occurred_at=NOW + i * DAY)
        for i, w in enumerate(workers)
    ]
    assert verdicts == [Verdict.NOT_DUE, Verdict.NOT_DUE, Verdict.ACT]


# --------------------------------------------------------------------------- reading


async def test_recent_gives_the_newest_first_and_filters(ledger: Ledger) -> None:
    for i, status in enumerate(["ok", "failed", "ok", "skipped"]):
        await act(ledger, f"e{i % 2}", rule=f"r{i}")
        await finish(ledger, f"e{i % 2}", status, rule=f"r{i}", at=NOW + i)
    assert [r.rule for r in await ledger.recent()] == ["r3", "r2", "r1", "r0"]
    assert [r.rule for r in await ledger.recent(limit=2)] == ["r3", "r2"]
    assert [r.rule for r in await ledger.recent(event_id="e0")] == ["r2", "r0"]
    assert [r.rule for r in await ledger.recent(status="ok")] == ["r2", "r0"]
    assert [r.rule for r in await ledger.recent(event_id="e1", status="failed")] == ["r1"]
    assert await ledger.recent(event_id="none") == []
    [newest] = await ledger.recent(limit=1)
    assert (newest.created_at, newest.detail, newest.action) == (NOW + 3, None, "unsubscribe")
    ids = [r.id for r in await ledger.recent()]
    assert ids == sorted(ids, reverse=True)


async def populate(ledger: Ledger) -> None:
    """A ledger with every kind of row: settled, failed, in flight, dry run, hits, windows."""
    assert await act(ledger, "s1") is Verdict.ACT
    await finish(ledger, "s1", "ok")
    assert await act(ledger, "s2") is Verdict.ACT
    await finish(ledger, "s2", "failed")
    assert await act(ledger, "s3", dry_run=True) is Verdict.ACT
    await finish(ledger, "s3", "dry_run", dry_run=True)
    assert await act(ledger, "s4", person=None) is Verdict.ACT  # left in flight
    assert await acting_hits(ledger, [(f"b{i}", NOW + i * DAY) for i in range(4)]) == ["b2"]
    await finish(ledger, "b2", "ok")


async def test_export_and_import_round_trip(place: Place, tmp_path: Path) -> None:
    source = await place.worker()
    await populate(source)
    exported = {table: await rows(source, table) for table in LEDGER_TABLES}
    assert {t: len(r) for t, r in exported.items()} == {"decisions": 5, "hits": 4, "actions": 4}
    for table, got in exported.items():
        assert all(len(row) == len(LEDGER_TABLES[table]) for row in got)
    ids = [row[0] for row in exported["actions"]]
    assert ids == sorted(ids)  # in the order they were written

    async with opened(sqlite_place(tmp_path / "copy.db")) as copy_place:  # store copy
        copy = await copy_place.worker()
        for table in LEDGER_TABLES:
            assert await copy.import_rows(table, exported[table]) == len(exported[table])
        assert await copy.import_rows("decisions", exported["decisions"]) == 0  # keys kept
        assert await copy.import_rows("hits", exported["hits"]) == 0
        assert await copy.import_rows("decisions", []) == 0
        assert await rows(copy, "decisions") == exported["decisions"]  # True == 1
        assert await rows(copy, "hits") == exported["hits"]
        assert [r[1:] for r in await rows(copy, "actions")] == [r[1:] for r in exported["actions"]]

        # the imported decisions and windows hold in the copy
        assert await act(copy, "s1") is Verdict.SETTLED
        assert await act(copy, "s2") is Verdict.ACT
        fourth = await act(copy, "b4", threshold=THREE_IN_30_DAYS, occurred_at=NOW + 4 * DAY)
        assert fourth is Verdict.NOT_DUE

        # importing into a ledger that holds it all already adds only the audit rows
        assert await source.import_rows("decisions", await rows(copy, "decisions")) == 0
        assert await source.import_rows("hits", await rows(copy, "hits")) == 1  # b4
        assert await source.import_rows("actions", exported["actions"]) == 4  # renumbered
        assert [r.id for r in await source.recent()] == sorted(
            (*ids, *(max(ids) + i for i in range(1, 5))), reverse=True
        )


async def test_export_and_import_between_backends(tmp_path: Path, pg_url: str) -> None:
    """``store copy --from sqlite:///... --to postgresql://...`` and back."""
    async with (
        opened(sqlite_place(tmp_path / "a.db")) as a,
        opened(pg_place(pg_url)) as b,
        opened(sqlite_place(tmp_path / "c.db")) as c,
    ):
        first, second, third = await a.worker(), await b.worker(), await c.worker()
        await populate(first)
        for table in LEDGER_TABLES:
            original = await rows(first, table)
            assert await second.import_rows(table, original) == len(original)
            assert await third.import_rows(table, await rows(second, table)) == len(original)
            if table == "actions":
                assert [r[1:] for r in await rows(third, table)] == [r[1:] for r in original]
            else:
                assert by_key(await rows(third, table)) == by_key(original)
        assert await act(second, "s1") is Verdict.SETTLED
        assert await act(second, "s3", dry_run=True) is Verdict.SETTLED
        with pytest.raises(ActionInFlight):  # in flight in first, a live process
            await act(second, "s4", person=None)
        assert await act(second, "s4", person=None, now=NOW + IN_FLIGHT_LEASE) is Verdict.ACT
        [b2] = [r for r in await second.recent() if r.event_id == "b2"]
        assert (b2.status, b2.dry_run) == ("ok", False)


async def test_a_read_only_worker_reads_and_writes_nothing(place: Place) -> None:
    writer = await place.worker()
    await populate(writer)
    before = {table: await rows(writer, table) for table in LEDGER_TABLES}
    reader = await place.worker(read_only=True)
    assert len(await reader.recent()) == 4
    assert await reader.decision("r", "s1") == "ok"
    assert await rows(reader, "hits") == before["hits"]
    with pytest.raises(place.write_refused):
        await act(reader, "new")
    with pytest.raises(place.write_refused):
        await act(reader, "b9", threshold=THREE_IN_30_DAYS, occurred_at=NOW + 3 * DAY)
    with pytest.raises(place.write_refused):
        await reader.import_rows("actions", before["actions"])
    assert {table: await rows(writer, table) for table in LEDGER_TABLES} == before


async def look(place: Place) -> None:
    """What ``cio-webhooks actions list`` does: open a read-only worker, read."""
    reader = await place.worker(read_only=True)
    await reader.recent()


async def test_a_read_only_worker_creates_nothing(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    for place in [
        sqlite_place(tmp_path / "none.db"),
        pg_place(request.getfixturevalue("pg_url")),
    ]:
        async with opened(place):
            with pytest.raises(place.write_refused):  # nothing to read: no ledger here
                await look(place)
            assert not await place.exists(), place.backend


# --------------------------------------------------------------------------- races


async def settle_all(worker: Ledger, event_ids: Sequence[str], rng: random.Random) -> list[str]:
    """Reserve each event (in a shuffled order, several at once) and settle what this
    worker was given; the events it acted on."""
    acted: list[str] = []
    order = list(event_ids)
    rng.shuffle(order)

    async def one(event_id: str) -> None:
        with contextlib.suppress(ActionInFlight):
            if await act(worker, event_id) is Verdict.ACT:
                acted.append(event_id)
                await finish(worker, event_id, "ok")

    for start in range(0, len(order), 8):
        await asyncio.gather(*(one(e) for e in order[start : start + 8]))
    return acted


async def test_concurrent_workers_act_once_per_event(place: Place) -> None:
    workers = [await place.worker() for _ in range(4)]
    events = [f"e{i}" for i in range(60)]
    rounds = 2  # then again, as duplicates and replays would
    results: list[list[str]] = []
    for r in range(rounds):
        results += await asyncio.gather(
            *(settle_all(w, events, random.Random(f"{r}-{n}")) for n, w in enumerate(workers))
        )
    counts = Counter(e for acted in results for e in acted)
    assert counts == Counter(events)  # each exactly once: none twice, none never
    assert len(await workers[0].recent(limit=1000)) == len(events)


async def test_workers_racing_over_the_same_hits_act_once(place: Place) -> None:
    """Two workers (and one of them twice at once) race over the same hits, none of
    them finishing: one window, one reservation."""
    first, second = await place.worker(), await place.worker()
    hits = [(f"b{i}", NOW + i * DAY) for i in range(6)]
    results = await asyncio.gather(
        acting_hits(first, hits), acting_hits(second, hits[::-1]), acting_hits(first, hits[2:])
    )
    assert sum(len(r) for r in results) == 1


async def test_concurrent_workers_act_once_per_threshold_window(place: Place) -> None:
    """Each person has two windows of three hits (days 0-2 and 40-42) and a fourth hit
    in the first: whatever worker sees which hit when, each window acts once.  Every
    worker takes the persons one after another and all of a person's hits at once (in
    an order of its own), so the workers contend for one person at a time."""
    workers = [await place.worker() for _ in range(4)]
    persons = [f"p{i}" for i in range(12)]
    days = [0, 1, 2, 5, 40, 41, 42]

    async def run(worker: Ledger, rng: random.Random) -> list[tuple[str, str]]:
        acted: list[tuple[str, str]] = []

        async def one(event_id: str, person: str, at: float) -> None:
            with contextlib.suppress(ActionInFlight):
                verdict = await act(
                    worker, event_id, person=person, threshold=THREE_IN_30_DAYS, occurred_at=at
                )
                if verdict is Verdict.ACT:
                    acted.append((person, event_id))
                    await finish(worker, event_id, "ok", person=person)

        for person in persons:
            hits = [(f"{person}-d{d}", person, NOW + d * DAY) for d in days]
            rng.shuffle(hits)
            await asyncio.gather(*(one(*hit) for hit in hits))
        return acted

    results = await asyncio.gather(*(run(w, random.Random(n)) for n, w in enumerate(workers)))
    acted = [a for r in results for a in r]
    assert len(acted) == len(set(acted))  # no event acted on twice
    per_person = Counter(person for person, _ in acted)
    assert per_person == Counter(dict.fromkeys(persons, 2))  # once per window, both windows
    windows = Counter(
        (person, "early" if int(event_id.rsplit("-d", 1)[1]) < 30 else "late")
        for person, event_id in acted
    )
    assert set(windows.values()) == {1}


WORKER = """
import asyncio, sys
from cio_webhooks.store import ActionInFlight, Verdict, Window, open_store

async def main():
    url, start, order = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    acted = 0
    async with open_store(url) as store:
        ledger = store.ledger()
        for i in [int(x) for x in order.split(",")]:
            for person in ("a", "b"):
                try:
                    verdict = await ledger.reserve(
                        rule="r", event_id=f"{person}{i}", person=person, dry_run=False,
                        now=start, threshold=Window(count=3, within=30 * 86400),
                        occurred_at=start + i * 86400,
                    )
                except ActionInFlight:
                    continue
                if verdict is Verdict.ACT:
                    acted += 1
                    await ledger.finish(
                        rule="r", event_id=f"{person}{i}", person=person, action="unsubscribe",
                        request={}, status="ok", detail=None, dry_run=False, at=start,
                    )
    print(acted)

asyncio.run(main())
"""


def test_worker_processes_on_one_postgresql_store_act_once_per_window(pg_url: str) -> None:
    """Separate processes, each with its own store (as on separate hosts), starting at
    once on a new schema (they race on migrating it too), over the same hits of two
    persons in different orders: days 0-8 and 40-48, so two windows each."""
    days = [*range(9), *range(40, 49)]
    orders = [days, days[::-1], [days[i] for i in (5, 17, 0, 9, 3, 12, 8, 1, 16, 4)] + days]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, pg_url, str(NOW), ",".join(map(str, order))],
            stdout=subprocess.PIPE,
            text=True,
        )
        for order in orders
    ]
    counts = [int(proc.communicate(timeout=120)[0]) for proc in procs]
    assert sum(counts) == 2 * 2  # two persons, two windows each
