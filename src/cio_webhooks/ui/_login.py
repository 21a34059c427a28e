"""``/login`` and ``/logout``.  A failed login waits a second before answering, so
that guessing is slow; it is logged without what was typed.

Logins of one client address take turns (``_auth.LoginGate``), so that guesses sent
at once are not checked at once.  A logout ends its session in the store, for every
process (``Watch.revoke_session``), not only in the browser that sent it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..settings import UI_PATH
from ._auth import COOKIE, FAILED_LOGIN_PAUSE, Session, is_loopback
from ._web import Dashboard, Form, read_form, render, same_origin, set_session_cookie

__all__ = ["login", "logout"]

log = logging.getLogger("cio_webhooks.ui")


def _next(request: Request, target: str | None) -> str:
    """Where to go after logging in: a page of the dashboard, never another site."""
    root = request.scope.get("root_path", "")
    if (
        target
        and target.startswith(f"{root}/")
        and not target.startswith("//")
        and "\\" not in target
        and "\n" not in target
    ):
        return target
    return f"{root}/"


async def login(request: Request) -> Response:
    dash: Dashboard = request.app.state.dashboard
    access = dash.access
    if access.mode == "refused":
        return render(request, None, "refused.html", status=403)
    if access.mode == "open" or await dash.session(request.cookies.get(COOKIE)) is not None:
        return RedirectResponse(_next(request, request.query_params.get("next")), 303)
    context: dict[str, Any] = {
        "default_user": access.user if access.uses_password else "",
        "error": None,
        # The cookie is Secure: over plain HTTP only a loopback address keeps it.
        "plain_http": request.url.scheme == "http" and not is_loopback(request.url.hostname or ""),
    }
    if request.method == "GET":
        target = _next(request, request.query_params.get("next"))
        return render(request, None, "login.html", next=target, **context)
    if not same_origin(request):
        return render(
            request,
            None,
            "error.html",
            status=403,
            title="Forbidden",
            message="This login form did not come from this dashboard.",
        )
    form = await read_form(request) or {}
    target = _next(request, form.get("next"))
    async with access.gate.turn(request.client.host if request.client else "") as turn:
        if not turn:
            log.warning("event=ui_login_throttled")
            context["error"] = "Too many logins at once from this address: try again shortly."
            return render(request, None, "login.html", status=429, next=target, **context)
        user = access.check_login(form.get("user", ""), form.get("password", ""))
        if user is None:
            log.warning("event=ui_login_refused")
            await asyncio.sleep(FAILED_LOGIN_PAUSE)  # still this address's turn
            context["error"] = "Wrong user, password or token."
            context["default_user"] = form.get("user", "")
            return render(request, None, "login.html", status=401, next=target, **context)
    log.info("event=ui_login user=%s", user)
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(response, access.new_cookie(user), access.ttl)
    return response


async def logout(dash: Dashboard, request: Request, session: Session, form: Form) -> Response:
    """End the session: in the store (a copy of its cookie is refused by every process
    from now on), and in this browser.  When the store cannot take it, the cookie is
    still cleared here and the failure is logged as an error: a copy stays valid
    until it expires."""
    if session.sid is not None and session.expires is not None and dash.access.mode == "login":
        try:
            await dash.store.revoke_session(session.sid, until=session.expires)
        except Exception as exc:  # whatever it is, this browser is logged out all the same
            log.error(
                "event=ui_logout_unrecorded user=%s error=%s",
                session.user,
                f"{type(exc).__name__}: {exc}",
            )
        else:
            log.info("event=ui_logout user=%s", session.user)
    root = request.scope.get("root_path", "")
    response = RedirectResponse(f"{root}/login", status_code=303)
    response.delete_cookie(COOKIE, path=UI_PATH, secure=True, httponly=True, samesite="strict")
    return response
