"""The dashboard's access rules without a browser: ``Access`` itself (cookie forgery,
expiry, other credentials, CSRF), then the app over a real SQLite store through
httpx's ASGI transport (redirects, 403s, the Bearer token, security headers), and
the ``ui`` command refusing a non-loopback address without credentials."""

from __future__ import annotations

import base64
import html
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.routing import Mount

from cio_webhooks.cli import main
from cio_webhooks.settings import UI_PATH
from cio_webhooks.store.sqlite import SQLiteStore
from cio_webhooks.testing import FixedClock, make_event
from cio_webhooks.ui import Access, create_ui, is_loopback
from cio_webhooks.ui._auth import COOKIE

PASSWORD = "s3cret-pass"
TOKEN = "tok-0123456789"


def access(
    clock: FixedClock | None = None, *, password: str | None = PASSWORD, token: str | None = TOKEN
) -> Access:
    return Access(
        bind="127.0.0.1", password=password, token=token, clock=clock or FixedClock(), ttl=3600
    )


def test_modes() -> None:
    assert access().mode == "login"
    assert Access(bind="127.0.0.1").mode == "open"
    assert Access(bind="::1").mode == "open"
    assert Access(bind="0.0.0.0").mode == "refused"  # noqa: S104
    assert Access(bind="10.1.2.3", token="t").mode == "login"
    assert [is_loopback(h) for h in ("localhost", "127.0.0.2", "[::1]", "::", "example.com")] == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_login_checks_user_and_password_or_the_token() -> None:
    a = access()
    assert a.check_login("admin", PASSWORD) == "admin"
    assert a.check_login("root", PASSWORD) is None
    assert a.check_login("admin", PASSWORD + "x") is None
    assert a.check_login("anyone", TOKEN) == "token"
    assert a.check_login("admin", "") is None
    assert a.check_login("admin", "pässwörd\udcff") is None  # not ASCII: no TypeError
    assert Access(bind="127.0.0.1").check_login("admin", "") is None  # open: no login
    assert a.check_bearer(f"Bearer {TOKEN}")
    assert a.check_bearer(f"bearer  {TOKEN} ")
    assert not a.check_bearer(f"Basic {TOKEN}")
    assert not a.check_bearer("Bearer wrong")
    assert not access(token=None).check_bearer(f"Bearer {TOKEN}")
    # a token that is not ASCII: clients send it as UTF-8, the server reads Latin-1
    odd = access(token="tök en=;%+/ x")
    assert odd.check_bearer("Bearer " + "tök en=;%+/ x".encode().decode("latin-1"))
    assert not odd.check_bearer("Bearer tok en=;%+/ x")
    assert "s3cret" not in repr(a)


def test_a_forged_or_altered_cookie_is_refused() -> None:
    a = access()
    cookie = a.new_cookie("admin")
    session = a.session(cookie)
    assert session is not None
    assert session.user == "admin"
    version, sid, name, expires, mac = cookie.split(".")
    assert version == "v2"
    assert session.sid == sid
    assert session.expires == int(expires)
    other = base64.urlsafe_b64encode(b"mallory").decode().rstrip("=")
    for forged in (
        f"{version}.{sid}.{other}.{expires}.{mac}",  # another user, same mac
        f"{version}.{sid}.{name}.{int(expires) + 86400}.{mac}",  # a longer life
        f"{version}.{sid}x.{name}.{expires}.{mac}",  # another session id
        f"{version}..{name}.{expires}.{mac}",
        f"{version}.{sid}.{name}.{expires}.{'0' * 64}",
        f"{version}.{sid}.{name}.{expires}",
        f"v1.{sid}.{name}.{expires}.{mac}",
        f"v3.{sid}.{name}.{expires}.{mac}",
        # the previous format, validly signed: it has no session id to end, so no
        f"v1.{name}.{expires}.{a._mac(f'v1|{name}|{expires}')}",
        "",
        "garbage",
    ):
        assert a.session(forged) is None, forged
    # the same credentials elsewhere (another worker) accept it; others do not
    assert access().session(cookie) is not None
    assert access(password="changed").session(cookie) is None
    assert access(token="other").session(cookie) is None
    assert Access(bind="127.0.0.1").session(cookie) is None


def test_a_session_expires() -> None:
    clock = FixedClock()
    a = access(clock)
    cookie = a.new_cookie("admin")
    clock.advance(3599)
    assert a.session(cookie) is not None
    clock.advance(1)
    assert a.session(cookie) is None


def test_each_login_is_a_session_of_its_own() -> None:
    a = access()  # a fixed clock: two logins in the same second
    one, two = a.session(a.new_cookie("admin")), a.session(a.new_cookie("admin"))
    assert one is not None
    assert two is not None
    assert one.cookie != two.cookie
    assert one.sid != two.sid
    assert one.expires == two.expires
    assert a.csrf_token(one) != a.csrf_token(two)


def test_csrf_tokens_are_bound_to_the_session() -> None:
    a = access()
    one = a.session(a.new_cookie("admin"))
    two = a.session(a.new_cookie("admin"))  # the same second: another session all the same
    assert one is not None
    assert two is not None
    assert a.check_csrf(one, a.csrf_token(one))
    assert not a.check_csrf(one, a.csrf_token(two))
    assert not a.check_csrf(one, None)
    assert not a.check_csrf(one, "")
    assert not a.check_csrf(one, a.csrf_token(one)[:-1] + "0")


# -- over HTTP --------------------------------------------------------------------------
@pytest.fixture
async def inbox(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    import json

    from cio_webhooks.events import parse_event

    store = SQLiteStore(tmp_path / "inbox.db")
    await store.open()
    body = json.dumps(make_event("ev-1", metric="bounced", recipient="a@gmail.com")).encode()
    await store.put(parse_event(body, received_at=1_700_000_000.0))
    try:
        yield store
    finally:
        await store.close()


def client(store: SQLiteStore, **options: str | None) -> httpx2.AsyncClient:
    ui = create_ui(store, **options)  # type: ignore[arg-type]
    app = Starlette(routes=[Mount(UI_PATH, app=ui)])  # mounted, as the service does
    # https: the session cookie is Secure, and httpx sends it over https only
    return httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app), base_url="https://localhost/ui"
    )


async def _login(c: httpx2.AsyncClient) -> None:
    answer = await c.post("/login", data={"user": "admin", "password": PASSWORD, "next": "/"})
    assert answer.status_code == 303
    assert answer.cookies[COOKIE]
    set_cookie = answer.headers["set-cookie"].lower()
    for attribute in ("httponly", "secure", "samesite=strict", "path=/ui", "max-age="):
        assert attribute in set_cookie


async def test_pages_need_a_session_and_posts_a_csrf_token(inbox: SQLiteStore) -> None:
    async with client(inbox, password=PASSWORD) as c:
        answer = await c.get("/events")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/ui/login?next=%2Fui%2Fevents"
        assert (await c.post("/dead-letters/apply", data={"action": "retry"})).status_code == 403

        await _login(c)  # the client keeps the cookie
        page = await c.get("/events")
        assert page.status_code == 200
        assert "ev-1" in page.text
        # the headers every page carries
        assert page.headers["x-frame-options"] == "DENY"
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["x-content-type-options"] == "nosniff"

        form = {"action": "retry", "scope": "all"}
        assert (await c.post("/dead-letters/apply", data=form)).status_code == 403
        wrong = {**form, "csrf": "f" * 64}
        assert (await c.post("/dead-letters/apply", data=wrong)).status_code == 403
        # a token of another session (another login) is refused too
        same_key = Access(bind="127.0.0.1", password=PASSWORD, clock=FixedClock(1))
        another = same_key.session(same_key.new_cookie("admin"))
        assert another is not None
        other = same_key.csrf_token(another)
        assert (
            await c.post("/dead-letters/apply", data={**form, "csrf": other})
        ).status_code == 403
        # from another site: refused whatever the token
        token = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        headers = {"origin": "https://evil.example"}
        refused = await c.post("/dead-letters/apply", data={**form, "csrf": token}, headers=headers)
        assert refused.status_code == 403
        done = await c.post("/dead-letters/apply", data={**form, "csrf": token})
        assert done.status_code == 303
        assert "retried+0+event" in done.headers["location"]


def _csrf(page: httpx2.Response) -> str:
    return page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]


async def test_a_logout_ends_the_session_in_every_process_on_the_store(
    inbox: SQLiteStore,
) -> None:
    async with client(inbox, password=PASSWORD) as c:
        await _login(c)
        copied = {"cookie": f"{COOKIE}={c.cookies[COOKIE]}"}  # as someone who stole it
        token = _csrf(await c.get("/events"))
        # another process on the store: its own store object and app, same credentials
        async with SQLiteStore(inbox.path) as theirs, client(theirs, password=PASSWORD) as other:
            assert (await other.get("/events", headers=copied)).status_code == 200
            out = await c.post("/logout", data={"csrf": token})
            assert out.status_code == 303
            assert out.headers["location"] == "/ui/login"
            assert COOKIE not in c.cookies  # this browser's is cleared
            for app in (other, c):  # and the copy is refused everywhere
                refused = await app.get("/events", headers=copied)
                assert refused.status_code == 303
                assert refused.headers["location"].startswith("/ui/login")
                form = {"action": "retry", "scope": "all", "csrf": token}
                posted = await app.post("/dead-letters/apply", data=form, headers=copied)
                assert posted.status_code == 403
                login_page = await app.get("/login", headers=copied)
                assert login_page.status_code == 200  # the form, not "already logged in"
        await _login(c)  # a new login is a new session
        assert (await c.get("/events")).status_code == 200


async def test_an_expired_or_forged_cookie_is_refused_by_the_app(inbox: SQLiteStore) -> None:
    clock = FixedClock()
    async with client(inbox, password=PASSWORD, clock=clock) as c:  # type: ignore[arg-type]
        same_key = Access(bind="127.0.0.1", password=PASSWORD, clock=clock)
        valid = same_key.new_cookie("admin")
        assert (await c.get("/events", headers={"cookie": f"{COOKIE}={valid}"})).status_code == 200
        version, sid, name, expires, mac = valid.split(".")
        forged = f"{version}.{sid}.{name}.{int(expires) + 86400}.{mac}"
        clock.advance(same_key.ttl)
        for cookie in (valid, forged):
            refused = await c.get("/events", headers={"cookie": f"{COOKIE}={cookie}"})
            assert refused.status_code == 303, cookie


async def test_a_logout_the_store_cannot_keep_still_clears_the_cookie(
    inbox: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    reader = SQLiteStore(inbox.path, readonly=True)  # the revoke cannot be written
    async with reader, client(reader, password=PASSWORD) as c:
        await _login(c)
        token = _csrf(await c.get("/events"))
        with caplog.at_level("INFO", logger="cio_webhooks.ui"):
            out = await c.post("/logout", data={"csrf": token})
        assert out.status_code == 303
        assert COOKIE not in c.cookies
        assert (await c.get("/events")).status_code == 303
    [error] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "event=ui_logout_unrecorded user=admin" in error.getMessage()
    assert "StoreUnavailable" in error.getMessage()
    assert PASSWORD not in caplog.text


async def test_a_wrong_password_is_refused_and_the_next_page_stays_local(
    inbox: SQLiteStore,
) -> None:
    async with client(inbox, password=PASSWORD) as c:
        wrong = await c.post("/login", data={"user": "admin", "password": "nope"})
        assert wrong.status_code == 401
        assert COOKIE not in wrong.cookies
        assert "nope" not in wrong.text
        for target in ("https://evil.example/", "//evil.example/ui/", "/elsewhere"):
            data = {"user": "admin", "password": PASSWORD, "next": target}
            answer = await c.post("/login", data=data)
            assert answer.headers["location"] == "/ui/", target


async def test_guesses_sent_at_once_are_checked_one_a_second_per_address(
    inbox: SQLiteStore,
) -> None:
    import asyncio
    import time

    from cio_webhooks.ui._auth import FAILED_LOGIN_PAUSE, LOGIN_QUEUE

    ui = create_ui(inbox, password=PASSWORD, token=TOKEN)
    app = Starlette(routes=[Mount(UI_PATH, app=ui)])

    def from_address(host: str) -> httpx2.AsyncClient:
        transport = httpx2.ASGITransport(app=app, client=(host, 1234))
        return httpx2.AsyncClient(transport=transport, base_url="https://localhost/ui")

    async with from_address("192.0.2.7") as attacker, from_address("192.0.2.8") as user:

        async def guess(n: int) -> tuple[int, float]:
            if n % 2:  # the token guessed in the header takes the same turns
                answer = await attacker.get("/events", headers={"authorization": f"Bearer g{n}"})
            else:
                answer = await attacker.post("/login", data={"user": "admin", "password": f"g{n}"})
            return answer.status_code, time.monotonic() - start

        async def log_in() -> tuple[int, float]:
            await asyncio.sleep(0.2)  # once the guesses wait
            answer = await user.post("/login", data={"user": "admin", "password": PASSWORD})
            return answer.status_code, time.monotonic() - start

        start = time.monotonic()
        *guesses, mine = await asyncio.gather(*(guess(n) for n in range(LOGIN_QUEUE + 2)), log_in())
    refused = sorted(t for status, t in guesses if status == 401)
    throttled = [t for status, t in guesses if status == 429]
    assert len(refused) == LOGIN_QUEUE
    assert len(throttled) == 2  # answered at once, unchecked
    assert max(throttled) < FAILED_LOGIN_PAUSE
    # one refused guess a second: the last one answered after LOGIN_QUEUE pauses
    assert refused[-1] >= LOGIN_QUEUE * FAILED_LOGIN_PAUSE * 0.95
    # another address is not held up by them
    assert mine[0] == 303
    assert mine[1] < FAILED_LOGIN_PAUSE


async def test_the_bearer_token_needs_no_cookie_and_no_csrf(inbox: SQLiteStore) -> None:
    async with client(inbox, token=TOKEN) as c:
        headers = {"authorization": f"Bearer {TOKEN}"}
        assert (await c.get("/events", headers=headers)).status_code == 200
        form = {"action": "retry", "scope": "all"}
        answer = await c.post("/dead-letters/apply", data=form, headers=headers)
        assert answer.status_code == 303
        # everything only when asked for: no scope, or a mistyped one, does nothing
        for scope in ({}, {"scope": "One", "event_id": "ev-1"}):
            for path in ("/dead-letters/confirm", "/dead-letters/apply"):
                data = {"action": "discard", **scope}
                refused = await c.post(path, data=data, headers=headers)
                assert refused.status_code == 400, (path, scope)
                assert "unknown scope" in refused.text
            for path in ("/quarantine/confirm", "/quarantine/apply"):
                refused = await c.post(path, data=scope, headers=headers)
                assert refused.status_code == 400, (path, scope)
        bad = {"authorization": "Bearer nope"}
        refused = await c.get("/events", headers=bad)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert "ev-1" not in refused.text
        # another scheme (a proxy's Basic auth) is not a token: the login form as usual
        basic = {"authorization": "Basic YTpi"}
        assert (await c.get("/events", headers=basic)).status_code == 303


async def test_without_credentials_open_on_loopback_refused_elsewhere(inbox: SQLiteStore) -> None:
    async with client(inbox, bind="127.0.0.1") as c:
        page = await c.get("/")
        assert page.status_code == 200
        assert "No dashboard credentials are configured" in page.text
        assert COOKIE in page.cookies  # a local session: its forms carry a CSRF token
    async with client(inbox, bind="0.0.0.0") as c:  # noqa: S104
        for path in ("/", "/events", "/login"):
            refused = await c.get(path)
            assert refused.status_code == 403
            assert "CIO_WEBHOOKS_UI_PASSWORD" in refused.text
        assert (await c.post("/login", data={"password": ""})).status_code == 403


async def test_an_open_dashboard_answers_only_at_loopback_names(inbox: SQLiteStore) -> None:
    # DNS rebinding: evil.example made to resolve to 127.0.0.1 is "same origin" with
    # the open dashboard: its script could read pages (CSRF token included) and act.
    ui = create_ui(inbox, bind="127.0.0.1")
    transport = httpx2.ASGITransport(app=Starlette(routes=[Mount(UI_PATH, app=ui)]))
    async with httpx2.AsyncClient(transport=transport, base_url="http://evil.example") as c:
        for path in ("/ui/", "/ui/events", "/ui/dead-letters", "/ui/events/ev-1"):
            refused = await c.get(path)
            assert refused.status_code == 403, path
            assert "ev-1" not in refused.text
            assert COOKIE not in refused.cookies
        posted = await c.post("/ui/dead-letters/apply", data={"action": "discard"})
        assert posted.status_code == 403
    for base in ("http://127.0.0.1:8000", "http://[::1]:8000", "http://localhost:8000"):
        async with httpx2.AsyncClient(transport=transport, base_url=base) as c:
            assert (await c.get("/ui/events")).status_code == 200, base
    # with credentials the name does not matter: a session is needed anyway
    ui = create_ui(inbox, bind="0.0.0.0", token=TOKEN)  # noqa: S104
    transport = httpx2.ASGITransport(app=Starlette(routes=[Mount(UI_PATH, app=ui)]))
    async with httpx2.AsyncClient(transport=transport, base_url="https://dash.example") as c:
        headers = {"authorization": f"Bearer {TOKEN}"}
        assert (await c.get("/ui/events", headers=headers)).status_code == 200


async def test_event_bodies_are_escaped(tmp_path: Path) -> None:
    import json

    from cio_webhooks.events import parse_event

    async with SQLiteStore(tmp_path / "inbox.db") as store:
        event = make_event("ev-<x>", subject="<script>alert(1)</script>")
        await store.put(parse_event(json.dumps(event).encode(), received_at=1.0))
        async with client(store, bind="127.0.0.1") as c:
            page = await c.get("/events/ev-%3Cx%3E")
            assert page.status_code == 200
            assert "<script>alert" not in page.text
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
            assert "ev-&lt;x&gt;" in page.text


async def test_an_event_link_stays_on_its_event_whatever_the_id(tmp_path: Path) -> None:
    import json
    import re
    import urllib.parse

    from cio_webhooks.events import parse_event

    ids = ("../../metrics", "a/b?c#d", "x/../../ui/dead-letters")
    async with SQLiteStore(tmp_path / "inbox.db") as store:
        for n, event_id in enumerate(ids):
            body = json.dumps(make_event(event_id)).encode()
            await store.put(parse_event(body, received_at=1.0 + n))
        async with client(store, bind="127.0.0.1") as c:
            page = await c.get("/events")
            hrefs = re.findall(r'<a href="(/ui/events/[^"]+)"', page.text)
            assert len(hrefs) == len(ids)
            for href, event_id in zip(hrefs, reversed(ids), strict=True):
                # where a browser goes: dot segments resolved, as urljoin does
                target = urllib.parse.urljoin("https://localhost/ui/events", href)
                assert target.startswith("https://localhost/ui/events/"), (event_id, target)
                shown = await c.get(target)
                assert shown.status_code == 200, event_id
                assert "<h1" in shown.text
                assert f"Event {event_id}" in html.unescape(shown.text)


def test_ui_refuses_a_public_address_without_credentials(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["ui", "--db", str(tmp_path / "inbox.db"), "--host", "0.0.0.0", "--port", "0"]  # noqa: S104
    result = runner.invoke(main, args, env={"CIO_WEBHOOKS_UI_PASSWORD": None})
    assert result.exit_code == 2
    assert "needs credentials" in result.output
    missing = runner.invoke(main, ["ui", "--db", str(tmp_path / "none.db"), "--port", "0"])
    assert missing.exit_code == 2
    assert "no inbox" in missing.output


@pytest.mark.parametrize(
    ("env", "args"),
    [
        ({"CIO_WEBHOOKS_UI_PASSWORD": ""}, []),
        ({"CIO_WEBHOOKS_UI_TOKEN": "  "}, []),
        ({}, ["--ui-password", " "]),
    ],
)
def test_a_credential_set_but_blank_is_refused_not_taken_as_none(
    tmp_path: Path, env: dict[str, str], args: list[str]
) -> None:
    # On loopback a blank password read as none would open the dashboard to anyone.
    (tmp_path / "inbox.db").touch()
    base = ["ui", "--db", str(tmp_path / "inbox.db"), "--port", "0"]
    result = CliRunner().invoke(main, base + args, env=env)
    assert result.exit_code == 2
    assert "is set but blank" in result.output


async def test_login_from_another_site_is_refused_and_plain_http_is_flagged(
    inbox: SQLiteStore,
) -> None:
    async with client(inbox, password=PASSWORD) as c:
        data = {"user": "admin", "password": PASSWORD}
        answer = await c.post("/login", data=data, headers={"origin": "https://evil.example"})
        assert answer.status_code == 403
        assert COOKIE not in answer.cookies
        assert "plain HTTP" not in (await c.get("/login")).text  # https
    ui = create_ui(inbox, password=PASSWORD)
    app = Starlette(routes=[Mount(UI_PATH, app=ui)])
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://dash.example") as c:
        assert "plain HTTP" in (await c.get("/ui/login")).text
    async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        assert "plain HTTP" not in (await c.get("/ui/login")).text
