"""Track and App API clients against the fake Customer.io (a real HTTP server).

Time is injected: ``Sleeps`` records every wait the clients ask for and moves
its own clock instead of sleeping, so nothing here waits for real except the
one timeout test.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from cio_webhooks.customerio import (
    APP_URLS,
    TRACK_URLS,
    AppClient,
    CustomerIOAuthError,
    CustomerIOConnectionError,
    CustomerIOError,
    CustomerIONotFound,
    CustomerIORateLimited,
    CustomerIOServerError,
    TrackClient,
    person_path,
)
from cio_webhooks.customerio._http import RateLimiter, retry_after
from cio_webhooks.customerio.fake import FakeCustomerIO
from cio_webhooks.testing import free_port

TRACK_KEY = "secret-track-key-0123"
APP_KEY = "secret-app-key-4567"


class Sleeps:
    """An injected sleep that records what it was asked to wait, and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.now = 0.0

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now

    def backoffs(self) -> list[float]:
        """The waits between retries, leaving out the rate limiter's spacing (<= 0.1 s)."""
        return [w for w in self.waits if w > 0.1]


@pytest.fixture
async def fake() -> AsyncIterator[FakeCustomerIO]:
    async with FakeCustomerIO(site_id="site-1", track_key=TRACK_KEY, app_key=APP_KEY) as server:
        yield server


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def track(fake: FakeCustomerIO, sleeps: Sleeps) -> AsyncIterator[TrackClient]:
    async with TrackClient(
        "site-1",
        TRACK_KEY,
        base_url=fake.track_url,
        sleep=sleeps,
        clock=sleeps.clock,
        rng=random.Random(1),
    ) as client:
        yield client


@pytest.fixture
async def app_api(fake: FakeCustomerIO, sleeps: Sleeps) -> AsyncIterator[AppClient]:
    async with AppClient(
        APP_KEY, base_url=fake.app_url, sleep=sleeps, clock=sleeps.clock, rng=random.Random(1)
    ) as client:
        yield client


# -- regions ---------------------------------------------------------------------------


def test_regions_select_the_documented_hosts() -> None:
    assert TrackClient("s", "k").http.base_url == "https://track.customer.io/api/v1"
    assert TrackClient("s", "k", region="eu").http.base_url == "https://track-eu.customer.io/api/v1"
    assert AppClient("k").http.base_url == "https://api.customer.io/v1"
    assert AppClient("k", region="eu").http.base_url == "https://api-eu.customer.io/v1"
    assert TrackClient("s", "k", region="eu", base_url="http://x/api/v1").http.base_url == (
        "http://x/api/v1"
    )
    with pytest.raises(ValueError, match="region must be one of eu, us"):
        TrackClient("s", "k", region="apac")
    with pytest.raises(ValueError, match="region"):
        AppClient("k", region="au")


async def test_the_region_decides_which_deployment_is_called(sleeps: Sleeps) -> None:
    """Two fakes play US and EU; the workspace (its keys) lives in the EU one."""
    async with (
        FakeCustomerIO(region="us", site_id="other", track_key="other", app_key="other") as us,
        FakeCustomerIO(region="eu", site_id="site-1", track_key=TRACK_KEY, app_key=APP_KEY) as eu,
    ):
        track_urls = {"us": us.track_url, "eu": eu.track_url}
        app_urls = {"us": us.app_url, "eu": eu.app_url}
        async with (
            TrackClient("site-1", TRACK_KEY, region="eu", urls=track_urls, sleep=sleeps) as track,
            AppClient(APP_KEY, region="eu", urls=app_urls, sleep=sleeps) as app,
        ):
            await track.identify("42")
            await app.reporting_webhooks()
        assert [(r.region, r.path) for r in eu.requests] == [
            ("eu", "/api/v1/customers/42"),
            ("eu", "/v1/reporting_webhooks"),
        ]
        assert us.requests == []

        async with TrackClient("site-1", TRACK_KEY, urls=track_urls, sleep=sleeps) as wrong:
            with pytest.raises(CustomerIOAuthError, match=r"HTTP 401.*region"):
                await wrong.identify("42")
        assert [r.status for r in us.requests] == [401]


# -- Track API -------------------------------------------------------------------------


async def test_identify_unsubscribe_suppress_unsuppress_track(
    fake: FakeCustomerIO, track: TrackClient
) -> None:
    await track.identify("42", plan="pro")
    await track.unsubscribe("42", spam_complaint_at=1700000000)
    await track.identify("7", plan="free")
    await track.suppress("7")
    await track.unsuppress("7")
    await track.track("42", "email_bounced", {"reason": "550"}, id="01HGW2N5EXAMPLE0000000000")
    assert [(r.method, r.path, r.body) for r in fake.calls()] == [
        ("PUT", "/api/v1/customers/42", {"plan": "pro"}),
        ("PUT", "/api/v1/customers/42", {"spam_complaint_at": 1700000000, "unsubscribed": True}),
        ("PUT", "/api/v1/customers/7", {"plan": "free"}),
        ("POST", "/api/v1/customers/7/suppress", None),
        ("POST", "/api/v1/customers/7/unsuppress", None),
        (
            "POST",
            "/api/v1/customers/42/events",
            {"name": "email_bounced", "data": {"reason": "550"}, "id": "01HGW2N5EXAMPLE0000000000"},
        ),
    ]
    assert fake.people == {
        "42": {"plan": "pro", "spam_complaint_at": 1700000000, "unsubscribed": True}
    }
    assert fake.suppressed == set()
    assert fake.tracked_events[0]["name"] == "email_bounced"


async def test_any_attribute_name_can_be_sent(fake: FakeCustomerIO, track: TrackClient) -> None:
    await track.identify("42", person="yes", self=1)
    await track.unsubscribe("43", person="no")
    assert fake.people == {
        "42": {"person": "yes", "self": 1},
        "43": {"person": "no", "unsubscribed": True},
    }


async def test_an_event_id_makes_a_repeated_track_count_once(
    fake: FakeCustomerIO, track: TrackClient
) -> None:
    for _ in range(2):
        await track.track("42", "spam", id="01HGW2N5EXAMPLE0000000000")
    await track.track("42", "spam")  # without an id, nothing to deduplicate on
    assert len(fake.calls("POST")) == 3
    assert [e["id"] for e in fake.tracked_events] == ["01HGW2N5EXAMPLE0000000000", None]


@pytest.mark.parametrize(
    ("person", "segment"),
    [
        ("42", "42"),
        ("ada+news@example.com", "ada%2Bnews%40example.com"),
        ("cio_d9c106000001", "cio_d9c106000001"),
        ("a/b c", "a%2Fb%20c"),
        # Dot segments: as they were, URLs resolved them away ("PUT /api/v1/").
        ("..", "%2E%2E"),
        (".", "%2E"),
        ("a.b", "a.b"),
    ],
)
async def test_identifiers_are_one_escaped_path_segment(
    fake: FakeCustomerIO, track: TrackClient, person: str, segment: str
) -> None:
    await track.identify(person, seen=True)
    [call] = fake.calls()
    assert call.raw_path == f"/api/v1/customers/{segment}"
    assert fake.people == {person: {"seen": True}}


async def test_the_fake_records_requests_it_has_no_route_for(
    fake: FakeCustomerIO, track: TrackClient
) -> None:
    with pytest.raises(CustomerIONotFound, match="GET /nowhere: HTTP 404"):
        await track.http.request("GET", "/nowhere")
    with pytest.raises(CustomerIOError, match="GET /customers/42: HTTP 405"):
        await track.http.request("GET", "/customers/42")
    assert [(r.path, r.status) for r in fake.requests] == [
        ("/api/v1/nowhere", 404),
        ("/api/v1/customers/42", 405),
    ]


def test_person_path_refuses_a_blank_identifier() -> None:
    assert person_path("x?y#z") == "/customers/x%3Fy%23z"
    with pytest.raises(ValueError, match="identifier"):
        person_path("")


async def test_a_malformed_request_is_not_retried(
    fake: FakeCustomerIO, track: TrackClient, sleeps: Sleeps
) -> None:
    fake.fail_next(1, status=400, message="attribute names must be shorter")
    with pytest.raises(CustomerIOError, match=r"HTTP 400 after 1 attempt.*must be shorter") as e:
        await track.identify("42", x=1)
    assert type(e.value) is CustomerIOError
    assert (e.value.method, e.value.path, e.value.status) == ("PUT", "/customers/42", 400)
    assert sleeps.backoffs() == []


# -- credentials never leak ------------------------------------------------------------


async def test_wrong_credentials_fail_at_once_without_showing_the_key(
    fake: FakeCustomerIO, sleeps: Sleeps
) -> None:
    async with TrackClient("site-1", "wrong-key-value", base_url=fake.track_url, sleep=sleeps) as c:
        with pytest.raises(CustomerIOAuthError) as caught:
            await c.identify("42")
        assert "wrong-key-value" not in repr(c) + repr(c.http)
    message = str(caught.value)
    assert message.startswith("PUT /customers/42: HTTP 401 after 1 attempt(s)")
    assert "wrong-key-value" not in message
    assert "Basic" not in message
    assert sleeps.backoffs() == []  # auth errors are not retried


async def test_the_credentials_check_names_the_workspace_region(
    fake: FakeCustomerIO, track: TrackClient, sleeps: Sleeps
) -> None:
    assert await track.account_region() == {
        "url": "https://track.customer.io",
        "data_center": "us",
        "environment_id": 1,
    }
    [check] = fake.calls("GET", "/api/v1/accounts/region")
    assert check.status == 200
    async with TrackClient("site-1", "wrong-key-value", base_url=fake.track_url, sleep=sleeps) as c:
        with pytest.raises(CustomerIOAuthError, match=r"GET /accounts/region: HTTP 401") as caught:
            await c.account_region()
    assert "wrong-key-value" not in str(caught.value)


async def test_app_api_wants_the_bearer_key(fake: FakeCustomerIO, sleeps: Sleeps) -> None:
    async with AppClient("not-the-app-key", base_url=fake.app_url, sleep=sleeps) as client:
        with pytest.raises(CustomerIOAuthError, match="GET /reporting_webhooks: HTTP 401") as e:
            await client.reporting_webhooks()
    assert "not-the-app-key" not in str(e.value)
    assert "Bearer" not in str(e.value)


@pytest.mark.parametrize("status", [400, 429, 500])
async def test_a_body_that_echoes_the_key_is_redacted(
    fake: FakeCustomerIO, track: TrackClient, app_api: AppClient, status: int
) -> None:
    import base64

    basic = base64.b64encode(f"site-1:{TRACK_KEY}".encode()).decode()
    fake.fail_next(10, status=status, message=f"bad {TRACK_KEY} / Basic {basic} / {APP_KEY}")
    with pytest.raises(CustomerIOError) as from_track:
        await track.identify("42")
    with pytest.raises(CustomerIOError) as from_app:
        await app_api.reporting_webhooks()
    track_text = str(from_track.value) + repr(from_track.value)
    app_text = str(from_app.value) + repr(from_app.value)
    assert "[redacted]" in track_text
    assert TRACK_KEY not in track_text
    assert basic not in track_text
    assert "[redacted]" in app_text
    assert APP_KEY not in app_text


# -- retries ---------------------------------------------------------------------------


async def test_429_waits_as_long_as_retry_after_says(
    fake: FakeCustomerIO, track: TrackClient, sleeps: Sleeps
) -> None:
    fake.fail_next(2, status=429, retry_after=7)
    await track.identify("42")
    assert [r.status for r in fake.requests] == [429, 429, 200]
    assert sleeps.backoffs() == [7.0, 7.0]


async def test_retry_after_as_an_http_date(fake: FakeCustomerIO, sleeps: Sleeps) -> None:
    fake.fail_next(1, status=503, retry_after="Wed, 21 Oct 2015 07:28:00 GMT")
    async with TrackClient(
        "site-1",
        TRACK_KEY,
        base_url=fake.track_url,
        sleep=sleeps,
        clock=sleeps.clock,
        wall_clock=lambda: 1445412470.0,  # 10 s before that date
    ) as client:
        await client.identify("42")
    assert sleeps.backoffs() == [10.0]


async def test_a_retry_after_too_long_to_wait_fails_at_once(
    fake: FakeCustomerIO, sleeps: Sleeps
) -> None:
    """The dispatcher retries later from the inbox; a handler must not sleep for minutes."""
    fake.fail_next(1, status=429, retry_after=3600)
    async with TrackClient(
        "site-1", TRACK_KEY, base_url=fake.track_url, sleep=sleeps, max_retry_after=30
    ) as client:
        with pytest.raises(CustomerIORateLimited, match="Retry-After 3600s") as caught:
            await client.identify("42")
    assert caught.value.retry_after == 3600
    assert sleeps.backoffs() == []
    assert len(fake.requests) == 1


async def test_5xx_is_retried_with_growing_backoff(
    fake: FakeCustomerIO, track: TrackClient, sleeps: Sleeps
) -> None:
    fake.fail_next(3, status=503)
    await track.identify("42")
    assert [r.status for r in fake.requests] == [503, 503, 503, 200]
    backoffs = sleeps.backoffs()
    assert len(backoffs) == 3
    assert backoffs[0] < backoffs[1] < backoffs[2]


async def test_retries_are_bounded(fake: FakeCustomerIO, track: TrackClient) -> None:
    fake.fail_next(5, status=500)  # 1 try + 4 retries
    with pytest.raises(CustomerIOServerError, match="HTTP 500 after 5 attempt"):
        await track.identify("42")
    fake.fail_next(10, status=429)
    with pytest.raises(CustomerIORateLimited, match="HTTP 429 after 5 attempt"):
        await track.identify("43")


async def test_max_elapsed_stops_retrying_early(fake: FakeCustomerIO, sleeps: Sleeps) -> None:
    fake.fail_next(10, status=502, retry_after=4)
    async with TrackClient(
        "site-1",
        TRACK_KEY,
        base_url=fake.track_url,
        sleep=sleeps,
        clock=sleeps.clock,
        max_retries=9,
        max_elapsed=10,
    ) as client:
        with pytest.raises(CustomerIOServerError, match="HTTP 502 after 3 attempt"):
            await client.identify("42")
    assert sleeps.backoffs() == [4.0, 4.0]


async def test_a_refused_connection_is_retried_then_reported(sleeps: Sleeps) -> None:
    port = free_port()  # nothing listens there
    async with TrackClient(
        "s", TRACK_KEY, base_url=f"http://127.0.0.1:{port}/api/v1", sleep=sleeps, max_retries=2
    ) as client:
        with pytest.raises(CustomerIOConnectionError, match="after 3 attempt") as caught:
            await client.identify("42")
    assert caught.value.status is None
    assert caught.value.__cause__ is None  # aiohttp errors can carry the request headers
    assert TRACK_KEY not in str(caught.value)
    assert len(sleeps.backoffs()) == 2


async def test_a_dropped_connection_is_retried(
    fake: FakeCustomerIO, track: TrackClient, sleeps: Sleeps
) -> None:
    fake.drop_next(2)
    await track.identify("42", plan="pro")
    # aiohttp itself may retry a request once when a kept-alive connection drops,
    # so count what the fake saw rather than the client's own waits.
    assert [r.status for r in fake.requests] == [0, 0, 200]
    assert fake.people == {"42": {"plan": "pro"}}
    assert sleeps.backoffs()


async def test_a_stalled_answer_times_out_and_is_retried(
    fake: FakeCustomerIO, sleeps: Sleeps
) -> None:
    fake.delay = 2.0
    async with TrackClient(
        "site-1", TRACK_KEY, base_url=fake.track_url, sleep=sleeps, timeout=0.2, max_retries=1
    ) as client:
        with pytest.raises(CustomerIOConnectionError, match="TimeoutError after 2 attempt"):
            await client.identify("42")


def test_retry_after_parses_seconds_and_dates() -> None:
    assert retry_after("12", now=0) == 12
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470) == 10
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490) == 0
    assert retry_after("soon", now=0) is None
    assert retry_after(None, now=0) is None


# -- rate limit ------------------------------------------------------------------------


async def test_rate_limiter_spaces_requests_evenly() -> None:
    sleeps = Sleeps()
    limiter = RateLimiter(10, clock=sleeps.clock, sleep=sleeps)
    for _ in range(5):
        await limiter.wait()
    assert sleeps.waits == pytest.approx([0.1, 0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(0, clock=sleeps.clock, sleep=sleeps)


async def test_app_api_keeps_to_ten_requests_a_second(
    fake: FakeCustomerIO, app_api: AppClient, sleeps: Sleeps
) -> None:
    for _ in range(11):
        await app_api.reporting_webhooks()
    assert len(fake.calls()) == 11
    assert sleeps.now == pytest.approx(1.0)  # 11 requests: 10 gaps of 0.1 s on the injected clock


# -- App API ---------------------------------------------------------------------------


def deliveries(n: int) -> list[dict[str, object]]:
    return [
        {
            "id": f"d{i}",
            "type": "email",
            "created": 100 + i,
            "campaign_id": 7 if i % 2 else 8,
            "metrics": {"sent": 100 + i, **({"bounced": 101 + i} if i == 3 else {})},
        }
        for i in range(n)
    ]


async def test_messages_follow_the_cursor_to_the_end(
    fake: FakeCustomerIO, app_api: AppClient
) -> None:
    fake.messages = deliveries(5)
    ids = [m["id"] async for m in app_api.messages(start_ts=101)]
    assert ids == ["d1", "d2", "d3", "d4"]
    pages = fake.calls("GET", "/v1/messages")
    assert len(pages) == 2
    assert "start" not in pages[0].query
    assert pages[1].query["start"]  # the opaque cursor the first page returned, as it was
    assert all(p.query["start_ts"] == "101" and p.query["limit"] == "1000" for p in pages)


async def test_messages_filters_reach_the_api(fake: FakeCustomerIO, app_api: AppClient) -> None:
    fake.messages = deliveries(6)
    bounced = [m["id"] async for m in app_api.messages(metric="bounced")]
    of_seven = [m["id"] async for m in app_api.messages(campaign_id=7, end_ts=103, limit=5000)]
    assert bounced == ["d3"]
    assert of_seven == ["d1", "d3"]
    assert fake.calls()[-1].query == {"limit": "1000", "end_ts": "103", "campaign_id": "7"}


async def test_messages_resume_from_a_cursor(fake: FakeCustomerIO, app_api: AppClient) -> None:
    fake.messages = deliveries(5)
    first = [m async for m in app_api.messages(limit=2)]
    assert len(first) == 5
    cursor = fake.calls()[1].query["start"]
    rest = [m["id"] async for m in app_api.messages(start=cursor)]
    assert rest == ["d2", "d3", "d4"]
    with pytest.raises(ValueError, match="limit"):
        [m async for m in app_api.messages(limit=0)]


async def test_one_message(fake: FakeCustomerIO, app_api: AppClient) -> None:
    fake.messages = deliveries(2)
    assert (await app_api.message("d1"))["metrics"] == {"sent": 101}
    with pytest.raises(CustomerIONotFound, match="GET /messages/nope: HTTP 404"):
        await app_api.message("nope")
    assert len(fake.requests) == 2  # a 404 is not retried


async def test_metrics_of_every_kind(fake: FakeCustomerIO, app_api: AppClient) -> None:
    fake.campaign_series["7"] = {"sent": [3, 4], "delivered": [3, 3]}
    fake.metric_series.update(
        {
            "campaigns/7/actions/9": {"sent": [1]},
            "broadcasts/3": {"sent": [5]},
            "newsletters/4": {"opened": [2]},
            "transactional/5": {"clicked": [1]},
        }
    )
    assert await app_api.campaign_metrics(7, res="days") == {"sent": [3, 4], "delivered": [3, 3]}
    assert fake.calls("GET", "/v1/campaigns/7/metrics")[0].query == {"version": "2", "res": "days"}
    assert await app_api.action_metrics(7, 9) == {"sent": [1]}
    assert await app_api.broadcast_metrics(3) == {"sent": [5]}
    assert await app_api.newsletter_metrics(4) == {"opened": [2]}
    assert await app_api.transactional_metrics(5) == {"clicked": [1]}
    assert await app_api.metrics("campaign", "7") == {"sent": [3, 4], "delivered": [3, 3]}
    with pytest.raises(CustomerIONotFound):
        await app_api.campaign_metrics(99)
    with pytest.raises(ValueError, match="kind must be one of"):
        await app_api.metrics("journey", 1)


async def test_reporting_webhooks(fake: FakeCustomerIO, app_api: AppClient) -> None:
    assert await app_api.reporting_webhooks() == []
    fake.webhooks = [{"id": 1, "name": "warehouse", "endpoint": "https://example.com/hook"}]
    assert (await app_api.reporting_webhooks())[0]["name"] == "warehouse"


def test_url_tables_are_the_documented_ones() -> None:
    assert dict(TRACK_URLS) == {
        "us": "https://track.customer.io/api/v1",
        "eu": "https://track-eu.customer.io/api/v1",
    }
    assert dict(APP_URLS) == {
        "us": "https://api.customer.io/v1",
        "eu": "https://api-eu.customer.io/v1",
    }
