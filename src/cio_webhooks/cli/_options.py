"""Options, parsers and decorators shared by the commands.

Every option is also an environment variable (``settings.env``).  The store is named
by ``--store URL`` (``CIO_WEBHOOKS_STORE``), or ``--db PATH`` as the shorthand of
``sqlite:///PATH``, else it is the SQLite inbox in ``--data-dir``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from .._exceptions import ConfigError, StoreUnavailable
from .._service import default_store, sqlite_store
from ..search import parse_since
from ..settings import DATA_DIR, DEFAULT_REGION, HOST, REGIONS, STORE_ENV, WAREHOUSE_FILE, env
from ..store import EventFilter, Store, StoreURL, open_store, parse_store_url

__all__ = [
    "LIMIT",
    "QUARANTINE_ID",
    "FiniteRange",
    "alerts_option",
    "app_api_options",
    "event_filter",
    "event_id_arguments",
    "existing_store",
    "parse_since",
    "reading_store",
    "require_inbox",
    "routing_options",
    "run",
    "store_options",
    "store_url",
    "unavailable",
    "warehouse_beside",
    "with_store",
]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's async body (its errors reach ``main``'s exit-code table)."""
    return asyncio.run(coro)


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


def event_id_arguments(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...] | str
) -> Any:
    """Event ids as the receiver stores them: argv bytes that are not UTF-8 (Python
    reads them as surrogates, which SQLite refuses) become U+FFFD."""

    def text(ident: str) -> str:
        return ident.encode("utf-8", "surrogateescape").decode("utf-8", "replace")

    return text(value) if isinstance(value, str) else tuple(map(text, value))


def event_filter(since: str | None, metric: tuple[str, ...], **more: Any) -> EventFilter:
    """The events of ``--since`` and ``--metric``."""
    return EventFilter(
        since=parse_since(since, time.time()) if since else None, kinds=tuple(metric), **more
    )


def listen_options(
    *,
    prefix: str = "",
    port: int | None,
    host_help: str | None = None,
    port_help: str = "0: any free port (the one taken is printed).",
) -> Callable[[F], F]:
    """``--host`` (default ``HOST``) and ``--port`` (default ``port``; None: no HTTP
    unless given), read from ``CIO_WEBHOOKS_<prefix>HOST`` and ``..._<prefix>PORT``."""

    def decorate(fn: F) -> F:
        fn = click.option(
            "--port",
            type=click.IntRange(0, 65535),
            default=port,
            show_default=port is not None,
            envvar=env(f"{prefix}PORT"),
            help=port_help,
        )(fn)
        return click.option(
            "--host", default=HOST, show_default=True, envvar=env(f"{prefix}HOST"), help=host_help
        )(fn)

    return decorate


# -- the store --------------------------------------------------------------------------
def store_options(fn: F) -> F:
    """``--store``, ``--db`` and ``--data-dir``; the command gets all three."""
    fn = click.option(
        "--store",
        metavar="URL",
        envvar=STORE_ENV,
        help="sqlite:///PATH or postgresql://user@host/db[?schema=NAME]."
        " [default: sqlite DATA_DIR/inbox.db]",
    )(fn)
    fn = click.option(
        "--db",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar=env("DB"),
        help="Shorthand for --store sqlite:///PATH.",
    )(fn)
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=DATA_DIR,
        show_default=True,
        envvar=env("DATA_DIR"),
        help="Where the SQLite inbox, warehouse and generated key live.",
    )(fn)


def store_url(data_dir: Path, db: Path | None, store: str | None) -> StoreURL:
    """The store ``--store``/``--db``/``--data-dir`` name; ConfigError when both
    ``--store`` and ``--db`` are given, the URL names no store, or ``CIO_WEBHOOKS_STORE``
    is set but blank."""
    if store is not None and db is not None:
        raise ConfigError("--store and --db both name the store: pass one of them")
    if store is not None:
        return parse_store_url(store)
    if db is None and STORE_ENV in os.environ:
        # click reads a blank variable as unset: a templated CIO_WEBHOOKS_STORE that came
        # out empty put a receiver on a local SQLite file that no worker reads.
        raise ConfigError(
            f"{STORE_ENV} is set but blank: name the store, or unset it for the SQLite default"
        )
    return sqlite_store(db) if db is not None else default_store(data_dir)


def warehouse_beside(url: StoreURL, data_dir: Path) -> Path:
    """The warehouse file by default: beside a SQLite inbox, else in the data directory."""
    return (url.path.parent if url.path is not None else data_dir) / WAREHOUSE_FILE


def unavailable(url: StoreURL, exc: StoreUnavailable) -> StoreUnavailable:
    """``exc`` saying which store (without its password) when it does not already."""
    text = str(exc)
    return exc if str(url) in text else StoreUnavailable(f"cannot open the store {url}: {text}")


def require_inbox(url: StoreURL) -> None:
    """ConfigError when ``url`` names a SQLite file that does not exist (a server store
    is checked when it is opened)."""
    if url.path is not None and not url.path.is_file():
        raise ConfigError(f"no inbox at {url.path} (pass --store, --db or --data-dir)")


@contextlib.asynccontextmanager
async def existing_store(url: StoreURL, *, readonly: bool) -> AsyncIterator[Store]:
    """The store ``url`` names, opened; it must exist.  A command never creates a store
    (a SQLite file, a PostgreSQL schema), nor writes its tables where there is none: it
    is checked read-only first.  A SQLite file that is missing or not an inbox is a
    ConfigError (exit 2); a server store that cannot be reached, or holds no store, is
    ``StoreUnavailable`` (exit 3)."""
    require_inbox(url)
    reader = open_store(url, readonly=True)
    try:
        await reader.open()  # checks that it is a store, changing nothing
    except StoreUnavailable as exc:
        await reader.close()
        if url.path is not None:
            raise ConfigError(str(exc)) from exc
        raise unavailable(url, exc) from exc
    if readonly:
        try:
            yield reader
        finally:
            await reader.close()
        return
    await reader.close()
    store = open_store(url)
    try:
        await store.open()
    except StoreUnavailable as exc:
        raise unavailable(url, exc) from exc
    try:
        yield store
    finally:
        await store.close()


def _store_command(
    fn: Callable[..., Coroutine[Any, Any, None]], *, readonly: bool
) -> Callable[..., None]:
    @wraps(fn)
    def command(data_dir: Path, db: Path | None, store: str | None, **kwargs: Any) -> None:
        url = store_url(data_dir, db, store)

        async def body() -> None:
            async with existing_store(url, readonly=readonly) as opened:
                await fn(opened, **kwargs)

        run(body())

    return command


def with_store(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async command body with the store of ``store_options`` opened."""
    return _store_command(fn, readonly=False)


def reading_store(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """``with_store`` for commands that only read: the store is opened read-only,
    and the command creates and changes nothing."""
    return _store_command(fn, readonly=True)


# -- handlers and policies --------------------------------------------------------------
# The options that decide which handlers are registered: the same for the service
# (serve, worker) and for the commands that must know its handlers (replay, handlers).
handlers_option = click.option(
    "--handlers",
    multiple=True,
    envvar=env("HANDLERS"),
    help="module:attr of a cio_webhooks.Router; repeatable.",
)
alerts_option = click.option(
    "--alerts",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=env("ALERTS"),
    help="TOML file of alert rules and notifiers. [default: the default rules, log only]",
)
policies_option = click.option(
    "--policies",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=env("POLICIES"),
    help="TOML policy file. [default: the safe defaults, if Track credentials are set]",
)


def _credential(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A blank credential is no credential: a key of " " must not turn live policies on."""
    return (value or "").strip() or None


track_site_id_option = click.option(
    "--track-site-id", envvar=env("TRACK_SITE_ID"), callback=_credential, help="Track API site id."
)
track_api_key_option = click.option(
    "--track-api-key",
    envvar=env("TRACK_API_KEY"),
    callback=_credential,
    help="Track API key (prefer the env var: flags show in ps).",
)


def routing_options(fn: F) -> F:
    """The options that decide which handlers are registered, read from the same
    variables as ``serve`` and ``worker``: ``--handlers`` and the policies."""
    options = [handlers_option, policies_option, track_site_id_option, track_api_key_option]
    for option in reversed(options):
        fn = option(fn)
    return fn


def app_api_options(fn: F) -> F:
    """The Customer.io App API (``report --compare-api``, ``reconcile``)."""
    options = [
        click.option(
            "--app-api-key",
            envvar=env("APP_API_KEY"),
            help="Customer.io App API key (prefer the env var).",
        ),
        click.option(
            "--region",
            type=click.Choice(REGIONS),
            default=DEFAULT_REGION,
            show_default=True,
            envvar=env("REGION"),
        ),
        click.option("--app-url", envvar=env("APP_URL"), help="Override the App API URL."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn
