"""Every default of cio-webhooks, defined once, and the ``Settings`` of one service.

Each other module imports the value it needs from here (the receiver its body limit,
the dispatcher its retry numbers, the CLI its option defaults and variable names),
so a default changes in one place.  This module imports nothing of the package at
run time: any module may use it.

::

    where             DATA_DIR, INBOX_FILE, WAREHOUSE_FILE, KEY_FILE
                      (the SQLite ledger's file: store.sqlite.LEDGER_FILE)
    how it is reached HOST, PORT, WEBHOOK_PATH, ENV_PREFIX, env(), STORE_ENV
    the receiver      DEFAULT_TOLERANCE, DEFAULT_MAX_BODY, DEFAULT_DEDUPE_DAYS
    the dispatcher    RetryPolicy, DEFAULT_CONCURRENCY, DEFAULT_HANDLER_TIMEOUT,
                      DEFAULT_DRAIN_TIMEOUT, DEFAULT_LEASE, PRUNE_EVERY
    Customer.io       CUSTOMERIO_RETRY_DAYS, REGIONS, DEFAULT_REGION, DEFAULT_TRACK_RATE
    the HTTP server   DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_MAX_HEADER_SIZE,
                      DEFAULT_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS
    watching          UI_PATH, UI_PORT, DEFAULT_UI_USER, UI_SESSION_SECONDS,
                      UI_PAGE_SIZE, UI_RECENT_ACTIONS, COMPLAINT_RATE_WARN, COMPLAINT_RATE_LIMIT,
                      RATE_MIN_VOLUME, TRAFFIC_FLUSH_EVERY, ALERT_EVERY,
                      ALERT_RATES_EVERY, DEFAULT_ALERT_COOLDOWN, ALERT_HTTP_TIMEOUT,
                      DEFAULT_DASHBOARD_URL
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store._url import StoreURL

__all__ = [
    "ALERT_EVERY",
    "ALERT_HTTP_TIMEOUT",
    "ALERT_RATES_EVERY",
    "COMPLAINT_RATE_LIMIT",
    "COMPLAINT_RATE_WARN",
    "CUSTOMERIO_RETRY_DAYS",
    "DATA_DIR",
    "DEFAULT_ALERT_COOLDOWN",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_DASHBOARD_URL",
    "DEFAULT_DEDUPE_DAYS",
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_HANDLER_TIMEOUT",
    "DEFAULT_LEASE",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_HEADER_SIZE",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_REGION",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_TOLERANCE",
    "DEFAULT_TRACK_RATE",
    "DEFAULT_UI_USER",
    "ENV_PREFIX",
    "HOST",
    "INBOX_FILE",
    "KEY_FILE",
    "PORT",
    "PROBE_TIMEOUT",
    "PRUNE_EVERY",
    "RATE_MIN_VOLUME",
    "REGIONS",
    "STORE_ENV",
    "TRAFFIC_FLUSH_EVERY",
    "UI_PAGE_SIZE",
    "UI_PATH",
    "UI_PORT",
    "UI_RECENT_ACTIONS",
    "UI_SESSION_SECONDS",
    "WAREHOUSE_FILE",
    "WEBHOOK_PATH",
    "RetryPolicy",
    "Settings",
    "env",
]

# -- where the data lives ---------------------------------------------------------------
#: The data directory of a SQLite deployment (relative to the working directory).
DATA_DIR = Path(".cio-webhooks")
#: The inbox (the default store) in the data directory.
INBOX_FILE = "inbox.db"
#: The warehouse, beside the inbox.
WAREHOUSE_FILE = "warehouse.db"
#: The signing key ``serve`` generates when none is configured, in the data directory.
KEY_FILE = "signing-key"

# -- how the service is reached and configured ------------------------------------------
HOST = "127.0.0.1"
PORT = 8000
WEBHOOK_PATH = "/webhooks/customerio"
#: Every option is also an environment variable ``CIO_WEBHOOKS_<NAME>``.
ENV_PREFIX = "CIO_WEBHOOKS"


def env(name: str) -> str:
    """The environment variable of setting ``name`` (``STORE`` -> ``CIO_WEBHOOKS_STORE``)."""
    return f"{ENV_PREFIX}_{name}"


#: The store URL (``sqlite:///...`` or ``postgresql://...``).
STORE_ENV = env("STORE")

# -- the receiver -----------------------------------------------------------------------
#: Seconds a signature's timestamp may be from now (``verify``'s default).
DEFAULT_TOLERANCE = 300.0
#: The largest body accepted, in bytes (413 above).
DEFAULT_MAX_BODY = 2 * 1024 * 1024
#: Customer.io retries a failed delivery for 7 days: dedupe must remember at least that long.
CUSTOMERIO_RETRY_DAYS = 7.0
#: How long the store remembers an event_id (the service prunes older finished events).
DEFAULT_DEDUPE_DAYS = 30.0

# -- the dispatcher ---------------------------------------------------------------------
#: Events processed at once; also the number of threads for sync handlers.
DEFAULT_CONCURRENCY = 32
#: Seconds one handler may run for one event.
DEFAULT_HANDLER_TIMEOUT = 30.0
#: Seconds ``Dispatcher.run`` waits for the events in flight once told to stop.
DEFAULT_DRAIN_TIMEOUT = 30.0
#: Seconds a claim holds without a heartbeat: how long the events of a worker that
#: died wait before another worker claims them.  A live worker extends its claims
#: every third of it, so a heartbeat that fails once or twice loses nothing.
DEFAULT_LEASE = 30.0
#: Seconds between two prunes of finished events past the dedupe window.
PRUNE_EVERY = 3600.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits about ``base * 2**(n-1)`` s,
    capped at ``max_delay``, then randomised by +-``jitter`` of itself."""

    max_attempts: int = 10
    base: float = 5.0
    max_delay: float = 3600.0
    jitter: float = 0.25

    def delay(self, attempt: int, rng: random.Random) -> float:
        raw = min(self.max_delay, self.base * 2.0 ** max(0, attempt - 1))
        return float(raw * (1 + self.jitter * (2 * rng.random() - 1)))


# -- Customer.io ------------------------------------------------------------------------
#: Customer.io's data centers (the ``--region`` choices); the first is the default.
REGIONS = ("us", "eu")
DEFAULT_REGION = REGIONS[0]
#: Track API requests per second (Customer.io's soft limit is about 1000).
DEFAULT_TRACK_RATE = 100.0

# -- the HTTP server --------------------------------------------------------------------
#: Seconds to drain requests on SIGTERM.
DEFAULT_SHUTDOWN_TIMEOUT = 10.0
#: Request line and headers, in bytes (431 above).  Customer.io sends well under 2 KiB.
DEFAULT_MAX_HEADER_SIZE = 16 * 1024
#: Seconds from a request's first byte (or the connection's opening) until its body is
#: complete.  Customer.io gives up after 4 s, so nothing slower is a real delivery.
DEFAULT_READ_TIMEOUT = 10.0
#: Open connections.  One more closes the oldest idle one (waiting for a head or kept
#: alive); when none is idle it is answered 503 (Customer.io retries it) and closed.
DEFAULT_MAX_CONNECTIONS = 1000
#: Seconds ``/readyz`` and ``/metrics`` wait for the store before answering without it
#: (not ready; ``cio_webhooks_store_up 0``): probes and scrapes have short timeouts.
PROBE_TIMEOUT = 2.0


# -- watching: the dashboard and the alerts ---------------------------------------------
#: Where ``serve``, ``worker --port`` and ``ui`` serve the dashboard.
UI_PATH = "/ui"
#: Where ``cio-webhooks ui`` listens by default (``serve`` has PORT).
UI_PORT = 8001
#: The dashboard's user name when only a password is configured.
DEFAULT_UI_USER = "admin"
#: How long a dashboard login lasts (seconds).
UI_SESSION_SECONDS = 12 * 3600
#: Events per page of the dashboard's lists.
UI_PAGE_SIZE = 50
#: Operator actions (retries, discards, re-ingests) the dead-letters page lists.
UI_RECENT_ACTIONS = 100
#: Spam complaint rates (over delivered) Google and Yahoo judge senders by: stay
#: under the first (recommended), never reach the second (required).
COMPLAINT_RATE_WARN = 0.001
COMPLAINT_RATE_LIMIT = 0.003
#: Deliveries a group needs before the dashboard shows its rates (fewer: noise).
RATE_MIN_VOLUME = 100
#: Seconds between two writes of a receiver's per-minute traffic to the store.
TRAFFIC_FLUSH_EVERY = 5.0
#: Seconds between two evaluations of the alert rules.
ALERT_EVERY = 30.0
#: Seconds an alerter reuses the email rates it read: each is a count over the whole
#: window (a day of events), cheap every few minutes, wasteful every check.
ALERT_RATES_EVERY = 300.0
#: Seconds between two messages about an alert that keeps firing (each rule may set its own).
DEFAULT_ALERT_COOLDOWN = 3600.0
#: Seconds a notifier (Slack, a JSON webhook) gets to take one message.
ALERT_HTTP_TIMEOUT = 10.0
#: The dashboard's address in alert messages when the alerts file names none.
DEFAULT_DASHBOARD_URL = f"http://{HOST}:{PORT}"


@dataclass(frozen=True)
class Settings:
    """One service's settings (``serve``, ``worker``).  ``store`` names the store (its
    ``str`` hides any password).  ``sinks`` are the warehouses' URLs; none means one
    SQLite sink, the file ``warehouse``."""

    store: StoreURL
    warehouse: Path
    sinks: tuple[str, ...] = field(default=(), repr=False)  # URLs may hold passwords
    pii_salt: str | None = field(default=None, repr=False)
    signing_keys: tuple[str, ...] = field(default=(), repr=False)
    tolerance: float = DEFAULT_TOLERANCE
    max_body: int = DEFAULT_MAX_BODY
    handlers: tuple[str, ...] = ()
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    dedupe_days: float = DEFAULT_DEDUPE_DAYS
    dispatch: bool = True
    max_db_bytes: int | None = None  # SQLite only: cap the inbox file (503 past it)
    # policies (Track API)
    policies: Path | None = None
    track_site_id: str | None = None
    track_api_key: str | None = field(default=None, repr=False)
    region: str = DEFAULT_REGION
    track_url: str | None = None
    track_rate: float = DEFAULT_TRACK_RATE
    dry_run: bool = False
    actions_db: Path | None = None  # SQLite only: the ledger file [default: beside the inbox]
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    # the dashboard: a login is required when a password or a token is set
    ui_user: str = DEFAULT_UI_USER
    ui_password: str | None = field(default=None, repr=False)
    ui_token: str | None = field(default=None, repr=False)
    # alerts: the TOML file of rules and notifiers (None: the default rules, log only)
    alerts: Path | None = None
