"""What only PostgreSQL is asked: several stores (as several processes or hosts) on one
schema, migrations racing, connections lost, and the seq cursor under concurrent commits."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import sys
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg
import pytest

from cio_webhooks import ConfigError, EventFilter, JobState, PutResult, StoreUnavailable
from cio_webhooks.store import Outcome, Store, StoredEvent, open_store, parse_store_url
from cio_webhooks.store.postgres import PostgresStore
from cio_webhooks.store.postgres._ingest import SEQ_LOCK
from cio_webhooks.store.postgres._migrations import migrate, migrations
from cio_webhooks.testing import free_port

from ..conftest import NOW, PG_SERVER
from .conftest import ev, opened


def schema_of(url: str) -> str:
    return parse_store_url(url).schema


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 30) -> None:
    """Wait until ``check()`` holds, failing after ``within`` seconds (a deadline)."""
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.05)


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[Store]:
    async with opened(pg_url) as store:
        yield store


async def test_two_stores_claiming_at_once_never_take_one_event(pg_url: str, pg: Store) -> None:
    await asyncio.gather(*(pg.put(ev(f"e{i}")) for i in range(400)))
    taken: dict[str, list[str]] = {}

    async def worker(store: Store, name: str) -> None:
        while jobs := await store.claim(now=NOW, limit=7, lease=60):
            for job in jobs:
                taken.setdefault(job.event_id, []).append(name)
            await store.finish(
                [Outcome(j.seq, JobState.DONE, j.attempts, NOW, None, j.token) for j in jobs],
                now=NOW,
            )

    async with opened(pg_url) as other:
        await asyncio.gather(
            *(worker(pg, f"a{i}") for i in range(4)), *(worker(other, f"b{i}") for i in range(4))
        )
    assert sorted(taken) == sorted(f"e{i}" for i in range(400))
    assert all(len(names) == 1 for names in taken.values())
    assert {n[0] for names in taken.values() for n in names} == {"a", "b"}  # both took some
    assert (await pg.stats()).states["done"] == 400


async def test_migrations_racing_from_four_connections_apply_once(pg_database: str) -> None:
    schema = "t_race"

    async def one() -> list[int]:
        async with await psycopg.AsyncConnection.connect(pg_database, autocommit=True) as conn:
            return await migrate(conn, schema)

    try:
        results = await asyncio.gather(*(one() for _ in range(4)))
        every = [m.version for m in migrations()]
        assert sorted(results, key=len) == [[], [], [], every]
        async with await psycopg.AsyncConnection.connect(pg_database) as conn:
            cur = await conn.execute(f"SELECT version FROM {schema}.schema_migrations ORDER BY 1")
            assert [v for (v,) in await cur.fetchall()] == every
    finally:
        async with await psycopg.AsyncConnection.connect(pg_database, autocommit=True) as conn:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


async def test_stores_opening_at_once_migrate_once(pg_url: str) -> None:
    stores = [open_store(pg_url) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert [await s.put(ev("a")) for s in stores].count(PutResult.STORED) == 1
        assert isinstance(stores[0], PostgresStore)
        assert await stores[0].migrate() == []  # up to date: nothing applied
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_worker_is_woken_by_a_put_in_another_store(pg_url: str, pg: Store) -> None:
    async with opened(pg_url) as sender:
        await pg.wait_for_work(5)  # listening now (the first wait reports "maybe")
        waiter = asyncio.create_task(pg.wait_for_work(300))
        await sender.put(ev("from-elsewhere"))
        await asyncio.wait_for(waiter, 60)  # a deadline: it returns on the NOTIFY


async def terminate_backends(dsn: str, *, where: str = "true") -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        cur = await admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            f" WHERE datname = current_database() AND pid <> pg_backend_pid() AND {where}"
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def test_the_store_recovers_when_its_connections_are_cut(pg_url: str, pg: Store) -> None:
    dsn = parse_store_url(pg_url).dsn
    assert dsn is not None
    await pg.put(ev("before"))
    assert await terminate_backends(dsn) >= 1
    outcomes: list[object] = []

    async def stored_again() -> bool:
        try:
            outcomes.append(await pg.put(ev(f"after{len(outcomes)}")))
        except StoreUnavailable as exc:  # a cut connection is a 503, never another error
            outcomes.append(exc)
            return False
        return True

    await eventually(stored_again)
    assert await pg.ready()
    assert await pg.get_event("before") is not None


async def test_a_put_is_not_refused_for_connections_the_server_cut(pg_url: str, pg: Store) -> None:
    # Idle pooled connections killed (a restart, a failover): the next put finds out
    # and commits on a new connection instead of answering 503.
    dsn = parse_store_url(pg_url).dsn
    assert dsn is not None
    await asyncio.gather(*(pg.put(ev(f"warm{i}")) for i in range(100)))
    assert await terminate_backends(dsn) >= 1
    assert await pg.put(ev("after")) is PutResult.STORED
    assert await terminate_backends(dsn) >= 1
    assert (await pg.stats()).events == 101  # a read, too, tries a new connection


async def test_a_cut_listen_connection_reconnects_and_wakes_again(pg_url: str, pg: Store) -> None:
    dsn = parse_store_url(pg_url).dsn
    assert dsn is not None
    await pg.wait_for_work(5)
    assert isinstance(pg, PostgresStore)
    listener = pg._listener
    assert listener.connects == 1
    await terminate_backends(dsn, where="query LIKE 'LISTEN%'")

    async def reconnected() -> bool:
        await pg.wait_for_work(0.05)
        return listener.connects == 2

    await eventually(reconnected)
    async with opened(pg_url) as sender:
        waiter = asyncio.create_task(pg.wait_for_work(300))
        await sender.put(ev("after-reconnect"))
        await asyncio.wait_for(waiter, 60)


async def test_a_server_that_is_not_there_is_unavailable_without_its_password() -> None:
    url = f"postgresql://root:s3cret@127.0.0.1:{free_port()}/nowhere?schema=x"
    with pytest.raises(StoreUnavailable, match="cannot connect to PostgreSQL") as caught:
        await open_store(url).open()
    assert "s3cret" not in str(caught.value)
    assert "s3cret" not in open_store(url).url


async def test_a_read_only_store_does_not_create_its_schema(pg_url: str) -> None:
    with pytest.raises(StoreUnavailable, match="holds no cio-webhooks store"):
        await open_store(pg_url, readonly=True).open()
    dsn = parse_store_url(pg_url).dsn
    assert dsn is not None
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s", [schema_of(pg_url)]
        )
        assert await cur.fetchone() == (0,)


async def test_every_shipped_migration_is_recorded(pg_url: str, pg: Store) -> None:
    dsn = parse_store_url(pg_url).dsn
    assert dsn is not None
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            f"SELECT version, name FROM {schema_of(pg_url)}.schema_migrations ORDER BY 1"
        )
        assert await cur.fetchall() == [(m.version, m.name) for m in migrations()]
    assert [m.version for m in migrations()][:1] == [1]


async def test_a_read_only_look_at_a_schema_from_before_sink_cursors_finds_no_sink(
    pg_url: str, pg: Store
) -> None:
    # A schema as version 2 left it: what a newer reader sees before any writer migrated.
    dsn = parse_store_url(pg_url).dsn
    assert dsn is not None
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(f"DROP TABLE {schema_of(pg_url)}.sink_cursors")
        await conn.execute(f"DELETE FROM {schema_of(pg_url)}.schema_migrations WHERE version = 3")
    async with opened(pg_url, readonly=True) as reader:
        assert await reader.sink_states() == []


async def _schema_at(pg_url: str, version: int) -> None:
    """The store's schema as migrations 1 to ``version`` left it, with one event, as a
    writer of an earlier release made it (3: before the dashboard; 4: before operator
    actions were kept; 5: before logouts were)."""
    dsn = parse_store_url(pg_url).dsn
    assert dsn is not None
    schema = schema_of(pg_url)
    connect = psycopg.AsyncConnection.connect(dsn, autocommit=True)
    async with await connect as conn, conn.transaction():
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(f"SET LOCAL search_path TO {schema}")
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for m in migrations():
            if m.version <= version:
                await conn.execute(m.sql.encode())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    [m.version, m.name],
                )
        await conn.execute(
            "INSERT INTO events (event_id, object_type, metric, received_at, body,"
            " next_attempt_at, updated_at) VALUES ('old', 'email', 'sent', 1, '{}', 1, 1)"
        )


async def test_migration_4_applies_on_a_schema_at_3_and_keeps_its_events(pg_url: str) -> None:
    from cio_webhooks.store import AlertState, TrafficMinute

    await _schema_at(pg_url, 3)
    store = open_store(pg_url)
    assert isinstance(store, PostgresStore)
    assert await store.migrate() == [m.version for m in migrations() if m.version > 3]
    async with store:
        assert [e.event_id for e in await store.browse(EventFilter())] == ["old"]
        assert await store.kind_counts(since=0) == {("email", "sent"): 1}
        await store.record_traffic("r", [TrafficMinute(NOW, stored=1, ack=(1, 2))])
        assert await store.traffic(since=0) == [TrafficMinute(NOW, stored=1, ack=(1, 2))]
        assert await store.swap_alert(AlertState("a", True, None, NOW, None), expected=None)
        assert await store.schema_version() == migrations()[-1].version


async def test_a_read_only_look_at_a_schema_at_3_finds_no_traffic_and_no_alerts(
    pg_url: str,
) -> None:
    await _schema_at(pg_url, 3)
    async with opened(pg_url, readonly=True) as reader:
        assert await reader.traffic(since=0) == []
        assert await reader.alert_states() == []
        assert [e.event_id for e in await reader.browse(EventFilter(text="{}"))] == ["old"]
        assert await reader.last_received_at() == 1
        assert isinstance(reader, PostgresStore)
        assert await reader.schema_version() == 3  # and the look migrated nothing


async def test_migration_5_applies_on_a_schema_at_4_and_keeps_its_data(pg_url: str) -> None:
    from cio_webhooks.store import OperatorAction, TrafficMinute

    await _schema_at(pg_url, 4)
    dsn = parse_store_url(pg_url).dsn
    assert dsn is not None
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        # what the previous release kept on schema 4 besides events
        schema = schema_of(pg_url)
        await conn.execute(
            f"INSERT INTO {schema}.traffic VALUES (%s, 'r', 1, 0, 0, 0, 0, 0, '{{1,2}}')", [NOW]
        )
        await conn.execute(
            f"INSERT INTO {schema}.alert_states VALUES ('a', true, 2.0, %s, NULL, 1)", [NOW]
        )
    store = open_store(pg_url)
    assert isinstance(store, PostgresStore)
    assert await store.migrate() == [m.version for m in migrations() if m.version > 4]
    async with store:
        assert [e.event_id for e in await store.browse(EventFilter())] == ["old"]
        assert await store.traffic(since=0) == [TrafficMinute(NOW, stored=1, ack=(1, 2))]
        assert [(s.rule, s.version) for s in await store.alert_states()] == [("a", 1)]
        assert await store.operator_actions() == []
        done = OperatorAction(NOW, "admin", "dlq_retry", 1, "dead letter old")
        await store.record_operator_action(done)
        assert await store.operator_actions() == [done]
        assert await store.schema_version() == migrations()[-1].version


async def test_a_read_only_look_at_a_schema_at_4_finds_no_operator_actions(pg_url: str) -> None:
    await _schema_at(pg_url, 4)
    async with opened(pg_url, readonly=True) as reader:
        assert await reader.operator_actions() == []
        assert await reader.alert_states() == []
        assert isinstance(reader, PostgresStore)
        assert await reader.schema_version() == 4  # and the look migrated nothing


async def test_migration_6_applies_on_a_schema_at_5_and_keeps_its_data(pg_url: str) -> None:
    from cio_webhooks.store import OperatorAction

    await _schema_at(pg_url, 5)
    done = OperatorAction(NOW, "admin", "dlq_retry", 1, "dead letter old")
    dsn = parse_store_url(pg_url).dsn
    assert dsn is not None
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        # what the previous release kept on schema 5 besides events
        await conn.execute(
            f'INSERT INTO {schema_of(pg_url)}.operator_actions (at, "user", action, count,'
            " detail) VALUES (%s, 'admin', 'dlq_retry', 1, 'dead letter old')",
            [NOW],
        )
    store = open_store(pg_url)
    assert isinstance(store, PostgresStore)
    assert await store.migrate() == [m.version for m in migrations() if m.version > 5]
    async with store:
        assert [e.event_id for e in await store.browse(EventFilter())] == ["old"]
        assert await store.operator_actions() == [done]
        assert not await store.session_revoked("sid")
        await store.revoke_session("sid", until=NOW + 3600)
        assert await store.session_revoked("sid")
        assert await store.schema_version() == migrations()[-1].version == 6


async def test_a_read_only_look_at_a_schema_at_5_finds_no_ended_session(pg_url: str) -> None:
    await _schema_at(pg_url, 5)
    async with opened(pg_url, readonly=True) as reader:
        assert not await reader.session_revoked("sid")
        assert not await reader.session_revoked("sid")  # asked again: still no table
        with pytest.raises(StoreUnavailable):
            await reader.revoke_session("sid", until=NOW + 3600)
        assert isinstance(reader, PostgresStore)
        assert await reader.schema_version() == 5  # and the look migrated nothing
        # a writer migrates it meanwhile: the reader sees its logouts from then on
        async with opened(pg_url) as writer:
            await writer.revoke_session("sid", until=NOW + 3600)
        assert await reader.session_revoked("sid")


async def test_a_seq_is_not_read_while_a_lower_one_may_still_commit(pg_url: str, pg: Store) -> None:
    # Another receiver's batch, caught between its INSERT and its COMMIT: it holds seq N.
    dsn = parse_store_url(pg_url).dsn
    assert dsn is not None
    await pg.put(ev("first"))
    async with await psycopg.AsyncConnection.connect(dsn) as other:
        await other.execute(
            f"SET search_path TO {schema_of(pg_url)}; SELECT pg_advisory_xact_lock({SEQ_LOCK})"
        )
        await other.execute(
            "INSERT INTO events (event_id, object_type, metric, received_at, body,"
            " next_attempt_at, updated_at) VALUES ('held', 'email', 'sent', 1, '\\x7b7d', 1, 1)"
        )
        later = asyncio.create_task(pg.put(ev("later")))
        # The later put may take its seq only after the held one commits, so a reader
        # sees a prefix: never "later" without "held".
        for _ in range(20):
            seen = [e.event_id async for e in pg.iter_events(EventFilter())]
            assert seen == ["first"]
            await asyncio.sleep(0.01)
        assert not later.done()
        await other.commit()
    assert await later is PutResult.STORED
    seen = [e.event_id async for e in pg.iter_events(EventFilter())]
    assert seen == ["first", "held", "later"]


async def test_a_put_that_cannot_commit_in_time_is_store_unavailable_not_a_hang(
    pg_url: str, pg: Store
) -> None:
    # Customer.io waits 4 s: past PUT_DEADLINE the receiver must be able to answer 503.
    dsn = parse_store_url(pg_url).dsn
    assert dsn is not None
    async with await psycopg.AsyncConnection.connect(dsn) as other:
        await other.execute(f"SELECT pg_advisory_xact_lock({SEQ_LOCK})")  # a stuck writer
        with pytest.raises(StoreUnavailable, match="took over"):
            await pg.put(ev("stuck"))
        await other.rollback()
    # The store recovers at once: the event Customer.io sends again is stored.
    assert await pg.put(ev("stuck")) in (PutResult.STORED, PutResult.DUPLICATE)
    assert [e.event_id async for e in pg.iter_events(EventFilter())] == ["stuck"]


async def test_the_url_names_the_schema_but_no_password(pg_database: str) -> None:
    parts = urllib.parse.urlsplit(pg_database)
    with_password = parts._replace(netloc=f"root:pw@{parts.hostname}:{parts.port}").geturl()
    store = open_store(f"{with_password}?schema=mine")
    assert "pw@" not in store.url
    assert "schema=mine" in store.url


async def test_a_listener_that_cannot_connect_waits_between_tries(pg_url: str) -> None:
    # PostgreSQL gone: a waiting worker keeps trying, with pauses, never in a busy loop.
    dead = f"postgresql://root@127.0.0.1:{free_port()}/nowhere"
    store = PostgresStore(dead, schema=schema_of(pg_url))
    try:
        await store.wait_for_work(1.0)  # returns by its timeout: the polling fallback
        listener = store._listener
        assert listener.connects == 0
        assert 1 <= listener.attempts <= 3  # tries at 0 s, ~0.5 s, ~1.5 s
    finally:
        await store.close()


async def test_a_copied_event_postgresql_cannot_hold_stops_the_copy_by_name(pg: Store) -> None:
    # SQLite holds a NUL in an event_id; PostgreSQL text cannot: store copy says which.
    good = StoredEvent(1, "good", "email", "sent", None, NOW, JobState.DONE, 1, NOW, None, b"{}")
    bad = dataclasses.replace(good, seq=2, event_id="b\x00d")
    with pytest.raises(ValueError, match="cannot be stored in PostgreSQL"):
        await pg.import_events([(good, []), (bad, [])])
    assert (await pg.stats()).events == 0  # nothing of that batch is kept


async def test_a_worker_is_woken_by_a_put_in_another_process(pg_url: str, pg: Store) -> None:
    await pg.wait_for_work(5)  # listening now
    waiter = asyncio.create_task(pg.wait_for_work(300))
    script = (
        "import asyncio, json, sys\n"
        "from cio_webhooks import parse_event\n"
        "from cio_webhooks.store import open_store\n"
        "from cio_webhooks.testing import make_event\n"
        "async def main():\n"
        "    store = open_store(sys.argv[1])\n"
        "    await store.open()\n"
        "    body = json.dumps(make_event('from-another-process')).encode()\n"
        "    print(await store.put(parse_event(body, received_at=1.0)))\n"
        "    await store.close()\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, pg_url, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert out.strip() == b"stored"
    await asyncio.wait_for(waiter, 60)  # a deadline: the other process's NOTIFY woke it
    assert await pg.get_event("from-another-process") is not None


async def test_a_put_before_open_is_refused_not_left_waiting(pg_url: str) -> None:
    with pytest.raises(StoreUnavailable, match="not open"):
        await open_store(pg_url).put(ev("early"))


async def test_an_option_libpq_does_not_know_is_a_configuration_error(pg_url: str) -> None:
    # It was StoreUnavailable (exit 3, "try again when it is back"), naming "localhost".
    with pytest.raises(ConfigError, match="bogusopt"):
        await open_store(f"{pg_url}&bogusopt=1").open()


async def test_a_read_only_server_is_not_ready(pg_database: str) -> None:
    # /readyz said "ready" while every INSERT failed with "read-only transaction" (a
    # primary made read-only, as some failovers and disk-full guards do).
    name = f"ro_{secrets.token_hex(4)}"
    base = pg_database.rsplit("/", 1)[0]
    with psycopg.connect(PG_SERVER, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        async with opened(f"{base}/{name}?schema=s") as store:
            assert await store.ready()
            with psycopg.connect(f"{base}/{name}", autocommit=True) as admin:
                admin.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )

            async def not_ready() -> bool:
                return not await store.ready()

            await eventually(not_ready, within=10)
        # A store already migrated opens on the read-only server (a standby being
        # promoted): starting writes nothing when the schema is up to date.
        async with opened(f"{base}/{name}?schema=s") as again:
            assert not await again.ready()
    finally:
        with psycopg.connect(PG_SERVER, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
