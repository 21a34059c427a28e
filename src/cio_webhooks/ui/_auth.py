"""Who may use the dashboard: the login, the session cookie, CSRF tokens.

Three modes, decided once at start (``Access.mode``):

- ``login``: a password (``ui_password``, with ``ui_user``) or a token (``ui_token``)
  is configured.  A login form sets a session cookie; ``Authorization: Bearer TOKEN``
  is accepted too.  Credentials are compared in constant time (``hmac.compare_digest``).
- ``open``: nothing is configured and the dashboard is served on a loopback address:
  anyone who can reach it is the local operator (the pages say so).
- ``refused``: nothing is configured on any other address: every page answers 403
  saying how to configure credentials (the dashboard shows personal data).

The session cookie is ``v2.<sid>.<user>.<expires>.<mac>`` where ``sid`` is a random
session id (each login is a session of its own, even two in one second) and ``mac``
is HMAC-SHA256 over the rest, keyed by a secret derived from the configured
credentials (PBKDF2): every process given the same credentials accepts the others'
cookies, and changing the password ends every session.  A logout ends its session
in every process on the store (``Watch.revoke_session``; the dashboard asks
``Watch.session_revoked`` on each request with a cookie, see ``_web.endpoint``): a
copy of the cookie is refused from then on.  In ``open`` mode the key is random per
process.  The CSRF token of a session is an HMAC of its whole cookie: a form posted
without it, or with another session's, is refused.  Secrets are never logged or
shown.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

from ..settings import DEFAULT_UI_USER, UI_SESSION_SECONDS

__all__ = [
    "COOKIE",
    "FAILED_LOGIN_PAUSE",
    "LOGIN_QUEUE",
    "Access",
    "LoginGate",
    "Mode",
    "Session",
    "is_loopback",
]

#: The session cookie's name.
COOKIE = "cio_ui_session"
Mode = Literal["login", "open", "refused"]
#: Who a session is when the dashboard is open (loopback, no credentials).
LOCAL_USER = "local"
#: Who logged in with the token (no user name goes with it).
TOKEN_USER = "token"  # noqa: S105 (a user name, not a secret)
_KDF_SALT = b"cio-webhooks dashboard session key v1"
_KDF_ROUNDS = 200_000
#: The cookie format this code writes and reads (a ``v1`` cookie, without a session
#: id, could not be ended by a logout: it is refused, and its user logs in again).
_VERSION = "v2"


#: Seconds a refused login waits before the answer.
FAILED_LOGIN_PAUSE = 1.0
#: Logins of one client address that may wait for their turn; more get a 429.
LOGIN_QUEUE = 5


class LoginGate:
    """One credential check at a time per client address, a refused one keeping its
    turn through ``FAILED_LOGIN_PAUSE``: each address guesses at most once a second,
    however many requests it sends at once (the pause alone did not slow those: two
    hundred were answered in two seconds).  Past ``LOGIN_QUEUE`` waiting, more are
    refused (429) unchecked.  A check that succeeds holds its turn for no time, and
    other addresses are never held up (behind a reverse proxy on this machine,
    uvicorn takes the address from ``X-Forwarded-For``)."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiting: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def turn(self, client: str) -> AsyncIterator[bool]:
        """Yields False at once when ``LOGIN_QUEUE`` logins of ``client`` already
        wait, else True once it is this one's turn."""
        if self._waiting.get(client, 0) >= LOGIN_QUEUE:
            yield False
            return
        lock = self._locks.setdefault(client, asyncio.Lock())
        self._waiting[client] = self._waiting.get(client, 0) + 1
        try:
            async with lock:
                yield True
        finally:
            self._waiting[client] -= 1
            if not self._waiting[client]:  # nobody holds or waits for it: forget it
                del self._waiting[client], self._locks[client]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address) only accepts connections from this machine.
    ``0.0.0.0``, ``::``, names other than ``localhost``: no."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(_bytes(a), _bytes(b))


@dataclass(frozen=True)
class Session:
    """A logged-in user, from a valid cookie (or the Bearer token)."""

    user: str
    cookie: str | None  # None: authenticated by the Bearer token (no CSRF needed)
    #: The cookie's session id (what a logout ends) and expiry, unix seconds; None
    #: for the Bearer token.
    sid: str | None = None
    expires: float | None = None


class Access:
    """The dashboard's access rules (see the module docstring)."""

    def __init__(
        self,
        *,
        user: str = DEFAULT_UI_USER,
        password: str | None = None,
        token: str | None = None,
        bind: str,
        ttl: float = UI_SESSION_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.user = user
        self._password = password or None
        self._token = token or None
        self.ttl = ttl
        self.clock = clock
        self.gate = LoginGate()
        self.mode: Mode
        if self._password or self._token:
            self.mode = "login"
            material = b"\0".join(_bytes(x) for x in (user, password or "", token or ""))
            self._key = hashlib.pbkdf2_hmac("sha256", material, _KDF_SALT, _KDF_ROUNDS)
        else:
            self.mode = "open" if is_loopback(bind) else "refused"
            self._key = secrets.token_bytes(32)

    def __repr__(self) -> str:  # never the secrets
        return f"Access(mode={self.mode!r}, user={self.user!r})"

    @property
    def uses_password(self) -> bool:
        return self._password is not None

    # -- credentials ------------------------------------------------------------------
    def check_login(self, user: str, password: str) -> str | None:
        """The session user for a login form's ``user`` and ``password`` (the password
        field may hold the token instead), or None."""
        if self.mode != "login":
            return None
        # Both comparisons always run: the time taken does not say which one matched.
        by_password = self._password is not None and (
            _same(user, self.user) & _same(password, self._password)
        )
        by_token = self._token is not None and _same(password, self._token)
        if by_password:
            return self.user
        if by_token:
            return TOKEN_USER
        return None

    def check_bearer(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the configured token."""
        if self._token is None or not header:
            return False
        scheme, _, value = header.partition(" ")
        # Header values arrive decoded as Latin-1; a client sends a token that is not
        # ASCII as UTF-8 (curl, requests, browsers): compare the bytes it sent.
        sent = value.strip().encode("latin-1", "replace")
        return scheme.lower() == "bearer" and hmac.compare_digest(sent, _bytes(self._token))

    # -- sessions ---------------------------------------------------------------------
    def _mac(self, message: str) -> str:
        return hmac.new(self._key, _bytes(message), hashlib.sha256).hexdigest()

    def new_cookie(self, user: str) -> str:
        """A session cookie value for ``user``: a new session (its own random id),
        valid for ``ttl`` seconds."""
        sid = secrets.token_urlsafe(18)  # 144 bits; no "." in URL-safe base64
        expires = int(self.clock() + self.ttl)
        name = base64.urlsafe_b64encode(_bytes(user)).decode().rstrip("=")
        signed = f"{_VERSION}.{sid}.{name}.{expires}"
        return f"{signed}.{self._mac(signed.replace('.', '|'))}"

    def session(self, cookie: str | None) -> Session | None:
        """The session of a cookie value: None when it is missing, forged, altered,
        from other credentials, or expired.  Whether a logout ended it is the
        store's to say (``_web``: ``Watch.session_revoked``)."""
        if not cookie or self.mode == "refused":
            return None
        parts = cookie.split(".")
        if len(parts) != 5 or parts[0] != _VERSION or not parts[3].isdigit() or not parts[1]:
            return None
        *signed, mac = parts
        if not _same(mac, self._mac("|".join(signed))):
            return None
        _, sid, name, expires = signed
        if int(expires) <= self.clock():
            return None
        try:
            user = base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return Session(user, cookie, sid=sid, expires=float(expires))

    # -- notices ----------------------------------------------------------------------
    def notice_mac(self, session: Session, text: str) -> str:
        """A MAC binding a result notice (the text a redirect after an action carries to
        the page it shows) to ``session``: a link crafted elsewhere cannot make the page
        show words of its choosing as a result."""
        return self._mac(f"notice|{session.cookie or session.user}|{text}")

    def check_notice(self, session: Session, text: str, mac: str | None) -> bool:
        return mac is not None and _same(mac, self.notice_mac(session, text))

    # -- CSRF -------------------------------------------------------------------------
    def csrf_token(self, session: Session) -> str:
        """The token every form of ``session`` carries."""
        return self._mac(f"csrf|{session.cookie or ''}")

    def check_csrf(self, session: Session, token: str | None) -> bool:
        """Whether a posted form's token is ``session``'s.  A request authenticated by
        the Bearer token needs none: browsers never add that header on their own."""
        if session.cookie is None:
            return True
        return token is not None and _same(token, self.csrf_token(session))
