"""``serve`` (receiver, and the worker's tasks unless ``--no-dispatch``) and ``worker``
(dispatcher, warehouse loading, policies, pruning): both on the store of ``--store``,
which they migrate when they open it."""

from __future__ import annotations

import asyncio
import math
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from .._exceptions import ConfigError
from .._metrics import MetricSources
from .._server import ConnectionLimits, fit_open_files, listen, protocol_for
from .._service import (
    build_app,
    check_storage,
    load_or_create_key,
    run_worker,
    sink_urls,
    split_keys,
)
from ..alerts import load_alerts
from ..settings import (
    CUSTOMERIO_RETRY_DAYS,
    DATA_DIR,
    DEFAULT_DEDUPE_DAYS,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_REGION,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_TOLERANCE,
    DEFAULT_TRACK_RATE,
    KEY_FILE,
    PORT,
    REGIONS,
    UI_PATH,
    WEBHOOK_PATH,
    RetryPolicy,
    Settings,
    env,
)
from ._errors import err
from ._options import (
    F,
    FiniteRange,
    alerts_option,
    handlers_option,
    listen_options,
    policies_option,
    run,
    store_options,
    store_url,
    track_api_key_option,
    track_site_id_option,
    warehouse_beside,
)
from ._ui import serve_dashboard, ui_options, ui_settings

__all__ = ["serve", "signing_keys", "webhook_url", "worker"]

_RETRY = RetryPolicy()  # its defaults are the options' defaults


def service_options(fn: F) -> F:
    options = [
        click.option(
            "--signing-key",
            "signing_keys",
            multiple=True,
            envvar=env("SIGNING_KEYS"),
            help="Customer.io signing key; repeat (or comma-separate) to rotate.",
        ),
        click.option(
            "--tolerance",
            type=FiniteRange(min=0),
            default=DEFAULT_TOLERANCE,
            show_default=True,
            envvar=env("TOLERANCE"),
            help="Timestamp tolerance in seconds; 0 disables.",
        ),
        click.option(
            "--max-body",
            type=click.IntRange(min=1),
            default=DEFAULT_MAX_BODY,
            show_default=True,
            envvar=env("MAX_BODY"),
            help="Largest accepted body in bytes (413 above).",
        ),
        handlers_option,
        click.option(
            "--warehouse",
            type=click.Path(dir_okay=False, path_type=Path),
            envvar=env("WAREHOUSE"),
            help="Warehouse SQLite file. [default: next to the SQLite inbox, else in DATA_DIR]",
        ),
        click.option(
            "--sink",
            "sinks",
            multiple=True,
            envvar=env("SINKS"),
            help="Warehouse sink URL, repeatable (env: comma-separated): sqlite:///PATH,"
            " postgresql://..., bigquery://PROJECT/DATASET, parquet:///DIR."
            " [default: the SQLite file of --warehouse]",
        ),
        click.option(
            "--pii-salt",
            envvar=env("PII_SALT"),
            help="Salt of the email=hash sink option (keep it secret and stable).",
        ),
        click.option(
            "--max-attempts",
            type=click.IntRange(min=1),
            default=_RETRY.max_attempts,
            show_default=True,
            envvar=env("MAX_ATTEMPTS"),
            help="Handler attempts before dead-lettering.",
        ),
        click.option(
            "--retry-base",
            type=FiniteRange(min=0, min_open=True),
            default=_RETRY.base,
            show_default=True,
            envvar=env("RETRY_BASE"),
            help="First retry delay in seconds (doubles).",
        ),
        click.option(
            "--retry-max-delay",
            type=FiniteRange(min=0, min_open=True),
            default=_RETRY.max_delay,
            show_default=True,
            envvar=env("RETRY_MAX_DELAY"),
            help="Longest retry delay in seconds.",
        ),
        click.option(
            "--drain-timeout",
            type=FiniteRange(min=0),
            default=DEFAULT_DRAIN_TIMEOUT,
            show_default=True,
            envvar=env("DRAIN_TIMEOUT"),
            help="On SIGTERM, seconds in-flight handlers and Track calls get to finish"
            " before they are cancelled (and retried after their lease).",
        ),
        click.option(
            "--dedupe-days",
            # Shorter, and a retry of Customer.io's could be taken for a new event.
            type=FiniteRange(min=CUSTOMERIO_RETRY_DAYS),
            default=DEFAULT_DEDUPE_DAYS,
            show_default=True,
            envvar=env("DEDUPE_DAYS"),
            help="Keep finished events (and dedupe) this long, and the dashboard's traffic"
            " and operator actions; at least Customer.io's 7 days.",
        ),
        click.option(
            "--max-db-size",
            type=click.IntRange(min=1),
            envvar=env("MAX_DB_SIZE"),
            help="Cap the SQLite inbox file at this many bytes; past it, answer 503.",
        ),
        click.option(
            "--actions-db",
            type=click.Path(dir_okay=False, path_type=Path),
            envvar=env("ACTIONS_DB"),
            help="The policies' ledger file of a SQLite store. [default: actions.db next to"
            " the inbox; a PostgreSQL store keeps it inside]",
        ),
        policies_option,
        alerts_option,
        track_site_id_option,
        track_api_key_option,
        click.option(
            "--region",
            type=click.Choice(REGIONS, case_sensitive=False),
            default=DEFAULT_REGION,
            show_default=True,
            envvar=env("REGION"),
            help="Customer.io data center.",
        ),
        click.option("--track-url", envvar=env("TRACK_URL"), help="Override the Track API URL."),
        click.option(
            "--track-rate",
            type=FiniteRange(min=0, min_open=True),
            default=DEFAULT_TRACK_RATE,
            show_default=True,
            envvar=env("TRACK_RATE"),
            help="Most Track API requests per second (Customer.io's limit is about 1000).",
        ),
        click.option(
            "--dry-run",
            is_flag=True,
            envvar=env("DRY_RUN"),
            help="Policies record what they would do and call nothing.",
        ),
        click.option(
            "--log-level",
            default="info",
            show_default=True,
            envvar=env("LOG_LEVEL"),
            type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return store_options(ui_options(fn))


def signing_keys(values: tuple[str, ...]) -> tuple[str, ...]:
    """The configured keys; a setting that is present but holds no key is an error, so
    that a blank variable never turns into a generated key Customer.io does not know."""
    keys = split_keys(values)
    if not keys and (values or env("SIGNING_KEYS") in os.environ):
        raise ConfigError(
            "the signing key setting (--signing-key / CIO_WEBHOOKS_SIGNING_KEYS) is blank: "
            "set the key Customer.io shows for the webhook, or leave it unset to generate one"
        )
    return keys


def _settings(
    data_dir: Path,
    db: Path | None,
    store: str | None,
    *,
    generate_key: bool,
    url: str = "",
    **o: Any,
) -> Settings:
    """Settings from the service options.  With ``generate_key`` and no key configured at
    all, the key stored in ``data_dir`` is used (generated and announced, with how to send
    to ``url``, on first use)."""
    where = store_url(data_dir, db, store)
    keys = signing_keys(o["signing_keys"])
    if not keys and generate_key:
        key, created = load_or_create_key(data_dir)
        keys = (key,)
        if created:
            _announce_key(key, data_dir, url)
        else:
            stored = data_dir / KEY_FILE
            err.print(f"Using the signing key stored in {stored}.", highlight=False, markup=False)
    if o["retry_max_delay"] < o["retry_base"]:
        raise ConfigError(
            f"--retry-max-delay {o['retry_max_delay']:g} is shorter than "
            f"--retry-base {o['retry_base']:g}"
        )
    if where.path is None:  # options that only a SQLite file has
        for name, option in (("actions_db", "--actions-db"), ("max_db_size", "--max-db-size")):
            if o[name] is not None:
                raise ConfigError(f"{option} is for a SQLite store, not {where.backend}")
    handlers = tuple(h for spec in o["handlers"] for h in spec.split(",") if h.strip())
    sinks = tuple(u.strip() for spec in o["sinks"] for u in spec.split(",") if u.strip())
    salt = o["pii_salt"] or None
    settings = Settings(
        store=where,
        warehouse=o["warehouse"] or warehouse_beside(where, data_dir),
        sinks=sinks,
        pii_salt=salt,
        signing_keys=keys,
        tolerance=o["tolerance"],
        max_body=o["max_body"],
        handlers=handlers,
        retry=RetryPolicy(
            max_attempts=o["max_attempts"], base=o["retry_base"], max_delay=o["retry_max_delay"]
        ),
        dedupe_days=o["dedupe_days"],
        drain_timeout=o["drain_timeout"],
        max_db_bytes=o["max_db_size"],
        policies=o["policies"],
        track_site_id=o["track_site_id"],
        track_api_key=o["track_api_key"],
        region=o["region"].lower(),
        track_url=o["track_url"],
        track_rate=o["track_rate"],
        dry_run=o["dry_run"],
        actions_db=o["actions_db"],
        alerts=o["alerts"],
        **ui_settings(o),
    )
    sink_urls(settings)  # a bad sink URL, or email=hash without a salt, fails at start
    load_alerts(settings.alerts)  # and so does a bad alerts file
    return settings


def _program() -> str:
    """How the user can run this command again from here (e.g. ``.venv/bin/cio-webhooks``)."""
    program = Path(sys.argv[0])
    if program.name == "__main__.py":
        return f"{Path(sys.executable).name} -m cio_webhooks"
    try:
        return shlex.quote(str(program.resolve().relative_to(Path.cwd())))
    except ValueError:
        return program.name


def _dashboard_access(settings: Settings, host: str) -> str:
    """Who may use the dashboard, in words, for the start-up lines."""
    from ..ui import is_loopback

    if settings.ui_password or settings.ui_token:
        return "login required"
    if is_loopback(host):
        return "no login: this machine only"
    return "refused: set CIO_WEBHOOKS_UI_PASSWORD or CIO_WEBHOOKS_UI_TOKEN"


def webhook_url(host: str, port: int) -> str:
    """Where Customer.io (or ``send``) posts to a receiver on ``host:port``."""
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{WEBHOOK_PATH}"


def _announce_key(key: str, data_dir: Path, url: str) -> None:
    # Shown once, on the terminal, when the key is created; never logged.
    send = [f"{_program()} send examples/email_delivered.json --url {shlex.quote(url)}"]
    if data_dir != DATA_DIR:
        send.append(f"--data-dir {shlex.quote(str(data_dir))}")
    err.print(
        "\n[bold]No signing key was configured, so one was generated[/] and stored in "
        f"{escape(str(data_dir / KEY_FILE))} (mode 0600):\n\n    {key}\n\n"
        "Send a signed test event with (send uses this key by default):\n\n"
        f"    {escape(' '.join(send))}\n\n"
        "For real traffic, set CIO_WEBHOOKS_SIGNING_KEYS to the key Customer.io shows for "
        "your reporting webhook.\n",
        highlight=False,
        soft_wrap=True,
    )


@click.command()
@listen_options(port=PORT)
@click.option(
    "--no-dispatch",
    is_flag=True,
    envvar=env("NO_DISPATCH"),
    help="Only receive: every event waits for a `cio-webhooks worker` on the same store.",
)
@click.option(
    "--reuse-port",
    is_flag=True,
    envvar=env("REUSE_PORT"),
    help="Share the port with other receivers on this host (SO_REUSEPORT).",
)
@click.option(
    "--shutdown-timeout",
    type=FiniteRange(min=0),
    default=DEFAULT_SHUTDOWN_TIMEOUT,
    show_default=True,
    envvar=env("SHUTDOWN_TIMEOUT"),
    help="Seconds to drain requests on SIGTERM.",
)
@click.option(
    "--max-header-size",
    type=click.IntRange(min=1024),
    default=DEFAULT_MAX_HEADER_SIZE,
    show_default=True,
    envvar=env("MAX_HEADER_SIZE"),
    help="Largest request line + headers in bytes (431 above).",
)
@click.option(
    "--read-timeout",
    type=FiniteRange(min=0, min_open=True),
    default=DEFAULT_READ_TIMEOUT,
    show_default=True,
    envvar=env("READ_TIMEOUT"),
    help="Seconds a client has to send a whole request; slower connections are closed.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_CONNECTIONS,
    show_default=True,
    envvar=env("MAX_CONNECTIONS"),
    help="Open connections; one more closes the oldest idle one (503 when none is idle).",
)
@service_options
def serve(
    host: str,
    port: int,
    no_dispatch: bool,
    reuse_port: bool,
    shutdown_timeout: float,
    max_header_size: int,
    read_timeout: float,
    max_connections: int,
    data_dir: Path,
    db: Path | None,
    store: str | None,
    **options: Any,
) -> None:
    """Run the receiver, dispatcher and warehouse loader in one process (with
    --no-dispatch: the receiver only)."""
    import uvicorn

    from .._logging import configure_logging

    configure_logging(options["log_level"])
    limits = fit_open_files(
        ConnectionLimits(
            max_header_size=max_header_size,
            read_timeout=read_timeout,
            max_connections=max_connections,
        )
    )
    # Bound first: a busy port fails before anything is created, and port 0 becomes
    # the real port in everything printed below.
    sock = listen(host, port, reuse_port=reuse_port)
    url = webhook_url(host, sock.getsockname()[1])
    try:
        settings = _settings(data_dir, db, store, generate_key=True, url=url, **options)
        if no_dispatch:
            settings = Settings(**{**settings.__dict__, "dispatch": False})
        check_storage(settings)
        app = build_app(settings, bind=host)
    except BaseException:
        sock.close()
        raise
    err.print(
        f"cio-webhooks listening on {url} "
        f"(store {settings.store}, sinks {', '.join(str(u) for u in sink_urls(settings))}, "
        f"{len(settings.signing_keys)} signing key(s), handlers: {len(settings.handlers)}"
        f"{'' if settings.dispatch else ', no dispatch'})",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )
    dashboard = f"{url.removesuffix(WEBHOOK_PATH)}{UI_PATH}/"
    err.print(
        f"dashboard on {dashboard} ({_dashboard_access(settings, host)})",
        highlight=False,
        markup=False,
    )
    config = uvicorn.Config(
        app,
        loop="auto",
        http=protocol_for(limits),
        lifespan="on",
        access_log=False,
        log_config=None,
        log_level="warning",
        timeout_graceful_shutdown=math.ceil(shutdown_timeout),
        server_header=False,
    )
    uvicorn.Server(config).run(sockets=[sock])


@click.command()
@service_options
@listen_options(
    prefix="WORKER_",
    port=None,
    host_help="With --port: the address of the dashboard, /metrics and /healthz.",
    port_help="Serve the dashboard (/ui), /metrics and /healthz on this port (0: any free"
    " one). [default: no HTTP]",
)
@click.option(
    "--create",
    is_flag=True,
    envvar=env("WORKER_CREATE"),
    help="Create the SQLite inbox if there is none (else a missing inbox is an error).",
)
def worker(
    data_dir: Path,
    db: Path | None,
    store: str | None,
    host: str,
    port: int | None,
    create: bool,
    **options: Any,
) -> None:
    """Run the dispatcher, warehouse loader, policies and pruning without the HTTP
    receiver (as many as wanted on one PostgreSQL store)."""
    from .._logging import configure_logging

    configure_logging(options["log_level"])
    settings = _settings(data_dir, db, store, generate_key=False, **options)
    # A mistyped --db must not start a worker on a new, empty inbox that nothing feeds.
    inbox = settings.store.path
    if not create and inbox is not None and not inbox.exists():
        raise ConfigError(f"no inbox at {inbox} (start `serve` first, or pass --create)")
    check_storage(settings)
    # Without credentials on a non-loopback address /ui answers 403 (and says why),
    # while /metrics and /healthz are served: a scraper needs no dashboard login.
    sock = listen(host, port) if port is not None else None

    async def body() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        err.print(f"cio-webhooks worker on {settings.store}", highlight=False, markup=False)
        if sock is None:
            await run_worker(settings, stop)
            return
        metrics = MetricSources()
        await asyncio.gather(
            run_worker(settings, stop, metrics=metrics),
            serve_dashboard(settings, host, sock, stop, metrics),
        )

    run(body())
