"""Routing events to handlers.

Handlers are plain functions, sync or async, that take one ``Event``.  They are
registered on a ``Router`` for patterns on ``object_type.metric``::

    router = Router()

    @router.on("email.bounced", "*.spammed")
    async def stop_mailing(event: Event) -> None: ...

A pattern is ``object_type.metric`` where either side may be ``*``; ``*`` alone
matches everything and a bare metric (``bounced``) means ``*.bounced``.  A
handler is identified by its name (default ``module.qualname``): the dispatcher
records success per (event, handler name), so a retry re-runs only the handlers
that failed.  Keep names stable across deploys.

Events that ``reconcile --backfill`` recovered happened long ago and were acted on
(or deliberately not) back then: a handler sees them only if it asks, with
``backfilled=True``; policies never do.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from ._exceptions import ConfigError
from .events import Event

__all__ = ["Handler", "Route", "Router", "load_router", "parse_pattern"]

Handler = Callable[[Event], Awaitable[None] | None]
H = TypeVar("H", bound=Handler)


def parse_pattern(pattern: str) -> tuple[str | None, str | None]:
    """``(object_type, metric)`` for a pattern; None stands for ``*``."""
    pattern = pattern.strip()
    if not pattern:
        raise ConfigError("empty event pattern")
    if "." in pattern:
        obj, _, metric = pattern.partition(".")
    else:
        obj, metric = "*", pattern
    if not obj or not metric or "." in metric:
        raise ConfigError(f"bad event pattern {pattern!r}: use object_type.metric, * for any")
    return (None if obj == "*" else obj, None if metric == "*" else metric)


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    handler: Handler
    patterns: tuple[tuple[str | None, str | None], ...]
    is_async: bool
    backfilled: bool = False  # also run for backfilled events (default: never)

    def matches(self, object_type: str, metric: str, *, backfilled: bool = False) -> bool:
        if backfilled and not self.backfilled:
            return False
        return any(
            (o is None or o == object_type) and (m is None or m == metric) for o, m in self.patterns
        )


class Router:
    """An ordered set of named handlers with the event patterns they want."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self._cache: dict[tuple[str, str, bool], tuple[Route, ...]] = {}

    def add(
        self, handler: Handler, *patterns: str, name: str | None = None, backfilled: bool = False
    ) -> None:
        """Run ``handler`` for events matching any of ``patterns``; for backfilled
        events too only when ``backfilled`` is true."""
        if not patterns:
            raise ConfigError("a handler needs at least one event pattern")
        qualname = getattr(handler, "__qualname__", type(handler).__qualname__)
        route_name = name or f"{handler.__module__}.{qualname}"
        if route_name in self._routes:
            raise ConfigError(f"handler name {route_name!r} is registered twice")
        self._routes[route_name] = Route(
            name=route_name,
            handler=handler,
            patterns=tuple(parse_pattern(p) for p in patterns),
            # A callable object with ``async def __call__`` is async too.
            is_async=inspect.iscoroutinefunction(handler)
            or inspect.iscoroutinefunction(type(handler).__call__),
            backfilled=backfilled,
        )
        self._cache.clear()

    def on(
        self, *patterns: str, name: str | None = None, backfilled: bool = False
    ) -> Callable[[H], H]:
        """Decorator form of ``add``."""

        def register(handler: H) -> H:
            self.add(handler, *patterns, name=name, backfilled=backfilled)
            return handler

        return register

    def include(self, other: Router) -> None:
        for route in other.routes:
            if route.name in self._routes:
                raise ConfigError(f"handler name {route.name!r} is registered twice")
            self._routes[route.name] = route
        self._cache.clear()

    @property
    def routes(self) -> tuple[Route, ...]:
        return tuple(self._routes.values())

    def match(
        self, object_type: str, metric: str, *, backfilled: bool = False
    ) -> tuple[Route, ...]:
        """The routes to run for an event of this kind (a ``backfilled`` one: only
        those registered with ``backfilled=True``)."""
        key = (object_type, metric, backfilled)
        found = self._cache.get(key)
        if found is None:
            found = tuple(
                r
                for r in self._routes.values()
                if r.matches(object_type, metric, backfilled=backfilled)
            )
            self._cache[key] = found
        return found


def load_router(spec: str) -> Router:
    """Import ``module:attr``: a ``Router``, or a callable returning one.

    The module is looked up in the current directory first, as uvicorn and
    ``python -m`` do: ``--handlers myapp.hooks:router`` works from the project's
    root without setting ``PYTHONPATH``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--handlers {spec!r}: expected module:attribute")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--handlers {spec!r}: cannot import {module_name!r}: {exc}") from exc
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"--handlers {spec!r}: {module_name} has no {attr!r}") from None
    if not isinstance(target, Router) and callable(target):
        target = target()
    if not isinstance(target, Router):
        raise ConfigError(f"--handlers {spec!r} is not a cio_webhooks.Router")
    return target
