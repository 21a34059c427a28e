r"""What every dashboard page shares: its context (``Dashboard``), templates, the
access check before each page, forms with their CSRF token, and the security headers.

A page is ``async def page(dash, request, session, form) -> Response`` wrapped by
``endpoint``: it only runs for an authenticated session, and a POST only with the
session's CSRF token (else 403).  Templates autoescape everything: event bodies are
attacker-controlled JSON.  And what they show of an event (ids, parsed fields, the
body) goes through the ``visible`` filter: a character that reorders or hides text
(a right-to-left override, a zero-width space) is shown as its escape, so that
``evil\u202egpj.exe`` cannot pass for ``evilexe.jpg``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import unicodedata
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._operator import record_action
from ..events import iso
from ..settings import UI_PATH
from ..sinks import SinkURL
from ..store import Ledger, OperatorAction, Store
from ._auth import (
    COOKIE,
    FAILED_LOGIN_PAUSE,
    LOCAL_USER,
    TOKEN_USER,
    Access,
    Session,
    is_loopback,
)

__all__ = [
    "Dashboard",
    "Form",
    "SecurityHeaders",
    "endpoint",
    "render",
]

log = logging.getLogger("cio_webhooks.ui")

HERE = Path(__file__).parent
#: The largest form the dashboard reads (bytes): its forms hold a few short fields.
MAX_FORM = 64 * 1024

Form = Mapping[str, str]
Page = Callable[["Dashboard", Request, Session, Form], Awaitable[Response]]


@dataclass
class Dashboard:
    """What the pages read from: the store, the access rules, the policies file,
    the SQL sink of the Deliverability page, and the policies' ledger (None when no
    policy ever ran here)."""

    store: Store
    access: Access
    clock: Callable[[], float] = time.time
    policies: Path | None = None
    sink: SinkURL | None = None
    ledger: Ledger | None = None

    async def session(self, cookie: str | None) -> Session | None:
        """The session of a cookie value (``Access.session``), unless a logout in any
        process on the store ended it: one primary-key lookup per request.  Only in
        ``login`` mode: an ``open`` dashboard has no logout (its sessions are local
        and its key is this process's).  A store that does not answer raises
        ``StoreUnavailable`` (503), as the page's own reads would."""
        session = self.access.session(cookie)
        if (
            session is not None
            and session.sid is not None
            and self.access.mode == "login"
            and await self.store.session_revoked(session.sid)
        ):
            return None
        return session

    async def record(self, user: str, action: str, count: int, detail: str = "") -> None:
        """Log an operator action (who, what, how many events, which) and keep it in
        the store, where the dead-letters page of every process lists it, after a
        restart too (``store.operator_actions``).  The action is done by then: when
        the store cannot keep the record, that is logged as an error (the line above
        it still tells what was done) and the page answers with its result all the
        same."""
        # The log's formatter quotes a value that needs it (spaces, quotes, newlines).
        log.info(
            "event=ui_action user=%s action=%s count=%d detail=%s", user, action, count, detail
        )
        done = OperatorAction(self.clock(), user, action, count, detail)
        if (error := await record_action(self.store, done)) is not None:
            log.error(
                "event=ui_action_unrecorded user=%s action=%s error=%s",
                user,
                action,
                f"{type(error).__name__}: {error}",
            )


# -- templates ---------------------------------------------------------------------------
def _ago(seconds: float | None) -> str:
    """``42 s``, ``5 min``, ``3 h``, ``2 d``."""
    if seconds is None:
        return "never"
    s = max(0.0, seconds)
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 36 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _pct(value: float | None, places: int = 1) -> str:
    return "–" if value is None else f"{value * 100:.{places}f}%"


#: Unicode categories whose characters show nothing yet change how the text around
#: them reads: controls (C0, DEL, C1), format characters (bidi embeddings, overrides
#: and isolates, zero-width spaces and joiners, the BOM, invisible operators, tags),
#: lone surrogates, and the line and paragraph separators (which end a bidi run).
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
#: Letters and marks drawn as nothing at all (fillers, a grapheme joiner): the same
#: trick with another category.
_BLANK = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0")
#: Where a hidden character may be: anything but printable ASCII.
_NOT_PLAIN = re.compile(r"[^\x20-\x7e]")


def _hidden(char: str) -> bool:
    return char in _BLANK or unicodedata.category(char) in _HIDDEN_CATEGORIES


def _spelled(char: str) -> str:
    r"""``\u202e``; ``\U000e0041`` past the BMP."""
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def visible(value: object, lines: bool = False) -> Markup:
    r"""``value`` as HTML text (escaped: it is never trusted) in which every character
    that would reorder or hide text (``_hidden``) shows as its escape,
    ``<span class="esc">\u202e</span>``.  ``lines``: line breaks and tabs are kept as
    they are (a ``<pre>``).  None is empty."""
    text = "" if value is None else str(value)
    parts: list[str] = []
    start = 0
    for match in _NOT_PLAIN.finditer(text):
        char = match.group()
        if (lines and char in "\r\n\t") or not _hidden(char):
            continue
        parts.append(escape(text[start : match.start()]))
        parts.append(Markup('<span class="esc">{}</span>').format(_spelled(char)))
        start = match.end()
    parts.append(escape(text[start:]))
    return Markup("").join(parts)


def spelled(value: object) -> str:
    r"""``visible`` as plain text, for where no markup may go (a ``<title>``, an
    ``<option>``): each hidden character as its escape, ``\u202e``."""
    text = "" if value is None else str(value)
    return _NOT_PLAIN.sub(lambda m: _spelled(c) if _hidden(c := m.group()) else c, text)


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,  # everywhere, whatever the template's name
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["iso"] = iso
_env.filters["ago"] = _ago
_env.filters["pct"] = _pct
_env.filters["visible"] = visible
_env.filters["spelled"] = spelled
# An event id as one path segment: Jinja's urlencode keeps "/", so an id such as
# "../../metrics" made a link the browser resolved out of the dashboard.
_env.filters["segment"] = lambda value: urllib.parse.quote(str(value), safe="")
_env.filters["urlencode_dict"] = lambda d: urllib.parse.urlencode(
    {k: v for k, v in d.items() if v not in (None, "")}
)


def render(
    request: Request,
    session: Session | None,
    template: str,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    """``template`` rendered with the page context every template may use: ``root``
    (the dashboard's path), ``user``, ``csrf``, ``mode``, ``nav`` (the current page)."""
    dash: Dashboard | None = getattr(request.app.state, "dashboard", None)
    html = _env.get_template(template).render(
        root=request.scope.get("root_path", ""),
        user=session.user if session else None,
        csrf=dash.access.csrf_token(session) if dash and session else "",
        mode=dash.access.mode if dash else "login",
        can_logout=bool(session and session.cookie and dash and dash.access.mode == "login"),
        **context,
    )
    return HTMLResponse(html, status_code=status)


# -- access ------------------------------------------------------------------------------
def _forbidden(request: Request, why: str) -> Response:
    return render(request, None, "error.html", status=403, title="Forbidden", message=why)


async def read_form(request: Request) -> dict[str, str] | None:
    """The urlencoded form of a POST (last value of a repeated field), or None when
    it is too large."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return None
    pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    return dict(pairs)


def same_origin(request: Request) -> bool:
    """A POST from a page of another site carries its ``Origin``: refuse it (the
    SameSite cookie and the CSRF token refuse it too; this says so earlier)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urllib.parse.urlsplit(origin).netloc == request.headers.get("host")


def endpoint(page: Page) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint running ``page`` for an authenticated session: others are
    sent to the login form (a GET) or refused (403).  In ``open`` mode a visitor
    gets a local session at once.  A POST needs the session's CSRF token."""

    async def run(request: Request) -> Response:
        dash: Dashboard = request.app.state.dashboard
        access = dash.access
        if access.mode == "refused":
            return render(request, None, "refused.html", status=403)
        if access.mode == "open" and not is_loopback(request.url.hostname or ""):
            # DNS rebinding: a site whose name is made to resolve to 127.0.0.1 is
            # "same origin" with an open dashboard; only loopback names reach it.
            log.warning("event=ui_host_refused host=%s", request.url.hostname)
            return _forbidden(
                request,
                "Without credentials the dashboard answers only at a loopback address"
                " (127.0.0.1, [::1], localhost): set CIO_WEBHOOKS_UI_PASSWORD or"
                " CIO_WEBHOOKS_UI_TOKEN to reach it by another name.",
            )
        new_cookie: str | None = None
        session = await dash.session(request.cookies.get(COOKIE))
        header = request.headers.get("authorization", "")
        if session is None and access.mode == "login" and header[:7].lower() == "bearer ":
            # A token guessed in this header takes turns with the login form's guesses.
            client = request.client.host if request.client else ""
            async with access.gate.turn(client) as turn:
                if turn and access.check_bearer(header):
                    session = Session(TOKEN_USER, None)
                elif turn:
                    log.warning("event=ui_bearer_refused path=%s", request.url.path)
                    await asyncio.sleep(FAILED_LOGIN_PAUSE)
            if session is None:
                refused = render(
                    request,
                    None,
                    "error.html",
                    status=401 if turn else 429,
                    title="Unauthorized",
                    message="Wrong token." if turn else "Too many tries at once: try again.",
                )
                refused.headers["www-authenticate"] = "Bearer"
                return refused
        if session is None and access.mode == "open":
            new_cookie = access.new_cookie(LOCAL_USER)
            session = access.session(new_cookie)
        if session is None:
            if request.method == "GET":
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                login = f"{request.scope.get('root_path', '')}/login"
                query = urllib.parse.urlencode({"next": target})
                return RedirectResponse(f"{login}?{query}", status_code=303)
            return _forbidden(request, "Log in first.")
        form: dict[str, str] = {}
        if request.method == "POST":
            read = await read_form(request)
            if read is None:
                return _forbidden(request, "The form is too large.")
            form = read
            if not same_origin(request) or not access.check_csrf(session, form.get("csrf")):
                log.warning("event=ui_csrf_refused path=%s", request.url.path)
                return _forbidden(
                    request, "This form has expired or did not come from this dashboard."
                )
        response = await page(dash, request, session, form)
        if new_cookie is not None:
            set_session_cookie(response, new_cookie, access.ttl)
        return response

    return run


def set_session_cookie(response: Response, value: str, ttl: float) -> None:
    response.set_cookie(
        COOKIE,
        value,
        max_age=int(ttl),
        path=UI_PATH,
        secure=True,
        httponly=True,
        samesite="strict",
    )


async def store_unavailable(request: Request, exc: Exception) -> Response:
    """A page whose store did not answer: 503 and the reason (which names the store
    without its password), not a bare 500."""
    log.error("event=ui_store_unavailable path=%s error=%s", request.url.path, str(exc))
    return render(
        request, None, "error.html", status=503, title="The store did not answer", message=str(exc)
    )


# -- headers -----------------------------------------------------------------------------
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_HEADERS = [
    (b"content-security-policy", _CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    """ASGI middleware: every dashboard response gets the headers above; pages (not
    the static assets) are never cached: they show personal data."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith(f"{scope.get('root_path', '')}/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if static or k.lower() != b"cache-control"
                ]
                headers.extend(_HEADERS)
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
