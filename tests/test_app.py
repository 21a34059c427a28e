"""The HTTP receiver in-process: status codes follow Customer.io's delivery rules."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest

from cio_webhooks import ConfigError, Event, JobState, StoreUnavailable, create_app
from cio_webhooks.app import WebhookApp
from cio_webhooks.store import Gauges, PutResult, open_store, parse_store_url
from cio_webhooks.store.postgres import _ingest
from cio_webhooks.store.sqlite import SQLiteStore
from cio_webhooks.testing import FixedClock, make_event, signed_request

from .conftest import KEY, NOW, post_event, sample_files


async def test_authentic_event_is_stored_and_acked(
    client: httpx2.AsyncClient, inbox: SQLiteStore
) -> None:
    response = await post_event(client, make_event("e1"))
    assert response.status_code == 200
    assert response.json() == {"ok": True, "status": "stored"}
    stored = await inbox.get_event("e1")
    assert stored is not None
    assert stored.received_at == NOW


async def test_every_sample_is_accepted(client: httpx2.AsyncClient, inbox: SQLiteStore) -> None:
    for path in sample_files():
        response = await post_event(client, path.read_bytes())
        assert response.status_code == 200, path.name
    # Some of Customer.io's published samples share an event_id; dedupe keeps the first.
    ids = {json.loads(p.read_bytes())["event_id"] for p in sample_files()}
    assert len(ids) < len(sample_files())
    stats = await inbox.stats()
    assert stats.events == len(ids)
    assert stats.quarantined == 0


async def test_duplicate_event_id_is_acked_and_stored_once(
    client: httpx2.AsyncClient, inbox: SQLiteStore
) -> None:
    first = await post_event(client, make_event("dup"))
    again = await post_event(client, make_event("dup", metric="opened"))
    assert first.json()["status"] == "stored"
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert (await inbox.stats()).events == 1
    stored = await inbox.get_event("dup")
    assert stored is not None
    assert stored.metric == "delivered"


@pytest.mark.parametrize(
    "body",
    [b"not json at all", b"[]", b'{"no":"event_id"}', b'{"event_id":"e","data":[1]}'],
    ids=["not-json", "array", "no-event-id", "wrong-shape"],
)
async def test_authentic_non_event_is_quarantined_with_reason_and_acked(
    client: httpx2.AsyncClient, inbox: SQLiteStore, body: bytes
) -> None:
    response = await post_event(client, body)
    assert response.status_code == 200
    assert response.json()["status"] == "quarantined"
    [kept] = await inbox.quarantined()
    assert kept.body == body
    assert kept.reason
    assert (await inbox.stats()).events == 0


async def test_unknown_kind_is_a_normal_event(
    client: httpx2.AsyncClient, inbox: SQLiteStore
) -> None:
    response = await post_event(client, make_event("e-new", "hologram", "beamed"))
    assert response.json()["status"] == "stored"
    stored = await inbox.get_event("e-new")
    assert stored is not None
    assert (stored.object_type, stored.metric) == ("hologram", "beamed")


async def test_missing_signature_is_401_json(client: httpx2.AsyncClient) -> None:
    response = await client.post("/webhooks/customerio", content=b'{"event_id":"x"}')
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_signature"}


async def test_wrong_key_is_401_and_nothing_is_stored(
    client: httpx2.AsyncClient, inbox: SQLiteStore
) -> None:
    response = await post_event(client, make_event("e1"), key="not-the-key")
    assert response.status_code == 401
    assert (await inbox.stats()).events == 0
    assert await inbox.quarantined() == []


@pytest.mark.parametrize("skew", [301, 86400 * 6, -301], ids=["5min", "6days", "future"])
async def test_late_authentic_request_is_stored_processed_and_counted(
    client: httpx2.AsyncClient, app: Any, inbox: SQLiteStore, skew: int
) -> None:
    response = await post_event(client, make_event("late"), timestamp=NOW - skew)
    assert response.status_code == 200
    assert response.json()["status"] == "stored"
    stored = await inbox.get_event("late")
    assert stored is not None
    assert stored.state is JobState.PENDING  # processed like any other event
    assert app.receiver.counters.late == 1
    assert 'outcome="late"} 1' in (await client.get("/metrics")).text
    again = await post_event(client, make_event("late"), timestamp=NOW - skew)
    assert again.json()["status"] == "duplicate"  # dedupe stops a replay


async def test_late_request_logs_the_skew_but_no_secret(
    client: httpx2.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    body, headers = signed_request(make_event("e1"), key=KEY, timestamp=NOW - 1000)
    await client.post("/webhooks/customerio", content=body, headers=headers)
    text = caplog.text
    assert "event=late_request" in text
    assert "skew_s=1000" in text
    assert KEY not in text
    assert headers["X-CIO-Signature"] not in text


async def test_request_signed_beyond_the_dedupe_horizon_is_quarantined_stale(
    client: httpx2.AsyncClient, app: Any, inbox: SQLiteStore
) -> None:
    body = json.dumps(make_event("old", metric="bounced")).encode()
    response = await post_event(client, body, timestamp=NOW - 31 * 86400)
    assert response.status_code == 200
    assert response.json()["status"] == "quarantined"
    assert await inbox.get_event("old") is None  # never dispatched
    [kept] = await inbox.quarantined()
    assert (kept.event_id, kept.body) == ("old", body)
    assert kept.reason.startswith("stale")
    assert app.receiver.counters.stale == 1
    assert app.receiver.counters.late == 0
    assert app.receiver.traffic_counts()["quarantined"] == 1  # the dashboard's count


async def test_dedupe_horizon_is_the_services_dedupe_days(
    inbox: SQLiteStore, clock: FixedClock
) -> None:
    app = create_app(inbox, [KEY], clock=clock, dedupe_days=7)
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app), base_url="http://t"
    ) as c:
        within = await post_event(c, make_event("six"), timestamp=NOW - 6 * 86400)
        beyond = await post_event(c, make_event("eight"), timestamp=NOW - 8 * 86400)
    assert within.json()["status"] == "stored"
    assert beyond.json()["status"] == "quarantined"


@pytest.mark.parametrize("offset", [301, 31 * 86400])
async def test_forged_request_is_401_however_old(
    client: httpx2.AsyncClient, app: Any, inbox: SQLiteStore, offset: int
) -> None:
    response = await post_event(client, make_event("e1"), key="forger", timestamp=NOW - offset)
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_signature"}
    stats = await inbox.stats()
    assert (stats.events, stats.quarantined) == (0, 0)
    assert app.receiver.counters.rejected_signature == 1


@pytest.mark.parametrize("header", ["X-CIO-Signature", "X-CIO-Timestamp"])
async def test_a_repeated_signature_header_is_401(
    client: httpx2.AsyncClient, inbox: SQLiteStore, header: str
) -> None:
    body, headers = signed_request(make_event("twice"), key=KEY, timestamp=NOW)
    repeated = [*headers.items(), (header, headers[header])]  # even the same value twice
    response = await client.post("/webhooks/customerio", content=body, headers=repeated)
    assert response.status_code == 401
    assert await inbox.get_event("twice") is None


async def test_key_rotation_accepts_both_keys(inbox: SQLiteStore, clock: FixedClock) -> None:
    app = create_app(inbox, ["new-key", "old-key"], clock=clock)
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app), base_url="http://t"
    ) as c:
        assert (await post_event(c, make_event("a"), key="old-key")).status_code == 200
        assert (await post_event(c, make_event("b"), key="new-key")).status_code == 200
        assert (await post_event(c, make_event("c"), key="other")).status_code == 401


async def test_tolerance_is_configurable(inbox: SQLiteStore, clock: FixedClock) -> None:
    app = create_app(inbox, [KEY], clock=clock, tolerance=0)
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app), base_url="http://t"
    ) as c:
        response = await post_event(c, make_event("old"), timestamp=NOW - 86400 * 30)
    assert response.status_code == 200


async def test_body_over_the_limit_is_413(inbox: SQLiteStore, clock: FixedClock) -> None:
    app = create_app(inbox, [KEY], clock=clock, max_body=1000)
    big = make_event("big", subject="x" * 2000)
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app), base_url="http://t"
    ) as c:
        response = await post_event(c, big)
        small = await post_event(c, make_event("small"))
    assert response.status_code == 413
    assert response.json() == {"error": "body_too_large"}
    assert small.status_code == 200


async def test_streamed_body_over_the_limit_is_413_without_content_length(
    inbox: SQLiteStore, clock: FixedClock
) -> None:
    app = create_app(inbox, [KEY], clock=clock, max_body=1000)
    body, headers = signed_request(make_event("big", subject="x" * 5000), key=KEY, timestamp=NOW)

    async def chunks() -> Any:
        for i in range(0, len(body), 512):
            yield body[i : i + 512]

    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app), base_url="http://t"
    ) as c:
        response = await c.post("/webhooks/customerio", content=chunks(), headers=headers)
    assert response.status_code == 413


async def test_get_on_the_webhook_path_is_405(client: httpx2.AsyncClient) -> None:
    response = await client.get("/webhooks/customerio")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


class RefusingInbox(SQLiteStore):
    """A store whose disk has gone away: every write fails."""

    async def put(self, event: Event, *, handled: bool = False) -> PutResult:
        raise StoreUnavailable("disk I/O error")

    async def quarantine(
        self, body: bytes, reason: str, *, received_at: float, event_id: str | None = None
    ) -> int:
        raise StoreUnavailable("disk I/O error")

    async def ready(self) -> bool:
        return False

    async def gauges(self, *, now: float) -> Gauges:
        raise StoreUnavailable("disk I/O error")


@pytest.mark.parametrize("body", [None, b"not json"], ids=["event", "quarantine"])
async def test_store_refusing_writes_is_503(
    tmp_path: Path, clock: FixedClock, body: bytes | None
) -> None:
    inbox = RefusingInbox(tmp_path / "inbox.db")
    app = create_app(inbox, [KEY], clock=clock)
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app), base_url="http://t"
    ) as c:
        response = await post_event(c, body if body is not None else make_event("e1"))
        ready = await c.get("/readyz")
        metrics = await c.get("/metrics")
    assert response.status_code == 503
    assert response.json()["error"] == "store_unavailable"
    assert "disk" not in response.text  # internals stay in the log
    assert ready.status_code == 503
    assert metrics.status_code == 200  # a sick store must not take the metrics down
    assert 'outcome="store_unavailable"} 1' in metrics.text
    assert "\ncio_webhooks_store_up 0\n" in metrics.text  # the backlog gauges are absent
    assert app.receiver.counters.store_unavailable == 1


class SilentInbox(SQLiteStore):
    """A store that does not answer at all (a server behind a dead network path)."""

    async def ready(self) -> bool:
        await asyncio.Event().wait()
        return True

    async def gauges(self, *, now: float) -> Gauges:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_probes_answer_without_a_store_that_does_not_answer(
    tmp_path: Path, clock: FixedClock
) -> None:
    app = create_app(SilentInbox(tmp_path / "inbox.db"), [KEY], clock=clock)
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app), base_url="http://t"
    ) as c:
        ready = await c.get("/readyz")
        metrics = await c.get("/metrics")
    assert ready.status_code == 503
    assert metrics.status_code == 200
    assert "\ncio_webhooks_store_up 0\n" in metrics.text


async def test_full_sqlite_file_is_503_then_recovers_nothing_lost(
    tmp_path: Path, clock: FixedClock
) -> None:
    inbox = SQLiteStore(tmp_path / "inbox.db", max_bytes=64 * 1024)
    await inbox.open()
    app = create_app(inbox, [KEY], clock=clock)
    acked: list[str] = []
    refused = 0
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app), base_url="http://t"
    ) as c:
        for i in range(200):
            response = await post_event(c, make_event(f"e{i}", subject="y" * 500))
            if response.status_code == 200:
                acked.append(f"e{i}")
            else:
                assert response.status_code == 503
                refused += 1
    assert refused > 0
    assert acked
    for event_id in acked:
        assert await inbox.get_event(event_id) is not None
    await inbox.close()


async def test_health_and_readiness(client: httpx2.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}


async def test_metrics_count_outcomes(client: httpx2.AsyncClient) -> None:
    await post_event(client, make_event("m1"))
    await post_event(client, make_event("m1"))
    await post_event(client, make_event("m2"), key="wrong")
    text = (await client.get("/metrics")).text
    assert 'outcome="stored"} 1' in text
    assert 'outcome="duplicate"} 1' in text
    assert 'outcome="rejected_signature"} 1' in text
    assert "cio_webhooks_inbox_backlog 1\n" in text  # m1 waits for the (absent) dispatcher
    assert "cio_webhooks_inbox_dead_letters 0\n" in text
    assert "cio_webhooks_inbox_quarantined 0\n" in text
    assert "cio_webhooks_inbox_oldest_backlog_age_seconds 0\n" in text
    assert "cio_webhooks_store_up 1\n" in text


async def test_metrics_show_ack_latency_kinds_and_the_last_event(
    client: httpx2.AsyncClient,
) -> None:
    await post_event(client, make_event("k1", "email", "opened"))
    await post_event(client, make_event("k2", "email", "opened"))
    await post_event(client, make_event("k3", "email", "spammed"))
    await post_event(client, make_event("k3", "email", "spammed"))  # a duplicate: not a kind
    text = (await client.get("/metrics")).text
    assert 'cio_webhooks_events_total{object_type="email",metric="opened"} 2\n' in text
    assert 'cio_webhooks_events_total{object_type="email",metric="spammed"} 1\n' in text
    assert 'cio_webhooks_ack_seconds_bucket{le="+Inf"} 4\n' in text
    assert "cio_webhooks_ack_seconds_count 4\n" in text
    assert f"cio_webhooks_inbox_last_received_at {NOW:.3f}\n" in text


async def test_concurrent_requests_share_commits_and_all_land(
    client: httpx2.AsyncClient, inbox: SQLiteStore
) -> None:
    import asyncio

    responses = await asyncio.gather(*(post_event(client, make_event(f"c{i}")) for i in range(300)))
    assert all(r.status_code == 200 for r in responses)
    assert (await inbox.stats()).events == 300


async def test_in_process_dispatcher_gets_only_events_it_has_handlers_for(
    inbox: SQLiteStore, clock: FixedClock
) -> None:
    from cio_webhooks import Dispatcher, JobState, Router

    router = Router()
    seen: list[str] = []

    @router.on("email.bounced", name="bounces")
    def bounces(event: Event) -> None:
        seen.append(event.event_id)

    dispatcher = Dispatcher(inbox, router, clock=clock)
    app = create_app(inbox, [KEY], clock=clock, router=dispatcher.router)
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app), base_url="http://t"
    ) as c:
        await post_event(c, make_event("quiet", metric="delivered"))
        await post_event(c, make_event("loud", metric="bounced"))
    quiet, loud = await inbox.get_event("quiet"), await inbox.get_event("loud")
    assert quiet is not None
    assert quiet.state is JobState.DONE
    assert loud is not None
    assert loud.state is JobState.PENDING
    assert await dispatcher.run_once() == 1
    assert seen == ["loud"]


@pytest.mark.parametrize(
    "timestamp",
    ['"nan"', '"inf"', '"Infinity"', '"-Infinity"', "1e30", "9223372036854775808", "1e308"],
)
async def test_authentic_event_with_an_impossible_timestamp_is_stored(
    client: httpx2.AsyncClient, inbox: SQLiteStore, timestamp: str
) -> None:
    body = json.dumps(make_event("t1")).replace("1700000000", timestamp).encode()
    response = await post_event(client, body)
    assert response.status_code == 200
    assert response.json()["status"] == "stored"
    stored = await inbox.get_event("t1")
    assert stored is not None
    assert (stored.occurred_at, stored.body) == (None, body)


@pytest.mark.parametrize("text", [b"caf\xc3", b"\xc0\xaf", b"\xff"], ids=["cut", "overlong", "ff"])
async def test_authentic_event_with_invalid_utf8_is_stored_with_its_raw_bytes(
    client: httpx2.AsyncClient, inbox: SQLiteStore, text: bytes
) -> None:
    body = json.dumps(make_event("u1", subject="SUBJECT")).encode().replace(b"SUBJECT", text)
    response = await post_event(client, body)
    assert response.status_code == 200
    stored = await inbox.get_event("u1")
    assert stored is not None
    assert stored.body == body


@pytest.mark.parametrize("depth", [981, 5000, 100_000])
async def test_authentic_deeply_nested_body_is_kept_and_acked(
    client: httpx2.AsyncClient, inbox: SQLiteStore, depth: int
) -> None:
    nested = b"[" * depth + b"]" * depth
    body = b'{"event_id":"deep","metric":"sent","data":{"content":' + nested + b"}}"
    response = await post_event(client, body)
    assert response.status_code == 200
    stored = await inbox.get_event("deep")
    kept = [q.body for q in await inbox.quarantined()]
    assert (stored is not None and stored.body == body) or kept == [body]


async def test_authentic_event_with_odd_data_types_is_an_event_not_a_quarantine(
    client: httpx2.AsyncClient, inbox: SQLiteStore
) -> None:
    event = make_event("odd", metric="bounced", delivery_id=42, failure_message={"code": 550})
    event["data"]["prefetched"] = "true"
    response = await post_event(client, event)
    assert response.json()["status"] == "stored"
    assert await inbox.quarantined() == []


async def test_a_bad_timestamp_does_not_fail_the_valid_events_committed_with_it(
    client: httpx2.AsyncClient, inbox: SQLiteStore
) -> None:
    import asyncio

    bad = json.dumps(make_event("bad")).replace("1700000000", "1e30").encode()
    posts = [post_event(client, make_event(f"v{i}")) for i in range(400)]
    posts.insert(200, post_event(client, bad))
    responses = await asyncio.gather(*posts)
    assert [r.status_code for r in responses] == [200] * 401
    assert (await inbox.stats()).events == 401


class BuggyInbox(SQLiteStore):
    """A store with a bug that is not a store failure: put raises something unexpected."""

    async def put(self, event: Event, *, handled: bool = False) -> PutResult:
        raise OverflowError("Python int too large to convert to SQLite INTEGER")


async def test_an_unexpected_error_after_the_signature_is_a_quarantine_not_a_5xx(
    tmp_path: Path, clock: FixedClock
) -> None:
    inbox = BuggyInbox(tmp_path / "inbox.db")
    await inbox.open()
    app = create_app(inbox, [KEY], clock=clock)
    body = json.dumps(make_event("e1")).encode()
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app), base_url="http://t"
    ) as c:
        response = await post_event(c, body)
        again = await post_event(c, body)
    assert response.status_code == again.status_code == 200
    assert response.json()["status"] == "quarantined"
    [kept] = await inbox.quarantined()  # the retry did not add a second copy
    assert (kept.event_id, kept.body) == ("e1", body)
    assert "OverflowError" in kept.reason
    await inbox.close()


async def test_a_body_cut_short_by_the_client_is_not_counted_as_a_forgery(
    app: WebhookApp, inbox: SQLiteStore
) -> None:
    body, headers = signed_request(make_event("cut-short"), key=KEY, timestamp=NOW)
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": body[:10], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/webhooks/customerio",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    await app(scope, receive, send)
    assert sent == []  # nobody is left to answer
    assert app.receiver.counters.rejected_signature == 0
    assert app.receiver.counters.incomplete == 1
    assert await inbox.get_event("cut-short") is None
    assert sum(app.receiver.acks.counts) == 0  # no answer, so no ack time


async def test_the_webhook_path_with_a_trailing_slash_is_the_webhook(
    client: httpx2.AsyncClient, inbox: SQLiteStore
) -> None:
    body, headers = signed_request(make_event("slash"), key=KEY, timestamp=NOW)
    answer = await client.post("/webhooks/customerio/", content=body, headers=headers)
    assert answer.status_code == 200  # not 404: a 4xx stalls Customer.io's stream
    assert await inbox.get_event("slash") is not None


async def test_on_postgresql_a_request_queued_behind_stuck_writers_is_503_in_time(
    pg_url: str, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Customer.io waits 4 s, and no answer stalls its stream for an hour: the deadline
    # counts from the request's put, not from when a writer gets to its batch.
    monkeypatch.setattr(_ingest, "PUT_DEADLINE", 0.5)
    store = open_store(pg_url)
    await store.open()
    dsn = parse_store_url(pg_url).dsn
    assert dsn is not None
    app = create_app(store, [KEY], clock=clock)
    transport = httpx2.ASGITransport(app=app)
    try:
        async with (
            await psycopg.AsyncConnection.connect(dsn) as other,
            httpx2.AsyncClient(transport=transport, base_url="http://t") as c,
        ):
            await other.execute("SELECT pg_advisory_xact_lock(%s)", [_ingest.SEQ_LOCK])

            async def timed(event_id: str) -> tuple[int, float]:
                started = time.monotonic()
                response = await post_event(c, make_event(event_id))
                return response.status_code, time.monotonic() - started

            tasks = []
            for i in range(3):  # one batch per writer, and one waiting for a writer
                tasks.append(asyncio.create_task(timed(f"stuck-{i}")))
                await asyncio.sleep(0.05)
            answers = await asyncio.gather(*tasks)
            await other.rollback()
        assert [status for status, _ in answers] == [503, 503, 503]
        assert max(elapsed for _, elapsed in answers) < 0.8, answers
    finally:
        await store.close()


async def test_a_signing_key_that_is_not_text_is_refused_at_start_not_per_request(
    inbox: SQLiteStore,
) -> None:
    # As from a variable holding a byte that is not UTF-8 (decoded with surrogateescape):
    # verify() could not encode it, and every request, the valid keys' too, failed 500.
    with pytest.raises(ConfigError, match="not UTF-8"):
        create_app(inbox, [KEY, "new-key\udcff"])


async def test_metrics_show_each_sinks_lag_backlog_and_last_error(
    client: httpx2.AsyncClient, inbox: SQLiteStore, clock: FixedClock
) -> None:
    await post_event(client, make_event("s1"))
    await post_event(client, make_event("s2"))
    now = clock()
    await inbox.register_sink("lake", "parquet:///lake", now=now)
    await inbox.lease_sink("lake", "me", now=now, until=now + 30)
    await inbox.sink_failed("lake", "me", 'disk "full"', now=now)
    clock.advance(7)
    text = (await client.get("/metrics")).text
    assert 'cio_webhooks_sink_rows_behind{sink="lake"} 2\n' in text
    assert 'cio_webhooks_sink_lag_seconds{sink="lake"} 7\n' in text
    assert 'cio_webhooks_sink_failures{sink="lake"} 1\n' in text
    assert 'cio_webhooks_sink_up{sink="lake"} 0\n' in text
    assert 'cio_webhooks_sink_last_error_info{sink="lake",error="disk \\"full\\""} 1\n' in text
