"""The ``cio-webhooks`` command.  Every option is also a ``CIO_WEBHOOKS_*`` env var.

Exit codes: 0 success, 1 the operation failed (store unavailable, a request was
refused), 2 bad arguments or configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import datetime as dt
import json
import math
import os
import re
import shlex
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar

import click
from rich.console import Console, JustifyMethod
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from ._exceptions import CioWebhooksError, ConfigError, InvalidEvent, StoreUnavailable
from ._logging import quote
from ._server import ConnectionLimits, PortUnavailable, fit_open_files, listen, protocol_for
from ._service import (
    CUSTOMERIO_RETRY_DAYS,
    Settings,
    actions_path,
    build_app,
    build_router,
    check_storage,
    load_or_create_key,
    run_worker,
    split_keys,
    stored_key,
)
from .app import STALE_REASON
from .dispatcher import RetryPolicy
from .events import NORMALISED_FIELDS, iso, normalise, parse_event
from .handlers import Route
from .policies import DEFAULT_RULES, Policies, PolicyConfig, load_policies
from .signature import signed_headers
from .store import EventFilter, JobState, Quarantined, StoredEvent
from .store.sqlite import SQLiteLedger, SQLiteStore

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
err = Console(stderr=True, soft_wrap=True)  # errors stay on one line, greppable
DEFAULT_DATA_DIR = ".cio-webhooks"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
WEBHOOK_PATH = "/webhooks/customerio"


def _env(name: str) -> str:
    return f"CIO_WEBHOOKS_{name}"


class FiniteRange(click.FloatRange):
    """``click.FloatRange`` that also refuses ``nan`` and the infinities: Python reads
    them as floats, and every range check is false for NaN, so ``--retry-base nan``
    passed and later wrote NULL retry times."""

    name = "finite float range"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


#: How many rows a listing may ask for (SQLite's integers stop at 2**63 - 1).
LIMIT = click.IntRange(min=1, max=1_000_000)
#: A quarantine id.
QUARANTINE_ID = click.IntRange(min=1, max=2**63 - 1)


def _event_id_arguments(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...] | str
) -> Any:
    """Event ids as the receiver stores them: argv bytes that are not UTF-8 (Python
    reads them as surrogates, which SQLite refuses) become U+FFFD."""

    def text(ident: str) -> str:
        return ident.encode("utf-8", "surrogateescape").decode("utf-8", "replace")

    return text(value) if isinstance(value, str) else tuple(map(text, value))


def parse_since(text: str, now: float) -> float:
    """``7d``, ``12h``, ``30m``, ``90s``, an ISO date/time (UTC if naive) or unix seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        return now - float(m.group(1)) * unit
    if re.fullmatch(r"\d+(?:\.\d+)?", text):  # unix seconds: not nan, inf, 1e3 or +5
        return float(text)
    try:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--since {text!r}: use 7d, 12h, 30m, an ISO date or unix seconds"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def fail(message: object, code: int) -> NoReturn:
    """Print ``error: message`` on one stderr line and exit with ``code``.

    The message is escaped: it may quote data (an event id, a path) holding ``[``."""
    err.print(f"[red]error:[/] {escape(str(message))}", highlight=False)
    sys.exit(code)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except ConfigError as exc:
        fail(exc, 2)
    except CioWebhooksError as exc:
        fail(exc, 1)


def store_options(fn: F) -> F:
    fn = click.option(
        "--db",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar=_env("DB"),
        help="Inbox SQLite file. [default: DATA_DIR/inbox.db]",
    )(fn)
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=DEFAULT_DATA_DIR,
        show_default=True,
        envvar=_env("DATA_DIR"),
        help="Where the inbox, warehouse and generated key live.",
    )(fn)


def _db(data_dir: Path, db: Path | None) -> Path:
    return db if db is not None else data_dir / "inbox.db"


def inbox_path(data_dir: Path, db: Path | None) -> Path:
    """The inbox file of ``--db``/``--data-dir``; ConfigError when there is none."""
    path = _db(data_dir, db)
    if not path.is_file():
        raise ConfigError(f"no inbox at {path} (pass --db or --data-dir)")
    return path


@contextlib.asynccontextmanager
async def _existing_inbox(
    data_dir: Path, db: Path | None, *, readonly: bool
) -> AsyncIterator[SQLiteStore]:
    """The inbox at ``--db``/``--data-dir``, which must exist: a command never creates
    one, nor writes its tables into a file that is not one (ConfigError, exit 2)."""
    path = inbox_path(data_dir, db)
    reader = SQLiteStore(path, readonly=True)
    try:
        await reader.open()  # checks that it is an inbox
    except StoreUnavailable as exc:
        raise ConfigError(str(exc)) from exc
    try:
        if readonly:
            yield reader
            return
    finally:
        await reader.close()
    async with SQLiteStore(path) as inbox:
        yield inbox


def _inbox_command(
    fn: Callable[..., Coroutine[Any, Any, None]], *, readonly: bool
) -> Callable[..., None]:
    @wraps(fn)
    def command(data_dir: Path, db: Path | None, **kwargs: Any) -> None:
        async def body() -> None:
            async with _existing_inbox(data_dir, db, readonly=readonly) as inbox:
                await fn(inbox, **kwargs)

        _run(body())

    return command


def with_inbox(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async command body with the inbox opened from ``--data-dir``/``--db``."""
    return _inbox_command(fn, readonly=False)


def reading_inbox(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """``with_inbox`` for commands that only read: the inbox is opened read-only,
    and the command creates and changes no file."""
    return _inbox_command(fn, readonly=True)


_RETRY = RetryPolicy()  # its defaults are the options' defaults


# The options that decide which handlers are registered: the same for the service
# (serve, worker) and for the commands that must know its handlers (replay, handlers).
_handlers_option = click.option(
    "--handlers",
    multiple=True,
    envvar=_env("HANDLERS"),
    help="module:attr of a cio_webhooks.Router; repeatable.",
)
_policies_option = click.option(
    "--policies",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=_env("POLICIES"),
    help="TOML policy file. [default: the safe defaults, if Track credentials are set]",
)


def _credential(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A blank credential is no credential: a key of " " must not turn live policies on."""
    return (value or "").strip() or None


_track_site_id_option = click.option(
    "--track-site-id", envvar=_env("TRACK_SITE_ID"), callback=_credential, help="Track API site id."
)
_track_api_key_option = click.option(
    "--track-api-key",
    envvar=_env("TRACK_API_KEY"),
    callback=_credential,
    help="Track API key (prefer the env var: flags show in ps).",
)


def service_options(fn: F) -> F:
    options = [
        click.option(
            "--signing-key",
            "signing_keys",
            multiple=True,
            envvar=_env("SIGNING_KEYS"),
            help="Customer.io signing key; repeat (or comma-separate) to rotate.",
        ),
        click.option(
            "--tolerance",
            type=FiniteRange(min=0),
            default=Settings.tolerance,
            show_default=True,
            envvar=_env("TOLERANCE"),
            help="Timestamp tolerance in seconds; 0 disables.",
        ),
        click.option(
            "--max-body",
            type=click.IntRange(min=1),
            default=Settings.max_body,
            show_default=True,
            envvar=_env("MAX_BODY"),
            help="Largest accepted body in bytes (413 above).",
        ),
        _handlers_option,
        click.option(
            "--warehouse",
            type=click.Path(dir_okay=False, path_type=Path),
            envvar=_env("WAREHOUSE"),
            help="Warehouse SQLite file. [default: next to --db]",
        ),
        click.option(
            "--max-attempts",
            type=click.IntRange(min=1),
            default=_RETRY.max_attempts,
            show_default=True,
            envvar=_env("MAX_ATTEMPTS"),
            help="Handler attempts before dead-lettering.",
        ),
        click.option(
            "--retry-base",
            type=FiniteRange(min=0, min_open=True),
            default=_RETRY.base,
            show_default=True,
            envvar=_env("RETRY_BASE"),
            help="First retry delay in seconds (doubles).",
        ),
        click.option(
            "--retry-max-delay",
            type=FiniteRange(min=0, min_open=True),
            default=_RETRY.max_delay,
            show_default=True,
            envvar=_env("RETRY_MAX_DELAY"),
            help="Longest retry delay in seconds.",
        ),
        click.option(
            "--drain-timeout",
            type=FiniteRange(min=0),
            default=Settings.drain_timeout,
            show_default=True,
            envvar=_env("DRAIN_TIMEOUT"),
            help="On SIGTERM, seconds in-flight handlers and Track calls get to finish"
            " before they are cancelled (and retried after their lease).",
        ),
        click.option(
            "--dedupe-days",
            # Shorter, and a retry of Customer.io's could be taken for a new event.
            type=FiniteRange(min=CUSTOMERIO_RETRY_DAYS),
            default=Settings.dedupe_days,
            show_default=True,
            envvar=_env("DEDUPE_DAYS"),
            help="Keep finished events (and dedupe) this long; at least Customer.io's 7 days.",
        ),
        click.option(
            "--max-db-size",
            type=click.IntRange(min=1),
            envvar=_env("MAX_DB_SIZE"),
            help="Cap the inbox file at this many bytes; past it, answer 503.",
        ),
        _policies_option,
        _track_site_id_option,
        _track_api_key_option,
        click.option(
            "--region",
            type=click.Choice(["us", "eu"], case_sensitive=False),
            default=Settings.region,
            show_default=True,
            envvar=_env("REGION"),
            help="Customer.io data center.",
        ),
        click.option("--track-url", envvar=_env("TRACK_URL"), help="Override the Track API URL."),
        click.option(
            "--track-rate",
            type=FiniteRange(min=0, min_open=True),
            default=Settings.track_rate,
            show_default=True,
            envvar=_env("TRACK_RATE"),
            help="Most Track API requests per second (Customer.io's limit is about 1000).",
        ),
        click.option(
            "--dry-run",
            is_flag=True,
            envvar=_env("DRY_RUN"),
            help="Policies record what they would do and call nothing.",
        ),
        click.option(
            "--log-level",
            default="info",
            show_default=True,
            envvar=_env("LOG_LEVEL"),
            type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return store_options(fn)


def _signing_keys(values: tuple[str, ...]) -> tuple[str, ...]:
    """The configured keys; a setting that is present but holds no key is an error, so
    that a blank variable never turns into a generated key Customer.io does not know."""
    keys = split_keys(values)
    if not keys and (values or _env("SIGNING_KEYS") in os.environ):
        raise ConfigError(
            "the signing key setting (--signing-key / CIO_WEBHOOKS_SIGNING_KEYS) is blank: "
            "set the key Customer.io shows for the webhook, or leave it unset to generate one"
        )
    return keys


def _settings(
    data_dir: Path, db: Path | None, *, generate_key: bool, url: str = "", **o: Any
) -> Settings:
    """Settings from the service options.  With ``generate_key`` and no key configured at
    all, the key stored in ``data_dir`` is used (generated and announced, with how to send
    to ``url``, on first use)."""
    keys = _signing_keys(o["signing_keys"])
    if not keys and generate_key:
        key, created = load_or_create_key(data_dir)
        keys = (key,)
        if created:
            _announce_key(key, data_dir, url)
        else:
            stored = data_dir / "signing-key"
            err.print(f"Using the signing key stored in {stored}.", highlight=False, markup=False)
    if o["retry_max_delay"] < o["retry_base"]:
        raise ConfigError(
            f"--retry-max-delay {o['retry_max_delay']:g} is shorter than "
            f"--retry-base {o['retry_base']:g}"
        )
    db_path = _db(data_dir, db)
    handlers = tuple(h for spec in o["handlers"] for h in spec.split(",") if h.strip())
    return Settings(
        db=db_path,
        warehouse=o["warehouse"] or db_path.parent / "warehouse.db",
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
    )


def _program() -> str:
    """How the user can run this command again from here (e.g. ``.venv/bin/cio-webhooks``)."""
    program = Path(sys.argv[0])
    if program.name == "__main__.py":
        return f"{Path(sys.executable).name} -m cio_webhooks"
    try:
        return shlex.quote(str(program.resolve().relative_to(Path.cwd())))
    except ValueError:
        return program.name


def _url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{WEBHOOK_PATH}"


def _announce_key(key: str, data_dir: Path, url: str) -> None:
    # Shown once, on the terminal, when the key is created; never logged.
    send = [f"{_program()} send examples/email_delivered.json --url {shlex.quote(url)}"]
    if data_dir != Path(DEFAULT_DATA_DIR):
        send.append(f"--data-dir {shlex.quote(str(data_dir))}")
    err.print(
        "\n[bold]No signing key was configured, so one was generated[/] and stored in "
        f"{escape(str(data_dir / 'signing-key'))} (mode 0600):\n\n    {key}\n\n"
        "Send a signed test event with (send uses this key by default):\n\n"
        f"    {escape(' '.join(send))}\n\n"
        "For real traffic, set CIO_WEBHOOKS_SIGNING_KEYS to the key Customer.io shows for "
        "your reporting webhook.\n",
        highlight=False,
        soft_wrap=True,
    )


def _fail(exc: CioWebhooksError) -> NoReturn:
    """One line on stderr; exit 1 when the operation failed, 2 for bad configuration."""
    fail(exc, 1 if isinstance(exc, StoreUnavailable | PortUnavailable) else 2)


@click.group(
    context_settings={
        "help_option_names": ["-h", "--help"],
        "max_content_width": 100,
        # per-command options: CIO_WEBHOOKS_<COMMAND>_<OPTION>
        "auto_envvar_prefix": "CIO_WEBHOOKS",
    }
)
@click.version_option(package_name="cio-webhooks")
def main() -> None:
    """Receive Customer.io reporting webhooks durably: verify, store, dedupe, route, retry."""


@main.command()
@click.option("--host", default=DEFAULT_HOST, show_default=True, envvar=_env("HOST"))
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    envvar=_env("PORT"),
    help="0: any free port (the one taken is printed).",
)
@click.option(
    "--no-dispatch",
    is_flag=True,
    envvar=_env("NO_DISPATCH"),
    help="Only receive; run `cio-webhooks worker` separately for handlers.",
)
@click.option(
    "--shutdown-timeout",
    type=FiniteRange(min=0),
    default=10.0,
    show_default=True,
    envvar=_env("SHUTDOWN_TIMEOUT"),
    help="Seconds to drain requests on SIGTERM.",
)
@click.option(
    "--max-header-size",
    type=click.IntRange(min=1024),
    default=ConnectionLimits.max_header_size,
    show_default=True,
    envvar=_env("MAX_HEADER_SIZE"),
    help="Largest request line + headers in bytes (431 above).",
)
@click.option(
    "--read-timeout",
    type=FiniteRange(min=0, min_open=True),
    default=ConnectionLimits.read_timeout,
    show_default=True,
    envvar=_env("READ_TIMEOUT"),
    help="Seconds a client has to send a whole request; slower connections are closed.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=ConnectionLimits.max_connections,
    show_default=True,
    envvar=_env("MAX_CONNECTIONS"),
    help="Open connections; one more closes the oldest idle one (503 when none is idle).",
)
@service_options
def serve(
    host: str,
    port: int,
    no_dispatch: bool,
    shutdown_timeout: float,
    max_header_size: int,
    read_timeout: float,
    max_connections: int,
    data_dir: Path,
    db: Path | None,
    **options: Any,
) -> None:
    """Run the receiver, dispatcher and warehouse loader in one process."""
    import uvicorn

    from ._logging import configure_logging

    configure_logging(options["log_level"])
    limits = fit_open_files(
        ConnectionLimits(
            max_header_size=max_header_size,
            read_timeout=read_timeout,
            max_connections=max_connections,
        )
    )
    try:
        # Bound first: a busy port fails before anything is created, and port 0 becomes
        # the real port in everything printed below.
        sock = listen(host, port)
    except PortUnavailable as exc:
        _fail(exc)
    url = _url(host, sock.getsockname()[1])
    try:
        settings = _settings(data_dir, db, generate_key=True, url=url, **options)
        if no_dispatch:
            settings = Settings(**{**settings.__dict__, "dispatch": False})
        check_storage(settings)
        app = build_app(settings)
    except CioWebhooksError as exc:
        sock.close()
        _fail(exc)
    err.print(
        f"cio-webhooks listening on {url} "
        f"(inbox {settings.db}, warehouse {settings.warehouse}, "
        f"{len(settings.signing_keys)} signing key(s), handlers: {len(settings.handlers)})",
        highlight=False,
        soft_wrap=True,
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


@main.command()
@service_options
@click.option(
    "--create",
    is_flag=True,
    envvar=_env("WORKER_CREATE"),
    help="Create the inbox if there is none (else a missing inbox is an error).",
)
def worker(data_dir: Path, db: Path | None, create: bool, **options: Any) -> None:
    """Run the dispatcher and warehouse loader without the HTTP receiver."""
    from ._logging import configure_logging

    configure_logging(options["log_level"])
    try:
        settings = _settings(data_dir, db, generate_key=False, **options)
    except CioWebhooksError as exc:
        _fail(exc)
    # A mistyped --db must not start a worker on a new, empty inbox that nothing feeds.
    if not create and not settings.db.exists():
        fail(f"no inbox at {settings.db} (start `serve` first, or pass --create)", 2)
    try:
        check_storage(settings)
    except CioWebhooksError as exc:
        _fail(exc)

    async def body() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        err.print(f"cio-webhooks worker on {settings.db}", highlight=False)
        await run_worker(settings, stop)

    _run(body())


@main.command()
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--url",
    default=_url(DEFAULT_HOST, DEFAULT_PORT),
    show_default=True,
    envvar=_env("URL"),
)
@click.option(
    "--signing-key",
    envvar=[_env("SIGNING_KEY"), _env("SIGNING_KEYS")],
    help="[default: the first of CIO_WEBHOOKS_SIGNING_KEYS, else the key serve generated]",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA_DIR,
    show_default=True,
    envvar=_env("DATA_DIR"),
    help="Where serve keeps the key it generated.",
)
@click.option("--timestamp", type=int, help="Sign with this timestamp instead of now.")
def send(
    files: tuple[Path, ...],
    url: str,
    signing_key: str | None,
    data_dir: Path,
    timestamp: int | None,
) -> None:
    """Sign FILES (one event each, sent byte for byte) and POST them to --url."""
    try:
        key = _send_key(signing_key, data_dir)
    except CioWebhooksError as exc:
        _fail(exc)
    failures = 0
    for path in files:
        body = path.read_bytes()
        headers = signed_headers(body, key, timestamp=timestamp or int(time.time()))
        if not url.startswith(("http://", "https://")):
            raise click.BadParameter("must be an http(s) URL", param_hint="--url")
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                status, answer = response.status, response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            status, answer = exc.code, exc.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError) as exc:
            err.print(f"[red]{path}: cannot reach {url}: {getattr(exc, 'reason', exc)}[/]")
            sys.exit(1)
        ok = 200 <= status < 300
        failures += not ok
        click.echo(f"{path}: {status} {answer.strip()}")
    sys.exit(1 if failures else 0)


def _send_key(signing_key: str | None, data_dir: Path) -> str:
    if signing_key is not None:
        return _signing_keys((signing_key,))[0]
    key = stored_key(data_dir)
    if key is None:
        raise ConfigError(
            f"no signing key: pass --signing-key, or run serve once to generate one in {data_dir}"
        )
    return key


@main.group()
def events() -> None:
    """Stored events."""


def _filter(since: str | None, metric: tuple[str, ...], **more: Any) -> EventFilter:
    return EventFilter(
        since=parse_since(since, time.time()) if since else None, kinds=tuple(metric), **more
    )


def export_row(stored: StoredEvent) -> dict[str, Any]:
    """The normalised row of a stored event, whatever its body holds.

    A time outside what an ISO date can express (``timestamp`` 1e30, 2^62, past
    year 9999) exports as null; the raw body keeps the number.  A body that no
    longer parses as an event exports the columns the inbox has, the rest null.
    """
    try:
        event = parse_event(stored.body, received_at=stored.received_at)
    except Exception:  # whatever this version's parser makes of an older body
        row: dict[str, Any] = dict.fromkeys(NORMALISED_FIELDS)
        row.update(
            event_id=stored.event_id,
            object_type=stored.object_type,
            metric=stored.metric,
            received_at=iso(stored.received_at),
        )
    else:
        timestamp = event.timestamp if iso(event.timestamp) is not None else None
        received_at = event.received_at if iso(event.received_at) is not None else None
        row = normalise(dataclasses.replace(event, timestamp=timestamp, received_at=received_at))
    row["backfilled"] = stored.backfilled
    return row


@events.command("export")
@store_options
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option("--since", help="7d, 12h, an ISO date or unix seconds (by receive time).")
@click.option("--metric", multiple=True, help="email.bounced, *.clicked, bounced ...; repeatable.")
@click.option("--output", "-o", type=click.File("w"), default="-", help="File to write [stdout].")
@reading_inbox
async def export(
    inbox: SQLiteStore, fmt: str, since: str | None, metric: tuple[str, ...], output: TextIO
) -> None:
    """Every received event (processed or not) with the normalised fields."""
    where = _filter(since, metric)
    writer = csv.DictWriter(output, NORMALISED_FIELDS) if fmt == "csv" else None
    if writer:
        writer.writeheader()
    total = (await inbox.stats()).events
    with Progress(console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("exporting", total=total)
        async for stored in inbox.iter_events(where):
            row = export_row(stored)
            if writer:
                writer.writerow(row)
            else:
                output.write(json.dumps(row, ensure_ascii=False) + "\n")
            progress.advance(task)


def _event_row(e: StoredEvent) -> dict[str, Any]:
    return {
        "event_id": e.event_id,
        "kind": f"{e.object_type}.{e.metric}",
        "state": e.state.value,
        "attempts": e.attempts,
        "received_at": iso(e.received_at),
        "next_attempt_at": iso(e.next_attempt_at),
        "last_error": e.last_error,
    }


def _stdout() -> Console:
    """A console for tables: the terminal's width (or ``COLUMNS``), else 200 when piped."""
    console = Console()
    return console if console.is_terminal or "COLUMNS" in os.environ else Console(width=200)


def _print_rows(rows: list[dict[str, Any]], as_json: bool, title: str) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        err.print(f"{title}: none")
        return
    body = [["" if v is None else str(v) for v in row.values()] for row in rows]
    print_table(title, list(rows[0]), body)


def fair_widths(wanted: Sequence[int], room: int) -> list[int]:
    """Column widths that fit in ``room``: narrow columns keep their width, and the
    wide ones share what is left equally (max-min fairness), never below 1."""
    if sum(wanted) <= room:
        return list(wanted)
    level, left, pending = 1, room, sorted(wanted)
    for i, want in enumerate(pending):
        share = left // (len(pending) - i)
        if want > share:
            level = max(share, 1)
            break
        left -= want
    return [min(want, level) for want in wanted]


def print_table(
    title: str, header: Sequence[str], body: Sequence[Sequence[str]], *, right: int = 0
) -> None:
    """A table on stdout that shows every column at any terminal width.

    Rich would squeeze columns to nothing or cut them with an ellipsis in a narrow
    terminal; here each column gets a fair width (``fair_widths``) and a longer value
    folds onto more lines.  Cells are text, never markup: data may hold ``[`` and ``]``.
    The columns from index ``right`` on (if not 0) are numbers, aligned right."""
    console = _stdout()
    # Each column costs 2 cells of padding and 1 of border, plus the closing border.
    room = console.width - 3 * len(header) - 1
    # Values first: what is left widens the columns whose header is longer.
    values = [max((len(cells[i]) for cells in body), default=1) for i in range(len(header))]
    widths = fair_widths(values, room)
    more = [max(len(name) - width, 0) for name, width in zip(header, widths, strict=True)]
    extra = fair_widths(more, max(room - sum(widths), 0))
    widths = [w + e for w, e in zip(widths, extra, strict=True)]
    table = Table(title=title)
    for i, (name, width) in enumerate(zip(header, widths, strict=True)):
        justify: JustifyMethod = "right" if right and i >= right else "left"
        table.add_column(name, width=width, overflow="fold", justify=justify)
    for cells in body:
        table.add_row(*map(Text, cells))
    console.print(table)


@main.group()
def dlq() -> None:
    """Dead-lettered events: handlers failed every attempt."""


@dlq.command("list")
@store_options
@click.option("--limit", type=LIMIT, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@reading_inbox
async def dlq_list(inbox: SQLiteStore, limit: int, as_json: bool) -> None:
    where = EventFilter(states=(JobState.DEAD,), limit=limit)
    rows = [_event_row(e) async for e in inbox.iter_events(where)]
    if not as_json:  # in a table, the state is always "dead" and the next attempt is moot
        for row in rows:
            del row["state"], row["next_attempt_at"]
    _print_rows(rows, as_json, "dead letters")


async def _show(inbox: SQLiteStore, event_id: str) -> None:
    stored = await inbox.get_event(event_id)
    if stored is None:
        raise ConfigError(f"no stored event {event_id!r}")
    out = _event_row(stored)
    out["handlers"] = [dataclasses.asdict(r) for r in await inbox.handler_runs(stored.seq)]
    out.update(_payload(stored.body))
    click.echo(json.dumps(out, indent=2, default=str))


def _payload(body: bytes) -> dict[str, Any]:
    """``{"payload": ...}``: the body as JSON.  Bytes that are not UTF-8 show as U+FFFD
    (and a ``payload_note`` says so); a body that is not JSON at all shows as text."""
    text = body.decode("utf-8", "replace")
    note = None if text.encode() == body else "the body is not valid UTF-8; U+FFFD marks bad bytes"
    try:
        payload: Any = json.loads(text)
    except ValueError:
        payload, note = text, "the body is not JSON; shown as text"
    return {"payload": payload} | ({"payload_note": note} if note else {})


@dlq.command("show")
@store_options
@click.argument("event_id", callback=_event_id_arguments)
@reading_inbox
async def dlq_show(inbox: SQLiteStore, event_id: str) -> None:
    """An event with its handler runs, errors and payload (JSON)."""
    await _show(inbox, event_id)


def _ids_or_all(event_ids: tuple[str, ...], all_: bool) -> EventFilter:
    if not event_ids and not all_:
        raise ConfigError("name EVENT_IDs or pass --all")
    return EventFilter(states=(JobState.DEAD,), event_ids=event_ids)


@dlq.command("retry")
@store_options
@click.argument("event_ids", nargs=-1, callback=_event_id_arguments)
@click.option("--all", "all_", is_flag=True, help="Every dead letter.")
@with_inbox
async def dlq_retry(inbox: SQLiteStore, event_ids: tuple[str, ...], all_: bool) -> None:
    """Make dead letters due again; handlers that succeeded are not re-run."""
    n = await inbox.requeue(_ids_or_all(event_ids, all_), now=time.time())
    click.echo(f"requeued {n} event(s)")


@dlq.command("discard")
@store_options
@click.argument("event_ids", nargs=-1, callback=_event_id_arguments)
@click.option("--all", "all_", is_flag=True, help="Every dead letter.")
@with_inbox
async def dlq_discard(inbox: SQLiteStore, event_ids: tuple[str, ...], all_: bool) -> None:
    """Give up on dead letters (they stay stored and exported)."""
    n = await inbox.discard(_ids_or_all(event_ids, all_), now=time.time())
    click.echo(f"discarded {n} event(s)")


@main.group()
def quarantine() -> None:
    """Authentic bodies that were not valid events (or signed too long ago), kept with
    the reason."""


@quarantine.command("list")
@store_options
@click.option("--limit", type=LIMIT, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@reading_inbox
async def quarantine_list(inbox: SQLiteStore, limit: int, as_json: bool) -> None:
    rows = [
        {
            "id": q.id,
            "received_at": iso(q.received_at),
            "event_id": q.event_id,
            "reason": q.reason,
            "bytes": len(q.body),
        }
        for q in await inbox.quarantined(limit=limit)
    ]
    _print_rows(rows, as_json, "quarantine")


@quarantine.command("show")
@store_options
@click.argument("ident", type=QUARANTINE_ID)
@reading_inbox
async def quarantine_show(inbox: SQLiteStore, ident: int) -> None:
    """The reason and the raw body, exactly as received."""
    found = await inbox.quarantined(ident=ident, limit=1)
    if not found:
        raise ConfigError(f"no quarantined body {ident}")
    q = found[0]
    err.print(
        f"id={q.id} received_at={iso(q.received_at)} reason={quote(q.reason)}",
        highlight=False,
        markup=False,
    )
    sys.stdout.buffer.write(q.body + b"\n")


async def _quarantined_bodies(
    inbox: SQLiteStore, idents: tuple[int, ...]
) -> AsyncIterator[Quarantined]:
    """The named bodies (all must exist), or every one, newest first, page by page."""
    if idents:
        named = [await inbox.quarantined(ident=i, limit=1) for i in idents]
        missing = [str(i) for i, found in zip(idents, named, strict=True) if not found]
        if missing:
            raise ConfigError(f"no quarantined body {', '.join(missing)}")
        for found in named:
            yield found[0]
        return
    before: int | None = None
    while page := await inbox.quarantined(limit=500, before_id=before):
        for q in page:
            yield q
        before = page[-1].id


@quarantine.command("reingest")
@store_options
@click.argument("idents", nargs=-1, type=QUARANTINE_ID)
@click.option("--all", "all_", is_flag=True, help="Every quarantined body except stale ones.")
@with_inbox
async def quarantine_reingest(inbox: SQLiteStore, idents: tuple[int, ...], all_: bool) -> None:
    """Read quarantined bodies again (say, after an upgrade).  Those that are events now
    are stored, deduplicated, and dispatched like any event; they leave the quarantine.

    Stale bodies (signed beyond the dedupe horizon) are reingested only when named."""
    if bool(idents) == all_:
        raise ConfigError("name quarantine IDs or pass --all")
    counts = dict.fromkeys(("stored", "duplicate", "still_invalid", "stale_left"), 0)
    async for q in _quarantined_bodies(inbox, idents):
        if all_ and q.reason.startswith(STALE_REASON):
            counts["stale_left"] += 1
            continue
        try:
            event = parse_event(q.body, received_at=q.received_at)
        except InvalidEvent:
            counts["still_invalid"] += 1
            continue
        result = await inbox.release_quarantined(q.id, event)
        counts[result.value] += 1
    click.echo(" ".join(f"{k}={v}" for k, v in counts.items()))


@quarantine.command("purge")
@store_options
@click.option(
    "--before", required=True, help="7d, 12h, an ISO date or unix seconds (by receive time)."
)
@with_inbox
async def quarantine_purge(inbox: SQLiteStore, before: str) -> None:
    """Delete quarantined bodies received before a time."""
    try:
        cutoff = parse_since(before, time.time())
    except ConfigError:
        raise ConfigError(
            f"--before {before!r}: use 7d, 12h, 30m, an ISO date or unix seconds"
        ) from None
    n = await inbox.purge_quarantined(received_before=cutoff)
    click.echo(f"purged {n} quarantined body(ies) received before {before}")


def routing_options(fn: F) -> F:
    """The options that decide which handlers are registered, read from the same
    variables as ``serve`` and ``worker``: ``--handlers`` and the policies."""
    options = [
        _handlers_option,
        _policies_option,
        _track_site_id_option,
        _track_api_key_option,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def registered_routes(
    handlers: tuple[str, ...],
    policies: Path | None,
    track_site_id: str | None,
    track_api_key: str | None,
) -> tuple[Route, ...]:
    """The handlers ``serve``/``worker`` register with these settings, in order: the
    ``--handlers`` routers', then the policies'.  Nothing is run: no Track client, no
    audit file.  Raises ``ConfigError`` for a module that does not load or a bad file."""
    specs = tuple(h.strip() for spec in handlers for h in spec.split(",") if h.strip())
    router = build_router(specs)
    settings = Settings(
        db=Path(),
        warehouse=Path(),
        policies=policies,
        track_site_id=track_site_id,
        track_api_key=track_api_key,
    )
    audit = actions_path(settings)
    if audit is not None:
        config = load_policies(policies) if policies else PolicyConfig(DEFAULT_RULES)
        # Dry-run, so that no client is needed to build the router: the names are the same.
        router.include(
            Policies(
                PolicyConfig(config.rules, dry_run=True), SQLiteLedger(audit, read_only=True), None
            ).router()
        )
    return router.routes


def _patterns(route: Route) -> str:
    return ", ".join(f"{o or '*'}.{m or '*'}" for o, m in route.patterns)


@main.command("handlers")
@routing_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def handlers_command(
    handlers: tuple[str, ...],
    policies: Path | None,
    track_site_id: str | None,
    track_api_key: str | None,
    as_json: bool,
) -> None:
    """The handlers this setup registers (--handlers, then policies): name, patterns,
    whether backfilled events reach it.

    A name is what `replay --handler` and `dlq show` use."""
    try:
        routes = registered_routes(handlers, policies, track_site_id, track_api_key)
    except ConfigError as exc:
        fail(exc, 2)
    rows = [
        {
            "name": r.name,
            "patterns": _patterns(r),
            "backfilled": r.backfilled,
            "async": r.is_async,
        }
        for r in routes
    ]
    if not rows and not as_json:
        err.print("no handlers: pass --handlers module:attr, or set the policies as for serve")
        return
    _print_rows(rows, as_json, "handlers")


@main.command()
@store_options
@click.option("--since", help="7d, 12h, an ISO date or unix seconds (by receive time).")
@click.option("--metric", multiple=True, help="email.bounced, *.clicked, bounced ...; repeatable.")
@click.option(
    "--handler",
    help="Re-run only this handler (a name `cio-webhooks handlers` lists); default: all.",
)
@routing_options
@with_inbox
async def replay(
    inbox: SQLiteStore,
    since: str | None,
    metric: tuple[str, ...],
    handler: str | None,
    handlers: tuple[str, ...],
    policies: Path | None,
    track_site_id: str | None,
    track_api_key: str | None,
) -> None:
    """Re-run handlers for stored events (the running dispatcher picks them up).

    With --handler, only the events that handler takes are queued (backfilled ones only
    if it asked for them), and only it runs
    again (handlers that succeeded stay done); the name must be one that the same
    --handlers/policies settings as the service's register."""
    if since is None and not metric:
        raise ConfigError("replay needs --since and/or --metric, so that it is never accidental")
    where, now = _filter(since, metric), time.time()
    if handler is None:
        n = await inbox.requeue(where, now=now, rerun="*")
        click.echo(f"queued {n} event(s) for replay")
        return
    routes = {
        r.name: r for r in registered_routes(handlers, policies, track_site_id, track_api_key)
    }
    route = routes.get(handler)
    if route is None:
        known = ", ".join(routes) or "none (set --handlers and/or the policies as for serve)"
        raise ConfigError(f"no handler named {handler!r}; registered: {known}")
    backfilled_too = route.backfilled
    ids = [
        e.event_id
        async for e in inbox.iter_events(where)
        if route.matches(e.object_type, e.metric) and (backfilled_too or not e.backfilled)
    ]
    n = 0
    for start in range(0, len(ids), 500):
        chunk = EventFilter(event_ids=tuple(ids[start : start + 500]))
        n += await inbox.requeue(chunk, now=now, rerun=handler)
    click.echo(f"queued {n} event(s) for replay of handler {handler}")


@main.command()
@store_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@reading_inbox
async def stats(inbox: SQLiteStore, as_json: bool) -> None:
    """Counts by state and by object_type.metric."""
    data = await inbox.stats()
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(data), indent=2))
        return
    console = _stdout()
    table = Table(title=f"{data.events} events, {data.quarantined} quarantined")
    table.add_column("state")
    table.add_column("events", justify="right")
    for state, n in data.states.items():
        table.add_row(state, str(n))
    console.print(table)
    kinds = Table(title="by kind")
    kinds.add_column("object_type.metric")
    kinds.add_column("events", justify="right")
    for kind, n in data.kinds.items():
        kinds.add_row(Text(kind), str(n))
    console.print(kinds)


# Imported last, for its side effect: it registers report and reconcile on
# `main`, using the helpers above.
from . import _cli_reporting  # noqa: E402, F401
from ._cli_actions import actions  # noqa: E402

main.add_command(actions)
