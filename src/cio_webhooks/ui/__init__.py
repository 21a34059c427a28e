"""The dashboard: a server-rendered web UI over any store and SQL sink, mounted at
``/ui`` by ``serve``, ``worker --port`` and ``cio-webhooks ui``.

Routes (below the mount point)::

    GET  /                         Overview: events/s, ack p50/p99 vs 4 s, 401s,
                                   backlog, dead letters, quarantine, sinks' lag
    GET  /live                     the Overview's figures (HTML fragment; its script
                                   fetches it every 5 s)
    GET  /deliverability?by=&since=  rates per day / campaign / broadcast /
                                   newsletter / transactional / recipient domain
    GET  /events?...&before=SEQ    search, newest first, cursor pagination
    GET  /events/{event_id}        body, normalised fields, handler runs, policy
                                   actions, the other events of its delivery
    GET  /dead-letters             dead letters (filtered) and quarantined bodies
    POST /dead-letters/confirm     what a retry / discard would do   (CSRF)
    POST /dead-letters/apply       do it, and record who did        (CSRF)
    GET  /quarantine/{id}          one quarantined body
    POST /quarantine/confirm|apply re-ingest one or all              (CSRF)
    GET  /policies                 rules, recent actions, dry-run results
    GET|POST /login, POST /logout  (see ``_auth``)
    GET  /static/...               vendored assets (CSS, the refresh script)

``create_ui`` builds it; the caller opens and closes the store (the service's
lifespan does).  Access: ``_auth`` (login, signed session cookie, CSRF, 403 on a
non-loopback address without credentials).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route
from starlette.staticfiles import StaticFiles

from .._exceptions import StoreUnavailable
from ..settings import DEFAULT_UI_USER, HOST
from ..sinks import SinkURL
from ..store import Ledger, Store
from . import _dead, _pages
from ._auth import Access, is_loopback
from ._login import login, logout
from ._web import HERE, Dashboard, SecurityHeaders, endpoint, store_unavailable

__all__ = ["Access", "Dashboard", "create_ui", "is_loopback"]

log = logging.getLogger("cio_webhooks.ui")


def create_ui(
    store: Store,
    *,
    bind: str = HOST,
    user: str = DEFAULT_UI_USER,
    password: str | None = None,
    token: str | None = None,
    policies: Path | None = None,
    sink: SinkURL | None = None,
    ledger: Ledger | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The dashboard app over ``store`` (opened by the caller).  ``bind`` is the
    address it is served on: without ``password`` or ``token`` it is open on a
    loopback address and refused (403) elsewhere, with one warning logged now.
    ``sink`` is the SQL sink of the Deliverability page; ``ledger`` the policies'
    (None: no policy ran here, and the pages say so)."""
    access = Access(user=user, password=password, token=token, bind=bind, clock=clock)
    if access.mode == "refused":
        log.warning(
            "event=ui_disabled bind=%s detail=%s",
            bind,
            "no dashboard credentials on a non-loopback address: /ui answers 403"
            " (set CIO_WEBHOOKS_UI_PASSWORD or CIO_WEBHOOKS_UI_TOKEN)",
        )
    dash = Dashboard(
        store=store, access=access, clock=clock, policies=policies, sink=sink, ledger=ledger
    )
    get, post = ["GET"], ["POST"]
    app = Starlette(
        routes=[
            Route("/", endpoint(_pages.overview), methods=get),
            Route("/live", endpoint(_pages.overview_live), methods=get),
            Route("/deliverability", endpoint(_pages.deliverability), methods=get),
            Route("/events", endpoint(_pages.events_page), methods=get),
            Route("/events/{event_id:path}", endpoint(_pages.event_page), methods=get),
            Route("/dead-letters", endpoint(_dead.dead_letters), methods=get),
            Route("/dead-letters/confirm", endpoint(_dead.dead_confirm), methods=post),
            Route("/dead-letters/apply", endpoint(_dead.dead_apply), methods=post),
            Route("/quarantine/confirm", endpoint(_dead.quarantine_confirm), methods=post),
            Route("/quarantine/apply", endpoint(_dead.quarantine_apply), methods=post),
            Route("/quarantine/{ident}", endpoint(_dead.quarantined_body), methods=get),
            Route("/policies", endpoint(_pages.policies_page), methods=get),
            Route("/login", login, methods=["GET", "POST"]),
            Route("/logout", endpoint(logout), methods=post),
        ],
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={StoreUnavailable: store_unavailable},
    )
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.state.dashboard = dash
    return app
