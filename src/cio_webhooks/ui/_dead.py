"""Dead letters and quarantine: the lists, and the operator's actions on them.

Every action is two POSTs: ``.../confirm`` shows what would be done and to how many
events (nothing changes), ``.../apply`` does it.  Both carry the CSRF token; the
action is logged and kept with who did it (``Dashboard.record``).  The actions are
the CLI's (``_operator``): retry (``store.requeue``: handlers that succeeded are not
run again), discard, and re-ingest of quarantined bodies.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .._exceptions import ConfigError
from .._operator import named_dead_letters, quarantined_bodies, reingest
from ..search import EventQuery, find_events, matching_ids
from ..settings import UI_PAGE_SIZE, UI_RECENT_ACTIONS
from ..store import EventFilter, JobState
from ._auth import Session
from ._pages import cursor, event_query, event_row, pretty_body
from ._web import Dashboard, Form, render

__all__ = [
    "dead_apply",
    "dead_confirm",
    "dead_letters",
    "quarantine_apply",
    "quarantine_confirm",
    "quarantined_body",
]

#: The filter fields of the dead-letter list (a subset of the Events page's).
FILTER_FIELDS = ("object_type", "metric", "q", "since", "person", "email", "campaign")
#: Event ids handed to one ``requeue``/``discard`` (SQL parameters are bounded).
ID_BATCH = 500
DEAD_ACTIONS = ("retry", "discard")


def _dead_query(params: Form, now: float) -> EventQuery:
    query = event_query({k: params.get(k, "") for k in FILTER_FIELDS}, now)
    return replace(query, states=(JobState.DEAD,))


def _filter_text(params: Form) -> str:
    shown = [f"{k}={params[k]}" for k in FILTER_FIELDS if params.get(k)]
    return ", ".join(shown) or "no filter"


async def dead_letters(dash: Dashboard, request: Request, session: Session, form: Form) -> Response:
    params = {k: request.query_params.get(k, "") for k in FILTER_FIELDS}
    context: dict[str, Any] = {
        "params": params,
        "rows": [],
        "next_before": None,
        "error": None,
        "message": _notice(dash, request, session),
        "actions": await dash.store.operator_actions(limit=UI_RECENT_ACTIONS),
    }
    before = request.query_params.get("before", "")
    try:
        page = await find_events(
            dash.store,
            _dead_query(params, dash.clock()),
            before_seq=cursor(before),
            limit=UI_PAGE_SIZE,
        )
    except ConfigError as exc:
        context["error"] = str(exc)
    else:
        context["rows"] = [event_row(e) for e in page.events]
        context["next_before"] = page.next_before
    qbefore = request.query_params.get("qbefore", "")
    quarantined = await dash.store.quarantined(
        limit=UI_PAGE_SIZE,
        before_id=cursor(qbefore),
    )
    context["quarantined"] = quarantined
    context["qnext"] = quarantined[-1].id if len(quarantined) == UI_PAGE_SIZE else None
    gauges = await dash.store.gauges(now=dash.clock())
    context["gauges"] = gauges
    return render(
        request, session, "dead_letters.html", nav="dead", title="Dead letters", **context
    )


async def _dead_targets(dash: Dashboard, form: Form) -> tuple[list[str] | None, str]:
    """The event ids an action applies to (None: the one named in the form, checked
    to be a dead letter), and how the page describes them."""
    if form.get("scope") == "one":
        event_id = form.get("event_id", "")
        await named_dead_letters(dash.store, (event_id,))
        return None, f"dead letter {event_id}"
    _scope_all(form)
    ids = await matching_ids(dash.store, _dead_query(form, dash.clock()))
    return ids, f"every dead letter matching {_filter_text(form)}"


def _done(dash: Dashboard, request: Request, session: Session, page: str, message: str) -> Response:
    """Back to ``page``, showing what was done (signed for this session)."""
    root = request.scope.get("root_path", "")
    query = {"done": message, "sig": dash.access.notice_mac(session, message)}
    return RedirectResponse(f"{root}/{page}?{urllib.parse.urlencode(query)}", status_code=303)


def _notice(dash: Dashboard, request: Request, session: Session) -> str | None:
    """The result a redirect after an action carried here, if this session's."""
    text = request.query_params.get("done")
    if text and dash.access.check_notice(session, text, request.query_params.get("sig")):
        return text
    return None


async def _dead_action(
    dash: Dashboard, request: Request, session: Session, form: Form
) -> tuple[str, list[str] | None, str] | Response:
    """A dead-letter form's action and targets (``_dead_targets``), or the error page."""
    action = form.get("action", "")
    if action not in DEAD_ACTIONS:
        return _error(request, session, f"Unknown action {action!r}.")
    try:
        ids, what = await _dead_targets(dash, form)
    except ConfigError as exc:
        return _error(request, session, str(exc))
    return action, ids, what


async def dead_confirm(dash: Dashboard, request: Request, session: Session, form: Form) -> Response:
    asked = await _dead_action(dash, request, session, form)
    if isinstance(asked, Response):
        return asked
    action, ids, what = asked
    count = 1 if ids is None else len(ids)
    fields = {k: form.get(k, "") for k in (*FILTER_FIELDS, "scope", "event_id")}
    return render(
        request,
        session,
        "confirm.html",
        nav="dead",
        title="Confirm",
        action=action,
        verb={"retry": "Retry", "discard": "Discard"}[action],
        what=what,
        count=count,
        fields=fields,
        target="dead-letters/apply",
        back="dead-letters",
        note=(
            "Retried events run again through the handlers that failed (those that"
            " succeeded are not re-run)."
            if action == "retry"
            else "Discarded events stay stored and exported; no handler runs them again."
        ),
    )


async def _apply_by_ids(dash: Dashboard, action: str, ids: Sequence[str]) -> int:
    now = dash.clock()
    done = 0
    for start in range(0, len(ids), ID_BATCH):
        where = EventFilter(states=(JobState.DEAD,), event_ids=tuple(ids[start : start + ID_BATCH]))
        if action == "retry":
            done += await dash.store.requeue(where, now=now)
        else:
            done += await dash.store.discard(where, now=now)
    return done


async def dead_apply(dash: Dashboard, request: Request, session: Session, form: Form) -> Response:
    asked = await _dead_action(dash, request, session, form)
    if isinstance(asked, Response):
        return asked
    action, ids, what = asked
    if ids is None:
        ids = [form.get("event_id", "")]
    count = await _apply_by_ids(dash, action, ids)
    await dash.record(session.user, f"dlq_{action}", count, what)
    verb = "retried" if action == "retry" else "discarded"
    return _done(dash, request, session, "dead-letters", f"{verb} {count} event(s): {what}")


# -- quarantine -------------------------------------------------------------------------
def _idents(form: Form) -> tuple[int, ...]:
    if form.get("scope") == "one":
        ident = cursor(form.get("id", ""))
        if ident is None:
            raise ConfigError(f"no quarantined body {form.get('id', '')!r}")
        return (ident,)
    _scope_all(form)
    return ()


def _scope_all(form: Form) -> None:
    """Acting on everything must be asked for: a form whose ``scope`` is missing or
    mistyped (a hand-made POST, a template that lost the field) does nothing."""
    if form.get("scope") != "all":
        raise ConfigError(f"unknown scope {form.get('scope', '')!r} (one or all)")


async def quarantine_confirm(
    dash: Dashboard, request: Request, session: Session, form: Form
) -> Response:
    try:
        idents = _idents(form)
        if idents:
            await anext(quarantined_bodies(dash.store, idents))
    except ConfigError as exc:
        return _error(request, session, str(exc))
    what = f"quarantined body {idents[0]}" if idents else "every quarantined body (stale ones left)"
    gauges = await dash.store.gauges(now=dash.clock())
    return render(
        request,
        session,
        "confirm.html",
        nav="dead",
        title="Confirm",
        action="reingest",
        verb="Re-ingest",
        what=what,
        count=1 if idents else gauges.quarantined,
        fields={"scope": form.get("scope", ""), "id": form.get("id", "")},
        target="quarantine/apply",
        back="dead-letters",
        note="Bodies that are valid events now are stored (deduplicated) and dispatched;"
        " the others stay quarantined.",
    )


async def quarantine_apply(
    dash: Dashboard, request: Request, session: Session, form: Form
) -> Response:
    try:
        idents = _idents(form)
        done = await reingest(
            dash.store, quarantined_bodies(dash.store, idents), named=bool(idents)
        )
    except ConfigError as exc:
        return _error(request, session, str(exc))
    counts = " ".join(f"{k}={v}" for k, v in done.counts().items())
    what = f"quarantined body {idents[0]}" if idents else "every quarantined body"
    await dash.record(session.user, "quarantine_reingest", done.released, f"{what}: {counts}")
    return _done(dash, request, session, "dead-letters", f"re-ingested {what}: {counts}")


async def quarantined_body(
    dash: Dashboard, request: Request, session: Session, form: Form
) -> Response:
    # Read here, not by the route's int convertor: thousands of digits made int()
    # raise (Python's limit on digits) and the page a 500.
    text: str = request.path_params["ident"]
    ident = cursor(text)
    found = await dash.store.quarantined(ident=ident, limit=1) if ident is not None else []
    if not found:
        return render(
            request,
            session,
            "error.html",
            status=404,
            title="Not found",
            message=f"No quarantined body {text[:40]}.",
        )
    q = found[0]
    return render(
        request,
        session,
        "quarantined.html",
        nav="dead",
        title=f"Quarantined body {q.id}",
        q=q,
        body=pretty_body(q.body),
    )


def _error(request: Request, session: Session, message: str) -> Response:
    return render(request, session, "error.html", status=400, title="Nothing done", message=message)
