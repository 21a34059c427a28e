"""``PostgresStore`` (being built: see issue 7)."""

from __future__ import annotations

from typing import Any

from ..._exceptions import ConfigError


class PostgresStore:
    def __init__(self, dsn: str, *, schema: str, readonly: bool = False) -> None:
        raise ConfigError("the PostgreSQL store is not built yet")

    def __getattr__(self, name: str) -> Any:  # pragma: no cover - placeholder
        raise AttributeError(name)
