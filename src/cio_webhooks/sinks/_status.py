"""How far each sink has loaded, read from the store (any process can ask):
``sinks status`` and ``/metrics`` show the same figures."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .._exposition import label_value
from ..store import Store

__all__ = ["BACKLOG_LIMIT", "SinkStatus", "metric_lines", "sink_statuses"]

#: Rows behind are counted up to this many (a count of millions costs a scan).
BACKLOG_LIMIT = 1_000_000


@dataclass(frozen=True)
class SinkStatus:
    """One sink as the store knows it.

    ``lag_seconds`` is the age of the oldest stored event the sink has not loaded
    (0 when it has loaded everything); ``rows_behind`` counts those events (at most
    ``BACKLOG_LIMIT``, then ``rows_behind_capped``).  ``error`` is the last failure's
    text, None once a write succeeded after it."""

    name: str
    url: str
    seq: int
    rows_behind: int
    rows_behind_capped: bool
    lag_seconds: float
    since_load_seconds: float | None
    failures: int
    error: str | None
    error_at: float | None
    owner: str | None
    leased: bool


async def sink_statuses(store: Store, *, now: float) -> list[SinkStatus]:
    """Every sink the store has a cursor for, by name."""
    found = []
    for state in await store.sink_states():
        behind, oldest = await store.sink_backlog(state.seq, limit=BACKLOG_LIMIT)
        found.append(
            SinkStatus(
                name=state.name,
                url=state.url,
                seq=state.seq,
                rows_behind=behind,
                rows_behind_capped=behind >= BACKLOG_LIMIT,
                lag_seconds=max(0.0, now - oldest) if oldest is not None else 0.0,
                since_load_seconds=(
                    max(0.0, now - state.updated_at) if state.updated_at is not None else None
                ),
                failures=state.failures,
                error=state.error,
                error_at=state.error_at,
                owner=state.owner,
                leased=state.lease_until is not None and state.lease_until > now,
            )
        )
    return found


def metric_lines(statuses: list[SinkStatus], *, now: float) -> list[str]:
    """Prometheus text lines for ``statuses``: lag, rows behind, consecutive failures,
    up (0 while the last attempt failed), the last error (as an info series) and the
    time of the last load."""
    lines: list[str] = []
    series: list[tuple[str, str, Callable[[SinkStatus], float]]] = [
        ("lag_seconds", "gauge", lambda s: s.lag_seconds),
        ("rows_behind", "gauge", lambda s: s.rows_behind),
        ("failures", "gauge", lambda s: s.failures),
        ("up", "gauge", lambda s: 0 if s.error else 1),
        (
            "last_load_timestamp_seconds",
            "gauge",
            lambda s: now - s.since_load_seconds if s.since_load_seconds is not None else 0,
        ),
    ]
    for name, kind, value in series:
        lines.append(f"# TYPE cio_webhooks_sink_{name} {kind}")
        for s in statuses:
            number = value(s)
            shown = int(number) if float(number).is_integer() else round(number, 3)
            lines.append(f'cio_webhooks_sink_{name}{{sink="{label_value(s.name)}"}} {shown}')
    lines.append("# TYPE cio_webhooks_sink_last_error_info gauge")
    for s in statuses:
        if s.error:
            lines.append(
                f'cio_webhooks_sink_last_error_info{{sink="{label_value(s.name)}",'
                f'error="{label_value(s.error[:200])}"}} 1'
            )
    return lines
