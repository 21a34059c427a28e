"""Every dashboard page renders on both store backends (through httpx's ASGI transport,
open on loopback), with a dead letter, a quarantined body and a policy audit row, and
a retry and a re-ingest go through their confirmation, recorded in the store with who
did them."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import psycopg
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from cio_webhooks.events import parse_event
from cio_webhooks.settings import UI_PATH
from cio_webhooks.store import (
    AlertState,
    JobState,
    OperatorAction,
    Outcome,
    Store,
    open_store,
)
from cio_webhooks.store.postgres import PostgresStore
from cio_webhooks.store.sqlite import SQLiteStore
from cio_webhooks.testing import make_event
from cio_webhooks.ui import create_ui

from ..conftest import store_per_backend

NOW = 1_700_000_000.0


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with store_per_backend(request, tmp_path) as opened:
        for i, metric in enumerate(("sent", "delivered", "bounced")):
            event = make_event(f"ev-{metric}", metric=metric, delivery_id="dlv-9")
            body = json.dumps(event).encode()
            await opened.put(parse_event(body, received_at=NOW + i))
        # the bounce dies: claimed once, and its handler failed
        [job] = [
            j for j in await opened.claim(now=NOW + 10, limit=10, lease=30) if j.metric == "bounced"
        ]
        await opened.finish(
            [Outcome(job.seq, JobState.DEAD, 1, NOW + 10, "hook: boom <i>", job.token)],
            now=NOW + 10,
        )
        await opened.quarantine(b"not json <b>", "not JSON", received_at=NOW)
        yield opened


def client(store: Store) -> httpx2.AsyncClient:
    ui = create_ui(store, bind="127.0.0.1", ledger=store.ledger(), clock=lambda: NOW + 60)
    app = Starlette(routes=[Mount(UI_PATH, app=ui)])
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="https://localhost")


def csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found is not None
    return found.group(1)


async def test_every_page_renders(store: Store) -> None:
    async with client(store) as c:
        expected = {
            "/ui/": "Dead letters",
            "/ui/live": "Backlog",
            "/ui/events": "ev-delivered",
            "/ui/events?metric=bounced": "ev-bounced",
            "/ui/events?q=DLV-9&state=dead": "ev-bounced",
            "/ui/events/ev-sent": "Other events of delivery dlv-9",
            "/ui/dead-letters": "hook: boom &lt;i&gt;",
            "/ui/quarantine/1": "not json &lt;b&gt;",
            "/ui/policies": "spam-complaint-unsubscribe",
            "/ui/deliverability": "No SQL sink to read",
        }
        for path, text in expected.items():
            page = await c.get(path)
            assert page.status_code == 200, path
            assert text in page.text, path
        narrowed = await c.get("/ui/events?metric=bounced")
        assert "ev-sent" not in narrowed.text
        bad = await c.get("/ui/events?since=yesterday-ish")
        assert "use 30m, 24h, 7d" in bad.text
        assert (await c.get("/ui/events/nope")).status_code == 404


async def test_retry_and_reingest_go_through_a_confirmation(store: Store) -> None:
    async with client(store) as c:
        token = csrf((await c.get("/ui/dead-letters")).text)
        form = {"csrf": token, "action": "retry", "scope": "all", "metric": "bounced"}
        confirm = await c.post("/ui/dead-letters/confirm", data=form)
        assert "Retry 1 event(s)?" in confirm.text
        stored = await store.get_event("ev-bounced")
        assert stored is not None
        assert stored.state is JobState.DEAD  # nothing done yet
        done = await c.post("/ui/dead-letters/apply", data=form)
        assert done.status_code == 303
        stored = await store.get_event("ev-bounced")
        assert stored is not None
        assert stored.state is JobState.PENDING
        # a named event that is not a dead letter refuses the whole action
        one = {"csrf": token, "action": "discard", "scope": "one", "event_id": "ev-sent"}
        refused = await c.post("/ui/dead-letters/apply", data=one)
        assert refused.status_code == 400
        assert "not dead letters" in refused.text
        page = await c.get("/ui/dead-letters")
        assert "dlq_retry" in page.text  # who did what, shown

        again = {"csrf": token, "scope": "one", "id": "1"}
        assert "Re-ingest 1 event(s)?" in (await c.post("/ui/quarantine/confirm", data=again)).text
        reingested = await c.post("/ui/quarantine/apply", data=again)
        assert "still_invalid%3D1" in reingested.headers["location"]


async def test_actions_are_listed_by_a_dashboard_of_another_process_or_after_a_restart(
    store: Store,
) -> None:
    async with client(store) as c:
        token = csrf((await c.get("/ui/dead-letters")).text)
        form = {"csrf": token, "action": "retry", "scope": "all", "metric": "bounced"}
        assert (await c.post("/ui/dead-letters/apply", data=form)).status_code == 303
        again = {"csrf": token, "scope": "one", "id": "1"}
        assert (await c.post("/ui/quarantine/apply", data=again)).status_code == 303
    # What a CLI on another host did meanwhile (tests/cli checks the CLI records it).
    cli = OperatorAction(NOW + 61, "cli:ann", "dlq_discard", 0, "every dead letter")
    await store.record_operator_action(cli)
    # Another process, or this one restarted: its own store object and dashboard.
    other = open_store(store.url)
    await other.open()
    try:
        assert [(a.user, a.action, a.count) for a in await other.operator_actions()] == [
            ("cli:ann", "dlq_discard", 0),
            ("local", "quarantine_reingest", 0),
            ("local", "dlq_retry", 1),
        ]
        async with client(other) as c:
            page = (await c.get("/ui/dead-letters")).text
    finally:
        await other.close()
    listed = page[page.index('id="operator-actions"') :]
    assert listed.index("cli:ann") < listed.index("quarantine_reingest") < listed.index("dlq_retry")
    assert "every dead letter matching metric=bounced" in listed
    assert "quarantined body 1: stored=0 duplicate=0 still_invalid=1 stale_left=0" in listed


async def _refuse_operator_actions(store: Store) -> None:
    """Make the store's table of operator actions refuse every insert (a trigger): the
    store is up, the action works, only its record fails."""
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as db:
            db.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON operator_actions"
                " BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            )
        return
    assert isinstance(store, PostgresStore)
    async with await psycopg.AsyncConnection.connect(store.dsn, autocommit=True) as conn:
        await conn.execute(
            f"CREATE FUNCTION {store.schema}.refuse() RETURNS trigger LANGUAGE plpgsql"
            " AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$;"
            f" CREATE TRIGGER refuse BEFORE INSERT ON {store.schema}.operator_actions"
            f" FOR EACH ROW EXECUTE FUNCTION {store.schema}.refuse()"
        )


async def test_an_action_the_store_cannot_record_is_done_and_answered_all_the_same(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await _refuse_operator_actions(store)
    caplog.set_level(logging.INFO, logger="cio_webhooks.ui")
    async with client(store) as c:
        token = csrf((await c.get("/ui/dead-letters")).text)
        one = {"csrf": token, "action": "retry", "scope": "one", "event_id": "ev-bounced"}
        done = await c.post("/ui/dead-letters/apply", data=one)
        assert done.status_code == 303
        assert "retried+1+event" in done.headers["location"]
        page = await c.get(done.headers["location"])
        assert page.status_code == 200
        assert "retried 1 event(s)" in page.text
        assert "None recorded" in page.text
    stored = await store.get_event("ev-bounced")
    assert stored is not None
    assert stored.state is JobState.PENDING
    assert "event=ui_action user=local action=dlq_retry count=1" in caplog.text
    [unrecorded] = [r for r in caplog.records if "event=ui_action_unrecorded" in r.getMessage()]
    assert unrecorded.levelno == logging.ERROR
    assert "disk full" in unrecorded.getMessage()


async def test_firing_alerts_show_on_the_overview(store: Store) -> None:
    state = AlertState("dead_letters", firing=True, value=3.0, changed_at=NOW, notified_at=NOW)
    assert await store.swap_alert(state, expected=None)
    quiet = AlertState("no_events", firing=False, value=0.0, changed_at=NOW, notified_at=None)
    assert await store.swap_alert(quiet, expected=None)
    async with client(store) as c:
        live = (await c.get("/ui/live")).text
        assert "<strong>dead_letters</strong> firing since" in live
        assert "3 when last notified" in live
        assert "no_events" not in live


async def test_a_store_that_does_not_answer_gets_a_503_page() -> None:
    down = open_store("postgresql://root@127.0.0.1:1/none?connect_timeout=1")
    async with client(down) as c:
        for path in ("/ui/events", "/ui/dead-letters", "/ui/events/ev-1"):
            page = await c.get(path)
            assert page.status_code == 503, path
            assert "The store did not answer" in page.text
            assert page.headers["x-frame-options"] == "DENY"
        overview = await c.get("/ui/")
        assert "The store did not answer" in overview.text


async def test_an_unreadable_policies_file_shows_its_error_not_the_default_rules(
    tmp_path: Path,
) -> None:
    from cio_webhooks.store.sqlite import SQLiteStore

    bad = tmp_path / "policies.toml"
    bad.write_text('[[rule]]\nname = "bad name!"\non = ["*.spammed"]\naction = "unsubscribe"\n')
    async with SQLiteStore(tmp_path / "inbox.db") as inbox:
        ui = create_ui(inbox, bind="127.0.0.1", policies=bad)
        app = Starlette(routes=[Mount(UI_PATH, app=ui)])
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="https://localhost") as c:
            page = await c.get("/ui/policies")
    assert page.status_code == 200
    assert "a name is letters" in page.text
    # the default rules are not what the file says: none is listed as live
    assert "spam-complaint-unsubscribe" not in page.text
    assert ">live<" not in page.text


async def test_a_quarantined_body_that_does_not_exist_is_a_404_whatever_its_id(
    tmp_path: Path,
) -> None:
    from cio_webhooks.store.sqlite import SQLiteStore

    async with SQLiteStore(tmp_path / "inbox.db") as inbox:
        await inbox.quarantine(b"not json", "not JSON", received_at=NOW)
        async with client(inbox) as c:
            assert (await c.get("/ui/quarantine/1")).status_code == 200
            for ident in ("2", "9" * 19, "9" * 5000, "abc", "-1", "\u0661"):
                answer = await c.get(f"/ui/quarantine/{ident}")
                assert answer.status_code == 404, ident[:20]
                assert "No quarantined body" in answer.text


async def test_cursors_and_ids_in_other_digits_are_refused_not_a_500(store: Store) -> None:
    # "²".isdigit() is true, and int("²") raises.
    async with client(store) as c:
        for path in (
            "/ui/events?before=²",
            "/ui/dead-letters?before=²",
            "/ui/dead-letters?qbefore=²",
        ):
            assert (await c.get(path)).status_code == 200, path
        token = csrf((await c.get("/ui/dead-letters")).text)
        for step in ("confirm", "apply"):
            form = {"csrf": token, "scope": "one", "id": "²"}
            refused = await c.post(f"/ui/quarantine/{step}", data=form)
            assert refused.status_code == 400, step
            assert "no quarantined body" in refused.text


async def test_a_result_notice_shows_only_when_this_session_did_the_action(store: Store) -> None:
    async with client(store) as c:
        token = csrf((await c.get("/ui/dead-letters")).text)
        form = {"csrf": token, "action": "retry", "scope": "all", "metric": "bounced"}
        done = await c.post("/ui/dead-letters/apply", data=form)
        shown = await c.get(done.headers["location"])
        assert "retried 1 event(s)" in shown.text
        crafted = await c.get("/ui/dead-letters?done=all+data+deleted&sig=00")
        assert "all data deleted" not in crafted.text
        unsigned = await c.get("/ui/dead-letters?done=all+data+deleted")
        assert "all data deleted" not in unsigned.text


#: Characters that reorder or hide the text around them (Trojan Source): a right-to-left
#: override, isolates, embeddings, zero-width ones, the BOM, a C1 control.
HIDDEN = "\u202e\u2066\u2067\u2069\u202a\u200b\u200d\u200e\u200f\u2060\ufeff\x85"


def shown_text(page: str) -> str:
    """What a page shows: its markup without the attribute values (a form's hidden
    field carries an event id as it is, to post it back)."""
    return re.sub(r'value="[^"]*"', "", page)


async def test_characters_that_reorder_or_hide_text_are_shown_escaped(tmp_path: Path) -> None:
    evil = "evil\u202egpj.exe"  # displays as "evilexe.jpg"
    async with SQLiteStore(tmp_path / "inbox.db") as inbox:
        event = make_event(
            evil,
            metric="bounced",
            person_id="p\u200bx",
            recipient="a\u2066b@example.com",
            subject="s\ufeffubj\u2067",
            failure_message="550 \u202atext\u200e\u200f\u2069\x85",
            campaign_id="c\u2060d",
        )
        await inbox.put(parse_event(json.dumps(event).encode(), received_at=NOW))
        [job] = await inbox.claim(now=NOW, limit=1, lease=30)
        await inbox.finish(
            [Outcome(job.seq, JobState.DEAD, 1, NOW, "hook: boom \u202e<i>", job.token)], now=NOW
        )
        await inbox.quarantine(b'{"x": "q\xe2\x80\xae"}', "bad \u2067 reason", received_at=NOW)
        ledger = inbox.ledger()
        await ledger.reserve(rule="r", event_id=evil, person="p\u200bx", dry_run=True, now=NOW)
        await ledger.finish(
            rule="r",
            event_id=evil,
            person="p\u200bx",
            action="unsubscribe",
            request={"id": "p\u200bx"},
            status="dry_run",
            detail="d\u202ee",
            dry_run=True,
            at=NOW,
        )
        async with client(inbox) as c:
            pages = {
                path: (await c.get(path)).text
                for path in (
                    "/ui/events",
                    "/ui/events/evil%E2%80%AEgpj.exe",
                    "/ui/dead-letters",
                    "/ui/quarantine/1",
                    "/ui/policies",
                )
            }
            css = (await c.get("/ui/static/ui.css")).text
    # and a value cannot reorder its neighbours: each cell is laid out on its own
    assert re.search(r"(^|\n)th, td, dl\.facts dd \{ unicode-bidi: isolate; \}", css)
    for path, page in pages.items():
        shown = shown_text(page)
        assert not set(HIDDEN) & set(shown), (path, set(HIDDEN) & set(shown))
        assert 'evil<span class="esc">\\u202e</span>gpj.exe' in shown or path == "/ui/quarantine/1"
    rows = pages["/ui/events"]
    assert 'p<span class="esc">\\u200b</span>x' in rows
    assert 'p<span class="esc">\\u200b</span>x@example.com' in rows  # its email
    event_page = pages["/ui/events/evil%E2%80%AEgpj.exe"]
    assert "<title>Event evil\\u202egpj.exe · cio-webhooks</title>" in event_page
    assert 's<span class="esc">\\ufeff</span>ubj<span class="esc">\\u2067</span>' in event_page
    assert 'c<span class="esc">\\u2060</span>d' in event_page  # a normalised field
    assert 'a<span class="esc">\\u2066</span>b@example.com' in event_page
    assert '<span class="esc">\\u0085</span>' in event_page  # a C1 control
    body = event_page[event_page.index('<pre class="body">') :]
    assert '&#34;event_id&#34;: &#34;evil<span class="esc">\\u202e</span>gpj.exe' in body
    assert "{\n  &#34;event_id&#34;" in body  # the body's own lines kept
    assert 'boom <span class="esc">\\u202e</span>&lt;i&gt;' in pages["/ui/dead-letters"]
    assert 'bad <span class="esc">\\u2067</span> reason' in pages["/ui/dead-letters"]
    quarantined = pages["/ui/quarantine/1"]
    assert 'bad <span class="esc">\\u2067</span> reason' in quarantined
    assert '&#34;q<span class="esc">\\u202e</span>&#34;' in quarantined
    assert 'd<span class="esc">\\u202e</span>e' in pages["/ui/policies"]


def test_the_visible_filter_escapes_everything_and_marks_only_hidden_characters() -> None:
    from markupsafe import Markup

    from cio_webhooks.ui._web import spelled, visible

    shown = visible('<b title="x">\u202e&\u00e9\u05d0\U000e0041</b>')
    assert isinstance(shown, Markup)
    assert shown == (
        '&lt;b title=&#34;x&#34;&gt;<span class="esc">\\u202e</span>&amp;\u00e9\u05d0'
        '<span class="esc">\\U000e0041</span>&lt;/b&gt;'
    )
    assert (
        visible("a\nb\tc") == 'a<span class="esc">\\u000a</span>b<span class="esc">\\u0009</span>c'
    )
    assert visible("a\r\nb\tc\u2028", lines=True) == 'a\r\nb\tc<span class="esc">\\u2028</span>'
    assert visible(None) == ""
    assert visible(12) == "12"
    assert visible("\u3164") == '<span class="esc">\\u3164</span>'  # a blank letter
    assert spelled("x\u202ey <\u00e9>") == "x\\u202ey <\u00e9>"  # no markup: escaped later
