"""``ui``: the dashboard alone, on an existing store (``serve`` and ``worker --port``
serve it too), and the dashboard's access options every one of them takes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import click

from .._exceptions import ConfigError
from .._metrics import MetricSources, store_lines
from .._server import listen
from .._service import build_ui, open_service_store, report_sink
from ..settings import DEFAULT_UI_USER, UI_PATH, UI_PORT, Settings, env
from ._errors import err
from ._options import (
    F,
    existing_store,
    listen_options,
    policies_option,
    run,
    store_options,
    store_url,
    warehouse_beside,
)

__all__ = ["check_ui_bind", "serve_dashboard", "ui_command", "ui_options", "ui_settings"]

log = logging.getLogger("cio_webhooks.ui")


def _secret(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """The password or token as given (spaces are part of it).  One that is set but
    blank (a templated variable that came out empty, which click reads as unset) is
    an error: it must neither become a password of "" nor open the dashboard."""
    variable = param.envvar if isinstance(param.envvar, str) else None
    if (value is not None and not value.strip()) or (
        value is None and variable and variable in os.environ
    ):
        name = param.opts[0] if param.opts else param.name
        raise ConfigError(f"the dashboard {name} setting ({variable}) is set but blank")
    return value


def ui_options(fn: F) -> F:
    """``--ui-user``, ``--ui-password``, ``--ui-token`` (``CIO_WEBHOOKS_UI_*``)."""
    options = [
        click.option(
            "--ui-user",
            default=DEFAULT_UI_USER,
            show_default=True,
            envvar=env("UI_USER"),
            help="Dashboard user name (with --ui-password).",
        ),
        click.option(
            "--ui-password",
            envvar=env("UI_PASSWORD"),
            callback=_secret,
            help="Dashboard password (prefer the env var: flags show in ps).",
        ),
        click.option(
            "--ui-token",
            envvar=env("UI_TOKEN"),
            callback=_secret,
            help="Dashboard token: typed at the login, or sent as Authorization: Bearer.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def ui_settings(o: dict[str, Any]) -> dict[str, Any]:
    """The ``Settings`` fields of ``ui_options``' values."""
    return {
        "ui_user": o["ui_user"] or DEFAULT_UI_USER,
        "ui_password": o["ui_password"],
        "ui_token": o["ui_token"],
    }


def check_ui_bind(settings: Settings, host: str) -> None:
    """``ConfigError`` when the dashboard would be served to other machines without
    credentials."""
    from ..ui import is_loopback  # the dashboard's modules load only where it is served

    if not (settings.ui_password or settings.ui_token) and not is_loopback(host):
        raise ConfigError(
            f"the dashboard shows personal data: serving it on {host} needs credentials"
            " (set CIO_WEBHOOKS_UI_PASSWORD or CIO_WEBHOOKS_UI_TOKEN, or bind 127.0.0.1)"
        )


def dashboard_site(settings: Settings, host: str, *, metrics: MetricSources | None = None) -> Any:
    """A Starlette app serving the dashboard at ``UI_PATH`` (``/`` redirects there),
    ``/healthz`` and, with ``metrics`` (the worker's in-process series), ``/metrics``
    with the store's series after them (a worker has no receiver counters); its
    lifespan opens and closes a store of its own on ``settings``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
    from starlette.routing import BaseRoute, Mount, Route

    store = open_service_store(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await store.open()
        try:
            yield
        finally:
            await store.close()

    async def home(_: Request) -> Response:
        return RedirectResponse(f"{UI_PATH}/", status_code=307)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics_page(_: Request) -> Response:
        lines = [*(metrics.lines() if metrics else []), *await store_lines(store, now=time.time())]
        return PlainTextResponse("\n".join(lines) + "\n")

    routes: list[BaseRoute] = [Route("/", home), Route("/healthz", healthz)]
    if metrics is not None:
        routes.append(Route("/metrics", metrics_page))
    routes.append(Mount(UI_PATH, app=build_ui(settings, store, bind=host)))
    return Starlette(routes=routes, lifespan=lifespan)


async def serve_dashboard(
    settings: Settings,
    host: str,
    sock: socket.socket,
    stop: asyncio.Event,
    metrics: MetricSources,
) -> None:
    """``worker --port``: the dashboard, /metrics and /healthz on ``sock`` until ``stop``."""
    err.print(
        f"dashboard on {_url(host, sock)} (and /metrics, /healthz)",
        highlight=False,
        markup=False,
    )
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn in a loop that already handles SIGTERM and SIGINT (the worker's)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    server = Server(_config(dashboard_site(settings, host, metrics=metrics)))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    await stop.wait()
    server.should_exit = True
    await serving


def _url(host: str, sock: socket.socket) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{sock.getsockname()[1]}{UI_PATH}/"


def _config(app: Any) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        lifespan="on",
        access_log=False,
        log_config=None,
        log_level="warning",
        server_header=False,
    )


@click.command("ui")
@store_options
@listen_options(prefix="UI_", port=UI_PORT)
@click.option(
    "--sink",
    "sinks",
    multiple=True,
    envvar=env("SINKS"),
    help="The SQL sink the Deliverability page reads (sqlite:///PATH or postgresql://...)."
    " [default: the service's first SQLite/PostgreSQL sink, else --warehouse]",
)
@click.option(
    "--warehouse",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=env("WAREHOUSE"),
    help="Warehouse SQLite file. [default: next to the SQLite inbox, else in DATA_DIR]",
)
@click.option("--pii-salt", envvar=env("PII_SALT"), help="As for serve (sinks with email=hash).")
@policies_option
@click.option(
    "--actions-db",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=env("ACTIONS_DB"),
    help="The policies' ledger file of a SQLite store. [default: actions.db next to the inbox]",
)
@ui_options
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    envvar=env("LOG_LEVEL"),
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
def ui_command(
    data_dir: Path,
    db: Path | None,
    store: str | None,
    host: str,
    port: int,
    sinks: tuple[str, ...],
    warehouse: Path | None,
    pii_salt: str | None,
    policies: Path | None,
    actions_db: Path | None,
    log_level: str,
    **options: Any,
) -> None:
    """Serve the dashboard alone on an existing store: overview, deliverability, event
    search, dead letters (retry, discard, re-ingest), policies.  It receives nothing."""
    from .._logging import configure_logging

    configure_logging(log_level)
    url = store_url(data_dir, db, store)
    settings = Settings(
        store=url,
        warehouse=warehouse or warehouse_beside(url, data_dir),
        sinks=tuple(u.strip() for spec in sinks for u in spec.split(",") if u.strip()),
        pii_salt=pii_salt or None,
        policies=policies,
        actions_db=actions_db,
        **ui_settings(options),
    )
    check_ui_bind(settings, host)
    sink = report_sink(settings)  # a bad sink URL fails here, before listening

    async def check() -> None:  # the store must exist: the dashboard creates none
        async with existing_store(url, readonly=True):
            pass

    run(check())
    sock = listen(host, port)
    err.print(
        f"cio-webhooks dashboard on {_url(host, sock)} "
        f"(store {url}, deliverability from {sink or 'no SQL sink'})",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )
    import uvicorn

    uvicorn.Server(_config(dashboard_site(settings, host))).run(sockets=[sock])
