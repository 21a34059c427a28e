"""The dashboard in headless Chromium against a real ``serve`` with real signed events
(``conftest.service``): the login, every page with data, filters and body search, a
dead letter retried from the page, a CSRF-less POST refused, a phone-width screen.

With ``CIO_WEBHOOKS_SCREENSHOTS=1`` each page's screenshot is written to
``docs/screenshots/`` (light; the overview in dark and at phone width too), which the
README links to; otherwise the tests leave the tree as it is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import NEEDLE, PASSWORD, TOKEN, Service, wait_for

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 860}, color_scheme="light")
    try:
        yield ctx
    finally:
        ctx.close()


def login(page: Any, service: Service, path: str = "/") -> None:
    page.goto(f"{service.ui}{path}")
    page.fill("input[name=user]", "admin")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()


@pytest.fixture
def page(context: Any, service: Service) -> Iterator[Any]:
    """A logged-in page; the test fails on any console error (a CSP violation: an
    inline style or script the policy refused, a failed fetch)."""
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    login(page, service)
    yield page
    assert not errors


def shot(page: Any, name: str, *, full_page: bool = True) -> None:
    if os.environ.get("CIO_WEBHOOKS_SCREENSHOTS") != "1":
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


def test_login_is_required_and_a_wrong_password_is_refused(context: Any, service: Service) -> None:
    page = context.new_page()
    page.goto(f"{service.ui}/events")
    assert re.search(r"/ui/login\?next=%2Fui%2Fevents$", page.url)
    page.fill("input[name=user]", "admin")
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    assert "Wrong user, password or token" in page.inner_text("[role=alert]")
    assert page.url.endswith("/ui/login")
    shot(page, "login")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{service.ui}/events")
    assert page.inner_text("h1") == "Events"
    cookie = next(c for c in context.cookies() if c["name"] == "cio_ui_session")
    assert cookie["httpOnly"]
    assert cookie["secure"]
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/ui"
    assert PASSWORD not in cookie["value"]


def test_the_token_logs_in_too(context: Any, service: Service) -> None:
    page = context.new_page()
    page.goto(f"{service.ui}/")
    page.fill("input[name=password]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{service.ui}/")
    assert page.inner_text(".who").startswith("token")


def test_overview_shows_the_figures_and_refreshes(page: Any, service: Service) -> None:
    assert page.inner_text("h1") == "Overview"
    wait_for(lambda: _tile(page, "dead_letters") == "1" or page.reload() is None, what="dead")
    assert _tile(page, "quarantined") == "1"
    # the receiver's traffic reaches the store every few seconds: the bad signature shows
    wait_for(lambda: _tile(page, "rejected_5m") == "1" or page.reload() is None, what="401")
    assert int(_tile(page, "accepted_5m")) > 200
    assert page.locator("svg.chart").count() == 3
    assert "Customer.io timeout 4 s" in page.inner_text(".charts")
    assert "sqlite" in page.inner_text("table")
    # the live part is fetched again by the script, not by a reload
    page.evaluate("document.querySelector('[data-figure=backlog]').textContent = 'x'")
    wait_for(lambda: _tile(page, "backlog") != "x", timeout=12, what="the live refresh")
    shot(page, "overview")


def _tile(page: Any, name: str) -> str:
    text: str = page.inner_text(f"[data-figure={name}]")
    return text.strip()


def test_overview_in_dark_mode(browser: Any, service: Service) -> None:
    ctx = browser.new_context(viewport={"width": 1280, "height": 860}, color_scheme="dark")
    try:
        page = ctx.new_page()
        login(page, service)
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(15, 18, 22)"
        shot(page, "overview-dark")
    finally:
        ctx.close()


def test_events_page_lists_filters_and_searches(page: Any, service: Service) -> None:
    page.goto(f"{service.ui}/events")
    all_rows = page.locator("table.events tbody tr").count()
    assert all_rows == 50  # a full page, and a cursor to the next
    shot(page, "events", full_page=False)  # the first rows tell it all
    page.click("a[rel=next]")
    assert page.locator("table.events tbody tr").count() > 0
    assert "before=" in page.url

    page.goto(f"{service.ui}/events")
    page.select_option("select[name=metric]", "bounced")
    page.click("button:has-text('Search')")
    kinds = page.locator("table.events tbody td[data-label=Kind]").all_inner_texts()
    assert kinds
    assert set(kinds) == {"email.bounced"}

    page.goto(f"{service.ui}/events")
    page.fill("input[name=q]", NEEDLE.upper())  # ASCII letters match in any case
    page.click("button:has-text('Search')")
    ids = page.locator("table.events tbody td[data-label=Event]").all_inner_texts()
    assert ids == [service.needle_event_id]

    page.goto(f"{service.ui}/events?email=P6@GMAIL.COM")  # an address in any case
    ids = page.locator("table.events tbody td[data-label=Event]").all_inner_texts()
    assert sorted(ids) == ["ev-delivered-6", "ev-sent-6"]

    page.goto(f"{service.ui}/events?q=no-such-text-anywhere")
    assert "No matching event" in page.inner_text("main")


def test_event_page_shows_body_fields_runs_and_the_delivery(page: Any, service: Service) -> None:
    page.goto(f"{service.ui}/events/ev-opened-1")
    main = page.inner_text("main")
    assert "email.opened" in main
    assert f'"delivery_id": "{service.delivery_id}"' in page.inner_text("pre.body")
    siblings = page.locator("table.events td[data-label=Event]").all_inner_texts()
    assert sorted(siblings) == ["ev-delivered-1", "ev-sent-1", "ev-spammed-1"]
    assert "recipient" in page.inner_text("dl.fields")
    shot(page, "event")

    page.goto(f"{service.ui}/events/{service.dead_event_id}")
    runs = page.inner_text("section:has(h2:text('Handler runs'))")
    assert "ui_test_hooks.bounce_handler" in runs
    assert "failed" in runs
    # the handler's error is shown as text, never as markup
    assert "<script>alert(1)</script>" in runs
    assert page.locator("main script").count() == 0

    page.goto(f"{service.ui}/events/ev-spammed-1")
    actions = page.inner_text("section:has(h2:text('Policy actions'))")
    assert "spam-complaint-unsubscribe" in actions
    assert "dry_run" in actions


def test_deliverability_rates_bands_and_groupings(page: Any, service: Service) -> None:
    page.goto(f"{service.ui}/deliverability?by=campaign")
    wait_for(
        lambda: page.locator("table.report tbody tr").count() >= 2 or page.reload() is None,
        what="the warehouse loaded",
    )
    rows = {
        r.locator("td").first.inner_text(): r.inner_text()
        for r in page.locator("table.report tbody tr").all()
    }
    assert set(rows) >= {"7", "8"}
    # 65 delivered per campaign, under the minimum volume: no rate shown
    assert page.locator("table.report .pill").count() == 0
    assert "–" in rows["7"]
    page.goto(f"{service.ui}/deliverability?by=day&since=7d")
    band = page.locator("td[data-label='Complaint rate'] .pill").first
    assert band.get_attribute("class") == "pill bad"  # 1 in 130: 0.77%, past 0.3%
    assert band.inner_text() == "0.77%"
    shot(page, "deliverability")
    page.goto(f"{service.ui}/deliverability?by=domain")
    groups = page.locator("table.report tbody tr td:first-child").all_inner_texts()
    assert {"gmail.com", "yahoo.com", "outlook.com"} <= set(groups)


def test_retrying_a_dead_letter_from_the_page_makes_it_succeed(page: Any, service: Service) -> None:
    page.goto(f"{service.ui}/dead-letters")
    wait_for(
        lambda: (
            page.locator(f"tr:has(a:text('{service.dead_event_id}'))").count() == 1
            or page.reload() is None
        ),
        what="the dead letter",
    )
    assert "mail system is down" in page.inner_text("table.events")
    assert page.locator("a[href*='/ui/quarantine/']").count() == 1
    shot(page, "dead-letters")
    service.ok_file.touch()  # the handler works from now on
    row = page.locator(f"tr:has(a:text('{service.dead_event_id}'))")
    row.locator("button[value=retry]").click()
    assert page.inner_text("h1") == "Retry 1 event(s)?"
    shot(page, "confirm")
    page.click("button[type=submit]:has-text('Retry 1')")
    assert "retried 1 event(s)" in page.inner_text("[role=status]")
    # recorded with who did it, in the store (tests/ui/test_pages.py: other processes
    # and a restarted one list it too)
    latest = page.locator("#operator-actions + div.scroll tbody tr").first.inner_text()
    assert "admin" in latest
    assert "dlq_retry" in latest
    assert f"dead letter {service.dead_event_id}" in latest

    def done() -> bool:
        page.goto(f"{service.ui}/events/{service.dead_event_id}")
        return "done" in page.inner_text("dl.facts")

    wait_for(done, what="the retried event to succeed")
    assert "event=ui_action user=admin action=dlq_retry count=1" in service.log.read_text()


def test_reingest_a_quarantined_body_leaves_it_quarantined_when_still_invalid(
    page: Any, service: Service
) -> None:
    page.goto(f"{service.ui}/dead-letters")
    page.locator("#quarantine ~ div.scroll button:has-text('Re-ingest')").first.click()
    assert page.inner_text("h1") == "Re-ingest 1 event(s)?"
    page.click("button[type=submit]:has-text('Re-ingest')")
    assert "still_invalid=1" in page.inner_text("[role=status]")


def test_a_post_without_the_csrf_token_is_refused(page: Any, service: Service) -> None:
    # The session cookie goes with these requests: only the token is missing or wrong.
    for form in ({"action": "retry", "scope": "all"}, {"action": "retry", "csrf": "0" * 64}):
        answer = page.request.post(f"{service.ui}/dead-letters/apply", form=form)
        assert answer.status == 403
        assert "did not come from this dashboard" in answer.text()
    answer = page.request.post(f"{service.ui}/quarantine/apply", form={"scope": "all"})
    assert answer.status == 403


def test_policies_page(page: Any, service: Service) -> None:
    page.goto(f"{service.ui}/policies")
    assert "spam-complaint-unsubscribe" in page.inner_text("table")
    assert "dry run" in page.inner_text("table")
    wait_for(
        lambda: "ev-spammed-1" in page.inner_text("main") or page.reload() is None,
        what="the dry-run audit row",
    )
    shot(page, "policies")


def test_phone_width(browser: Any, service: Service) -> None:
    ctx = browser.new_context(viewport={"width": 375, "height": 800}, color_scheme="light")
    try:
        page = ctx.new_page()
        login(page, service)
        pages = [
            ("/", "overview-phone"),
            ("/dead-letters", None),
            ("/events", None),
            ("/events/ev-opened-1", None),
            ("/deliverability?by=domain", None),
            ("/policies", None),
        ]
        for path, name in pages:
            page.goto(f"{service.ui}{path}")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 375, (path, width)
            if name:
                shot(page, name)
    finally:
        ctx.close()
