"""Track and App API clients against the fake Customer.io (a real HTTP server)."""

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
    CustomerIONotFound,
    CustomerIORateLimited,
    CustomerIOServerError,
    TrackClient,
)
from cio_webhooks.customerio._http import RateLimiter, retry_after
from cio_webhooks.customerio.fake import FakeCustomerIO


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


@pytest.fixture
async def fake() -> AsyncIterator[FakeCustomerIO]:
    async with FakeCustomerIO(
        site_id="site-1", track_key="secret-track-key", app_key="secret-app-key"
    ) as server:
        yield server


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def track(fake: FakeCustomerIO, sleeps: Sleeps) -> AsyncIterator[TrackClient]:
    client = TrackClient(
        "site-1",
        "secret-track-key",
        base_url=fake.track_url,
        sleep=sleeps,
        clock=sleeps.clock,
        rng=random.Random(1),
    )
    yield client
    await client.close()


@pytest.fixture
async def app_api(fake: FakeCustomerIO, sleeps: Sleeps) -> AsyncIterator[AppClient]:
    client = AppClient(
        "secret-app-key",
        base_url=fake.app_url,
        sleep=sleeps,
        clock=sleeps.clock,
        rng=random.Random(1),
    )
    yield client
    await client.close()


def test_regions_select_the_documented_hosts() -> None:
    assert TrackClient("s", "k").http.base_url == "https://track.customer.io/api/v1"
    assert TrackClient("s", "k", region="eu").http.base_url == TRACK_URLS["eu"]
    assert TRACK_URLS["eu"] == "https://track-eu.customer.io/api/v1"
    assert AppClient("k", region="eu").http.base_url == "https://api-eu.customer.io/v1"
    assert AppClient("k").http.base_url == APP_URLS["us"] == "https://api.customer.io/v1"
    with pytest.raises(ValueError, match="region"):
        TrackClient("s", "k", region="apac")


async def test_identify_unsubscribe_suppress_track(
    fake: FakeCustomerIO, track: TrackClient
) -> None:
    await track.identify("42", plan="pro")
    await track.unsubscribe("ada@example.com")
    await track.suppress("cio_d9c106000001")
    await track.unsuppress("42")
    await track.track("42", "bounced", {"reason": "550"})
    assert [(r.method, r.path, r.body) for r in fake.calls()] == [
        ("PUT", "/api/v1/customers/42", {"plan": "pro"}),
        ("PUT", "/api/v1/customers/ada@example.com", {"unsubscribed": True}),
        ("POST", "/api/v1/customers/cio_d9c106000001/suppress", None),
        ("POST", "/api/v1/customers/42/unsuppress", None),
        ("POST", "/api/v1/customers/42/events", {"name": "bounced", "data": {"reason": "550"}}),
    ]


async def test_identifiers_are_escaped_in_the_path(
    fake: FakeCustomerIO, track: TrackClient
) -> None:
    await track.identify("a/b c")
    [call] = fake.calls()
    assert call.path == "/api/v1/customers/a/b c"  # decoded by the server: one path segment
    assert fake.requests[0].status == 200


async def test_wrong_credentials_fail_without_showing_the_key(
    fake: FakeCustomerIO, sleeps: Sleeps
) -> None:
    client = TrackClient("site-1", "wrong-key-value", base_url=fake.track_url, sleep=sleeps)
    with pytest.raises(CustomerIOAuthError) as caught:
        await client.identify("42")
    await client.close()
    message = str(caught.value)
    assert "PUT /customers/42: HTTP 401" in message
    assert "wrong-key-value" not in message
    assert "Basic" not in message
    assert "wrong-key-value" not in repr(client.http)
    assert sleeps.waits == []  # auth errors are not retried


async def test_429_honours_retry_after(
    fake: FakeCustomerIO, track: TrackClient, sleeps: Sleeps
) -> None:
    fake.fail_next(2, status=429, retry_after=7)
    await track.identify("42")
    assert [r.status for r in fake.requests] == [429, 429, 200]
    assert [w for w in sleeps.waits if w >= 1] == [7.0, 7.0]


async def test_5xx_is_retried_with_backoff_then_succeeds(
    fake: FakeCustomerIO, track: TrackClient, sleeps: Sleeps
) -> None:
    fake.fail_next(3, status=503)
    await track.identify("42")
    assert [r.status for r in fake.requests] == [503, 503, 503, 200]
    backoffs = [w for w in sleeps.waits if w > 0.02]
    assert len(backoffs) == 3
    assert backoffs[0] < backoffs[1] < backoffs[2]


async def test_retries_are_bounded(fake: FakeCustomerIO, track: TrackClient) -> None:
    fake.fail_next(5, status=500)  # 1 try + 4 retries
    with pytest.raises(CustomerIOServerError, match="HTTP 500 after 5 attempt"):
        await track.identify("42")
    fake.fail_next(10, status=429)
    with pytest.raises(CustomerIORateLimited):
        await track.identify("43")


async def test_client_errors_are_not_retried(fake: FakeCustomerIO, app_api: AppClient) -> None:
    with pytest.raises(CustomerIONotFound, match="GET /messages/nope: HTTP 404"):
        await app_api.message("nope")
    assert len(fake.requests) == 1


async def test_connection_refused_is_retried_then_reported(sleeps: Sleeps) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = TrackClient(
        "s",
        "secret-track-key",
        base_url=f"http://127.0.0.1:{port}/api/v1",
        sleep=sleeps,
        max_retries=2,
    )
    with pytest.raises(CustomerIOConnectionError, match="after 3 attempts") as caught:
        await client.identify("42")
    await client.close()
    assert "secret-track-key" not in str(caught.value)
    assert len(sleeps.waits) >= 2


async def test_messages_follow_the_cursor(fake: FakeCustomerIO, app_api: AppClient) -> None:
    fake.messages = [
        {"id": f"d{i}", "type": "email", "created": 100 + i, "metrics": {"sent": 1}}
        for i in range(5)
    ]
    ids = [m["id"] async for m in app_api.messages(start_ts=101)]
    assert ids == ["d1", "d2", "d3", "d4"]
    pages = fake.calls("GET", "/v1/messages")
    assert [p.query.get("start") for p in pages] == [None, "2"]
    assert all(p.query["start_ts"] == "101" for p in pages)


async def test_metrics_and_webhooks(fake: FakeCustomerIO, app_api: AppClient) -> None:
    fake.campaign_series["7"] = {"sent": [3, 4], "delivered": [3, 3]}
    fake.webhooks = [{"id": 1, "name": "warehouse", "endpoint": "https://example.com/hook"}]
    assert await app_api.campaign_metrics(7, res="days") == {"sent": [3, 4], "delivered": [3, 3]}
    assert fake.calls("GET", "/v1/campaigns/7/metrics")[0].query == {"version": "2", "res": "days"}
    assert await app_api.broadcast_metrics(3) == {}
    assert (await app_api.reporting_webhooks())[0]["name"] == "warehouse"


async def test_app_api_wants_a_bearer_key(fake: FakeCustomerIO, sleeps: Sleeps) -> None:
    client = AppClient("other", base_url=fake.app_url, sleep=sleeps)
    with pytest.raises(CustomerIOAuthError):
        await client.reporting_webhooks()
    await client.close()


async def test_rate_limiter_spaces_requests() -> None:
    sleeps = Sleeps()
    limiter = RateLimiter(10, clock=sleeps.clock, sleep=sleeps)
    for _ in range(5):
        await limiter.wait()
    assert sleeps.waits == pytest.approx([0.1, 0.1, 0.1, 0.1])


def test_retry_after_parses_seconds_and_dates() -> None:
    assert retry_after("12", now=0) == 12
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470) == 10
    assert retry_after("soon", now=0) is None
    assert retry_after(None, now=0) is None


async def test_a_stalled_answer_times_out_and_is_retried(
    fake: FakeCustomerIO, sleeps: Sleeps
) -> None:
    fake.delay = 2.0
    client = TrackClient(
        "site-1",
        "secret-track-key",
        base_url=fake.track_url,
        sleep=sleeps,
        timeout=0.2,
        max_retries=1,
    )
    with pytest.raises(CustomerIOConnectionError, match="TimeoutError after 2 attempts"):
        await client.identify("42")
    await client.close()
