"""SQLiteStore only: its file (WAL, schema versions, read-only opening) and its writer
thread.  What every store does is in ``tests/store/test_contract.py``."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from cio_webhooks import Event, EventFilter, PutResult, parse_event
from cio_webhooks._exceptions import StoreUnavailable
from cio_webhooks.store.sqlite import SQLiteStore
from cio_webhooks.testing import make_event

from ..conftest import NOW

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
        from cio_webhooks.store.sqlite._inbox import (
            _OPERATOR_ACTIONS,
            _SINK_CURSORS,
            _UI_SESSIONS,
            _WATCH,
            SCHEMA,
            SCHEMA_VERSION,
        )

        version_1 = (
            SCHEMA.replace(_WATCH, "")
            .replace(_OPERATOR_ACTIONS, "")
            .replace(_UI_SESSIONS, "")
            .replace(",\n    backfilled      INTEGER NOT NULL DEFAULT 0", "")
            .replace(_SINK_CURSORS, "")
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
        assert "sink_cursors" not in version_1
        assert "traffic" not in version_1
        assert "operator_actions" not in version_1
        assert "ui_revoked_sessions" not in version_1
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
        assert (await inbox.register_sink("wh", "sqlite:///wh.db", now=NOW)).seq == 0
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


async def test_a_version_3_file_keeps_the_first_copy_of_each_quarantined_event_id(
    tmp_path: Path,
) -> None:
    from cio_webhooks.store.sqlite._inbox import (
        _OPERATOR_ACTIONS,
        _SINK_CURSORS,
        _WATCH,
        SCHEMA,
        SCHEMA_VERSION,
    )

    path = tmp_path / "v3.db"
    version_3 = (
        SCHEMA.replace(_QUARANTINE_INDEX, "")
        .replace(_WATCH, "")
        .replace(_OPERATOR_ACTIONS, "")
        .replace(_SINK_CURSORS, "")
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


async def test_a_read_only_look_at_a_file_from_before_sink_cursors_finds_no_sink(
    tmp_path: Path,
) -> None:
    from cio_webhooks.store.sqlite._inbox import (
        _OPERATOR_ACTIONS,
        _SINK_CURSORS,
        _UI_SESSIONS,
        _WATCH,
        SCHEMA,
        SCHEMA_VERSION,
    )

    path = tmp_path / "v5.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            SCHEMA.replace(_SINK_CURSORS, "")
            .replace(_WATCH, "")
            .replace(_OPERATOR_ACTIONS, "")
            .replace(_UI_SESSIONS, "")
            .replace(f"PRAGMA user_version = {SCHEMA_VERSION};", "PRAGMA user_version = 5;")
        )
    async with SQLiteStore(path, readonly=True) as reader:
        assert await reader.sink_states() == []
    with sqlite3.connect(path) as db:  # and the look changed nothing
        assert db.execute("PRAGMA user_version").fetchone() == (5,)


def _version_6(path: Path) -> None:
    """A file as cio-webhooks left it before the dashboard (schema 6), with one event."""
    from cio_webhooks.store.sqlite._inbox import (
        _OPERATOR_ACTIONS,
        _UI_SESSIONS,
        _WATCH,
        SCHEMA,
        SCHEMA_VERSION,
    )

    version_6 = (
        SCHEMA.replace(_WATCH, "")
        .replace(_OPERATOR_ACTIONS, "")
        .replace(_UI_SESSIONS, "")
        .replace(f"PRAGMA user_version = {SCHEMA_VERSION};", "PRAGMA user_version = 6;")
    )
    assert "traffic" not in version_6
    assert "alert_states" not in version_6
    with sqlite3.connect(path) as db:
        db.executescript(version_6)
        db.execute(
            "INSERT INTO events (event_id, object_type, metric, received_at, body,"
            " next_attempt_at, updated_at) VALUES ('old', 'email', 'sent', 1, x'7b7d', 1, 1)"
        )


async def test_a_version_6_file_keeps_its_events_and_gains_traffic_and_alerts(
    tmp_path: Path,
) -> None:
    from cio_webhooks.store import AlertState, TrafficMinute
    from cio_webhooks.store.sqlite._inbox import SCHEMA_VERSION

    path = tmp_path / "v6.db"
    _version_6(path)
    async with SQLiteStore(path) as inbox:
        assert [e.event_id for e in await inbox.browse(EventFilter())] == ["old"]
        assert await inbox.kind_counts(since=0) == {("email", "sent"): 1}
        await inbox.record_traffic("r", [TrafficMinute(NOW, stored=1)])
        assert await inbox.traffic(since=0) == [TrafficMinute(NOW, stored=1)]
        assert await inbox.swap_alert(AlertState("a", True, 1.0, NOW, None), expected=None)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


async def test_a_read_only_look_at_a_version_6_file_finds_no_traffic_and_no_alerts(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v6.db"
    _version_6(path)
    async with SQLiteStore(path, readonly=True) as reader:
        assert await reader.traffic(since=0) == []
        assert await reader.alert_states() == []
        assert [e.event_id for e in await reader.browse(EventFilter(text="{"))] == ["old"]
        assert await reader.last_received_at() == 1
    with sqlite3.connect(path) as db:  # and the look changed nothing
        assert db.execute("PRAGMA user_version").fetchone() == (6,)
        assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'traffic'").fetchone()


def _version_7(path: Path) -> None:
    """A file as cio-webhooks left it before operator actions were kept (schema 7),
    with one event, one minute of traffic and one alert state."""
    from cio_webhooks.store.sqlite._inbox import (
        _OPERATOR_ACTIONS,
        _UI_SESSIONS,
        SCHEMA,
        SCHEMA_VERSION,
    )

    version_7 = (
        SCHEMA.replace(_OPERATOR_ACTIONS, "")
        .replace(_UI_SESSIONS, "")
        .replace(f"PRAGMA user_version = {SCHEMA_VERSION};", "PRAGMA user_version = 7;")
    )
    assert "operator_actions" not in version_7
    assert "ui_revoked_sessions" not in version_7
    with sqlite3.connect(path) as db:
        db.executescript(version_7)
        db.execute(
            "INSERT INTO events (event_id, object_type, metric, received_at, body,"
            " next_attempt_at, updated_at) VALUES ('old', 'email', 'sent', 1, x'7b7d', 1, 1)"
        )
        db.execute("INSERT INTO traffic VALUES (60, 'r', 1, 0, 0, 0, 0, 0, '')")
        db.execute("INSERT INTO alert_states VALUES ('a', 1, 2.0, 60, NULL, 1)")


async def test_a_version_7_file_keeps_its_data_and_gains_operator_actions(
    tmp_path: Path,
) -> None:
    from cio_webhooks.store import OperatorAction, TrafficMinute
    from cio_webhooks.store.sqlite._inbox import MIGRATIONS, SCHEMA_VERSION

    path = tmp_path / "v7.db"
    _version_7(path)
    async with SQLiteStore(path) as inbox:
        assert [e.event_id for e in await inbox.browse(EventFilter())] == ["old"]
        assert await inbox.traffic(since=0) == [TrafficMinute(60, stored=1)]
        assert [(s.rule, s.version) for s in await inbox.alert_states()] == [("a", 1)]
        assert await inbox.operator_actions() == []
        done = OperatorAction(NOW, "admin", "dlq_retry", 1, "dead letter old")
        await inbox.record_operator_action(done)
        assert await inbox.operator_actions() == [done]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert max(MIGRATIONS) + 1 == SCHEMA_VERSION


async def test_a_read_only_look_at_a_version_7_file_finds_no_operator_actions(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v7.db"
    _version_7(path)
    async with SQLiteStore(path, readonly=True) as reader:
        assert await reader.operator_actions() == []
        assert [s.rule for s in await reader.alert_states()] == ["a"]
    with sqlite3.connect(path) as db:  # and the look changed nothing
        assert db.execute("PRAGMA user_version").fetchone() == (7,)
        assert not db.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'operator_actions'"
        ).fetchone()


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


def _version_8(path: Path) -> None:
    """A file as cio-webhooks left it before logouts were kept (schema 8), with one
    event and one operator action."""
    from cio_webhooks.store.sqlite._inbox import _UI_SESSIONS, SCHEMA, SCHEMA_VERSION

    version_8 = SCHEMA.replace(_UI_SESSIONS, "").replace(
        f"PRAGMA user_version = {SCHEMA_VERSION};", "PRAGMA user_version = 8;"
    )
    assert "ui_revoked_sessions" not in version_8
    with sqlite3.connect(path) as db:
        db.executescript(version_8)
        db.execute(
            "INSERT INTO events (event_id, object_type, metric, received_at, body,"
            " next_attempt_at, updated_at) VALUES ('old', 'email', 'sent', 1, x'7b7d', 1, 1)"
        )
        db.execute(
            "INSERT INTO operator_actions (at, user, action, count, detail)"
            " VALUES (60, 'admin', 'dlq_retry', 1, 'dead letter old')"
        )


async def test_a_version_8_file_keeps_its_data_and_gains_ended_sessions(
    tmp_path: Path,
) -> None:
    from cio_webhooks.store import OperatorAction
    from cio_webhooks.store.sqlite._inbox import MIGRATIONS, SCHEMA_VERSION

    path = tmp_path / "v8.db"
    _version_8(path)
    async with SQLiteStore(path) as inbox:
        assert [e.event_id for e in await inbox.browse(EventFilter())] == ["old"]
        done = OperatorAction(60, "admin", "dlq_retry", 1, "dead letter old")
        assert await inbox.operator_actions() == [done]
        assert not await inbox.session_revoked("sid")
        await inbox.revoke_session("sid", until=NOW + 3600)
        assert await inbox.session_revoked("sid")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert SCHEMA_VERSION == max(MIGRATIONS) + 1 == 9


async def test_a_read_only_look_at_a_version_8_file_finds_no_ended_session(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v8.db"
    _version_8(path)
    async with SQLiteStore(path, readonly=True) as reader:
        assert not await reader.session_revoked("sid")
        assert [a.user for a in await reader.operator_actions()] == ["admin"]
        with pytest.raises(StoreUnavailable):
            await reader.revoke_session("sid", until=NOW + 3600)
    with sqlite3.connect(path) as db:  # and the look changed nothing
        assert db.execute("PRAGMA user_version").fetchone() == (8,)
        assert not db.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'ui_revoked_sessions'"
        ).fetchone()
