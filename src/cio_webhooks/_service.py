"""Assembling the service from ``Settings``: store, router, dispatcher, warehouse, app.

The store is whatever ``settings.store`` names (``open_store``); nothing here knows a
backend class.  ``serve`` runs ``build_app`` (receiver, and unless ``dispatch`` is off
the background tasks); ``worker`` runs ``run_worker`` (the background tasks only)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import socket
import time
from pathlib import Path

from starlette.applications import Starlette

from ._exceptions import ConfigError, StoreUnavailable
from ._metrics import MetricSources
from .alerts import Alerter, load_alerts
from .app import Background, WebhookApp, create_app
from .customerio import CustomerIOAuthError, CustomerIOError, TrackClient
from .dispatcher import Clock, Dispatcher
from .handlers import Router, load_router
from .policies import DEFAULT_RULES, POLICY_HTTP, Policies, PolicyConfig, load_policies
from .settings import INBOX_FILE, KEY_FILE, PRUNE_EVERY, Settings
from .sinks import Loader, SinkURL, open_sink, parse_sink_urls
from .store import Ledger, Store, StoreURL, open_store
from .store.sqlite import LEDGER_FILE, probe_file

__all__ = [
    "Settings",
    "actions_path",
    "build_app",
    "build_policies",
    "build_router",
    "build_ui",
    "check_storage",
    "default_store",
    "ledger_file",
    "ledger_path",
    "load_or_create_key",
    "open_service_store",
    "policies_active",
    "probe_store",
    "report_sink",
    "run_worker",
    "service_ledger",
    "split_keys",
    "sqlite_store",
    "stored_key",
]

log = logging.getLogger("cio_webhooks.service")


def sqlite_store(path: Path) -> StoreURL:
    """The URL of the SQLite store in file ``path`` (``--db``, the data directory's)."""
    return StoreURL("sqlite", path=path)


def default_store(data_dir: Path) -> StoreURL:
    """The store when none is named: the SQLite inbox in the data directory."""
    return sqlite_store(data_dir / INBOX_FILE)


def split_keys(values: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Keys from repeated flags and comma-separated env values, in order, without blanks."""
    keys: list[str] = []
    for value in values:
        keys.extend(k.strip() for k in value.split(",") if k.strip())
    return tuple(dict.fromkeys(keys))


def stored_key(data_dir: Path) -> str | None:
    """The key ``serve`` generated in ``data_dir``, or None when it has not generated one."""
    path = data_dir / KEY_FILE
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreUnavailable(f"cannot read {path}: {_reason(exc)}") from exc
    if not key:
        raise ConfigError(f"{path} is empty: delete it or configure a signing key")
    return key


def load_or_create_key(data_dir: Path) -> tuple[str, bool]:
    """The key stored in ``data_dir``, generating it (mode 0600) on first use.
    Returns ``(key, created)``; raises ``StoreUnavailable`` when ``data_dir`` is unusable."""
    key = stored_key(data_dir)
    if key is not None:
        return key, False
    path = data_dir / KEY_FILE
    key = secrets.token_hex(32)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")
    except OSError as exc:
        raise StoreUnavailable(f"cannot create {path}: {_reason(exc)}") from exc
    return key, True


def _reason(exc: Exception) -> str:
    if isinstance(exc, FileExistsError | NotADirectoryError):
        return "a parent is not a directory"
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def policies_active(settings: Settings) -> bool:
    """Whether any policy runs: a policy file, or both Track credentials."""
    has_track = bool(settings.track_site_id and settings.track_api_key)
    return settings.policies is not None or has_track


def ledger_file(store: StoreURL, actions_db: Path | None = None) -> Path | None:
    """The SQLite ledger file of ``store`` (``actions_db``, else beside the inbox); None
    for a store that keeps its ledger inside (PostgreSQL)."""
    if store.path is None:
        return None
    return actions_db or store.path.parent / LEDGER_FILE


def ledger_path(settings: Settings) -> Path | None:
    """The ledger file of the service's settings (``ledger_file``)."""
    return ledger_file(settings.store, settings.actions_db)


def actions_path(settings: Settings) -> Path | None:
    """The policies' SQLite audit file, or None when no policy is active or the
    store keeps its ledger inside."""
    return ledger_path(settings) if policies_active(settings) else None


def open_service_store(settings: Settings, *, readonly: bool = False) -> Store:
    """The store of ``settings``, not yet opened."""
    return open_store(
        settings.store,
        readonly=readonly,
        ledger_path=ledger_path(settings),
        max_bytes=settings.max_db_bytes,
    )


async def probe_store(settings: Settings) -> None:
    """Open the store (which applies its migrations) and close it again; raise
    ``StoreUnavailable`` with a sentence naming it (without a password)."""
    store = open_service_store(settings)
    try:
        await store.open()
    except StoreUnavailable as exc:
        if str(settings.store) in str(exc):
            raise
        raise StoreUnavailable(f"cannot open the store {settings.store}: {exc}") from exc
    finally:
        await store.close()


def check_storage(settings: Settings) -> None:
    """Fail fast, with a sentence, when the data files cannot be created or opened.

    SQLite files are probed without being made stores; a server store (PostgreSQL)
    is opened once instead (``probe_store``).  A file the probe had to create is
    removed again: if the service then stops on another error (a bad policy file), no
    empty file is left for ``worker``, ``report`` or ``actions list`` to mistake for a
    store."""
    if settings.store.path is None:
        asyncio.run(probe_store(settings))
    actions = actions_path(settings)
    files = [settings.store.path, settings.warehouse, actions]
    for path in (p for p in files if p is not None):
        probe_file(path)


def build_router(specs: tuple[str, ...]) -> Router:
    router = Router()
    for spec in specs:
        router.include(load_router(spec))
    return router


async def prune_periodically(
    inbox: Store,
    days: float,
    stop: asyncio.Event,
    *,
    clock: Clock = time.time,
    every: float = PRUNE_EVERY,
) -> None:
    """End the dedupe window of finished events older than ``days``, hourly."""
    while not stop.is_set():
        try:
            removed = await inbox.prune(received_before=clock() - days * 86400)
            if removed:
                log.info("event=pruned events=%d older_than_days=%g", removed, days)
        except Exception as exc:
            log.error("event=prune_failed error=%s", str(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


def _partial_credentials(settings: Settings) -> str | None:
    """Which Track credential is missing when only one is set, else None."""
    if bool(settings.track_site_id) == bool(settings.track_api_key):
        return None
    return "--track-api-key" if settings.track_site_id else "--track-site-id"


def build_policies(
    settings: Settings, *, ledger: Ledger | None = None, clock: Clock = time.time
) -> Policies | None:
    """The configured policies: the file's, else the defaults when Track credentials
    are set, else none.  Raises ``ConfigError`` for a bad file, or live rules without
    credentials; warns when only half of the credentials is set."""
    missing = _partial_credentials(settings)
    if not policies_active(settings):
        if missing:
            log.warning(
                "event=track_credentials_incomplete missing=%s policies=off detail=%s",
                missing,
                "only one Track credential is set: no policy runs",
            )
        return None
    if settings.policies is not None:
        config = load_policies(settings.policies)
    else:
        config = PolicyConfig(DEFAULT_RULES)
    if settings.dry_run:
        config = PolicyConfig(config.rules, dry_run=True)
    live = [r.name for r in config.rules if not (config.dry_run or r.dry_run)]
    if missing and live:
        raise ConfigError(
            f"policies {settings.policies} make live Track API calls, but {missing} is not"
            " set (set both --track-site-id and --track-api-key, or use --dry-run)"
        )
    if missing:
        log.warning(
            "event=track_credentials_incomplete missing=%s detail=%s",
            missing,
            "only one Track credential is set; every rule is a dry run",
        )
    if ledger is None:
        ledger = open_service_store(settings).ledger()
    track = None
    if settings.track_site_id and settings.track_api_key:
        track = TrackClient(
            settings.track_site_id,
            settings.track_api_key,
            region=settings.region,
            base_url=settings.track_url,
            rate=settings.track_rate,
            **POLICY_HTTP,
        )
    log.info(
        "event=policies_configured rules=%d live=%d source=%s audit=%s",
        len(config.rules),
        len(live),
        settings.policies or "defaults",
        actions_path(settings) or settings.store,
    )
    return Policies(config, ledger, track, clock=clock)


async def check_track_credentials(track: TrackClient, region: str) -> bool:
    """Ask Customer.io whether the Track credentials work (``GET /accounts/region``);
    log a warning saying what is wrong when they do not.  Never raises: the service
    runs on, and the policies' calls fail (and are retried) until it is fixed."""
    try:
        answer = await track.account_region()
    except CustomerIOAuthError as exc:
        log.warning(
            "event=track_credentials_refused status=%s detail=%s",
            exc.status,
            "Customer.io refused the Track site id / API key (or they belong to a"
            " workspace in the other region): policy calls will fail until fixed",
        )
        return False
    except CustomerIOError as exc:
        log.warning(
            "event=track_credentials_unchecked status=%s detail=%s",
            exc.status,
            f"could not reach the Track API to check the credentials: {exc}",
        )
        return False
    data_center = answer.get("data_center")
    if isinstance(data_center, str) and data_center.lower() != region:
        log.warning(
            "event=track_region_mismatch configured=%s workspace=%s",
            region,
            data_center.lower(),
        )
        return False
    log.info("event=track_credentials_ok region=%s", region)
    return True


async def dispatch_then_close(
    dispatcher: Dispatcher,
    policies: Policies | None,
    stop: asyncio.Event,
    *,
    check_region: str | None = None,
) -> None:
    """Run the dispatcher until ``stop`` and its drain (bounded by the dispatcher's
    ``drain_timeout``: in-flight handlers and Track calls finish, or are cancelled
    and retried after their lease); only then close the policies (their Track client
    and audit file).

    With ``check_region``, the Track credentials are checked once at start, beside."""
    track = policies.track if policies is not None else None
    checking = (
        asyncio.create_task(check_track_credentials(track, check_region))
        if track is not None and check_region is not None
        else None
    )
    try:
        await dispatcher.run(stop)
    except Exception as exc:
        log.error("event=dispatcher_failed error=%s", str(exc))
    finally:
        if checking is not None and not checking.done():
            checking.cancel()
            await asyncio.gather(checking, return_exceptions=True)
        if policies is not None:
            await policies.close()


def sink_urls(settings: Settings) -> list[SinkURL]:
    """The sinks of ``settings``: its URLs, else the SQLite file ``warehouse``.

    That default file is local to its host.  On a server store, whose workers may run
    on several hosts, it is named after the host (``sqlite-HOST``): each host's
    workers keep a whole copy, as they did before sinks had cursors in the store."""
    path = settings.warehouse
    urls = settings.sinks
    if not urls:
        default = f"sqlite://{path}" if path.is_absolute() else f"sqlite:{path}"
        if not settings.store.on_this_host:
            host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "host"
            default += f"?name=sqlite-{host}"
        urls = (default,)
    salt = settings.pii_salt.encode() if settings.pii_salt else None
    return parse_sink_urls(urls, salt=salt)


def background_tasks(
    settings: Settings,
    inbox: Store,
    *,
    clock: Clock = time.time,
    metrics: MetricSources | None = None,
) -> tuple[list[Background], Dispatcher]:
    """The worker's tasks on ``inbox``: dispatcher (handlers and policies), warehouse
    loader, pruner, alerter.  What they count for ``/metrics`` (the policies' Track
    calls) is added to ``metrics``."""
    router = build_router(settings.handlers)
    policies = build_policies(settings, ledger=inbox.ledger(), clock=clock)
    if policies is not None:
        router.include(policies.router())
        if metrics is not None:
            metrics.add(policies.metric_lines)
    dispatcher = Dispatcher(
        inbox, router, retry=settings.retry, clock=clock, drain_timeout=settings.drain_timeout
    )
    loader = Loader(inbox, [open_sink(url) for url in sink_urls(settings)], clock=clock)

    async def pruner(stop: asyncio.Event) -> None:
        await prune_periodically(inbox, settings.dedupe_days, stop, clock=clock)

    async def dispatch(stop: asyncio.Event) -> None:
        # The policies close only after the dispatcher returned: closing the Track
        # client under in-flight calls failed them ("Session is closed") and made
        # the retry after a restart a second call.
        await dispatch_then_close(
            dispatcher,
            policies,
            stop,
            check_region=settings.region,
        )

    alerts = Alerter(inbox, load_alerts(settings.alerts), clock=clock, policies=bool(policies))
    return [dispatch, loader.run, pruner, alerts.run], dispatcher


def report_sink(settings: Settings) -> SinkURL | None:
    """The sink the dashboard's Deliverability page reads: the first SQLite or
    PostgreSQL one of ``settings`` (None when all are BigQuery or Parquet)."""
    return next((u for u in sink_urls(settings) if u.kind in ("sqlite", "postgresql")), None)


def service_ledger(settings: Settings, inbox: Store) -> Ledger | None:
    """The policies' ledger of ``inbox`` for the dashboard to read, or None when no
    policy can have written one (a SQLite store without its file and no policy
    active: reading it would create the file)."""
    path = ledger_path(settings)
    if path is None or path.exists() or policies_active(settings):
        return inbox.ledger()
    return None


def build_ui(settings: Settings, inbox: Store, *, bind: str, clock: Clock = time.time) -> Starlette:
    """The dashboard over ``inbox`` (opened by the caller), served on ``bind``."""
    from .ui import create_ui  # Jinja2 and the templates load only where it is served

    return create_ui(
        inbox,
        bind=bind,
        user=settings.ui_user,
        password=settings.ui_password,
        token=settings.ui_token,
        policies=settings.policies,
        sink=report_sink(settings),
        ledger=service_ledger(settings, inbox),
        clock=clock,
    )


def build_app(
    settings: Settings, *, clock: Clock = time.time, bind: str | None = None
) -> WebhookApp:
    """The receiver on the store of ``settings``; with ``dispatch``, the worker's tasks
    (dispatcher, warehouse loader, pruner) run beside it.  Without, it knows no router:
    every event it stores waits for a ``worker`` (which may run on another host).
    With ``bind`` (the address it is served on), the dashboard is served at /ui."""
    if not settings.signing_keys:
        raise ConfigError("no signing key configured")
    inbox = open_service_store(settings)
    tasks: list[Background] = []
    router = None
    metrics = MetricSources()
    if settings.dispatch:
        tasks, dispatcher = background_tasks(settings, inbox, clock=clock, metrics=metrics)
        router = dispatcher.router
    return create_app(
        inbox,
        settings.signing_keys,
        tolerance=settings.tolerance,
        dedupe_days=settings.dedupe_days,
        max_body=settings.max_body,
        clock=clock,
        background=tasks,
        router=router,
        ui=build_ui(settings, inbox, bind=bind, clock=clock) if bind is not None else None,
        metrics=metrics,
    )


async def run_worker(
    settings: Settings, stop: asyncio.Event, *, metrics: MetricSources | None = None
) -> None:
    """The worker's tasks until ``stop``; their in-process series go to ``metrics``
    (``worker --port`` serves them)."""
    inbox = open_service_store(settings)
    await inbox.open()
    try:
        tasks, _ = background_tasks(settings, inbox, metrics=metrics)
        await asyncio.gather(*(task(stop) for task in tasks))
    finally:
        await inbox.close()
