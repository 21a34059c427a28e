"""Reading the figures the rules judge, with the dashboard's definitions (``vitals``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..store import Store
from ..vitals import EmailRates, email_rates, read_vitals, track_failures
from ._config import AlertConfig, BounceRate, ComplaintRate, SignatureFailures, TrackFailures
from ._rules import Ratio, Snapshot

__all__ = ["RatesReader", "read_snapshot"]

#: Reads the email rates of a window (seconds) at a time: ``vitals.email_rates``, or a
#: cache of it (``Alerter``).
RatesReader = Callable[[float, float], Awaitable[EmailRates]]


async def read_snapshot(
    store: Store,
    config: AlertConfig,
    *,
    now: float,
    policies: bool = True,
    rates: RatesReader | None = None,
) -> Snapshot:
    """The figures of ``config``'s enabled rules at ``now``, read from ``store``
    through ``vitals`` (one definition of each figure, shared with the dashboard).

    ``policies`` False: no policy runs, so the Track failures are not read (a SQLite
    store's ledger file would be created only to be found empty).  ``rates(window,
    now)`` reads email rates (default: ``vitals.email_rates`` on ``store``)."""
    vitals = await read_vitals(store, now=now)
    enabled = {rule.name: rule for rule in config.enabled}
    gauges = vitals.gauges

    rejected = None
    if isinstance(sig := enabled.get("signature_failures"), SignatureFailures):
        rejected = vitals.rejected(sig.within / 60.0)

    windows: dict[float, EmailRates] = {}

    async def read(window: float, at: float) -> EmailRates:
        return await email_rates(store, now=at, window=window)

    async def rates_of(window: float) -> EmailRates:
        if window not in windows:
            windows[window] = await (rates or read)(window, now)
        return windows[window]

    complaints = bounces = None
    if isinstance(rule := enabled.get("complaint_rate"), ComplaintRate):
        r = await rates_of(rule.window)
        complaints = Ratio(r.spammed, r.delivered, r.complaint_rate, r.read_at)
    if isinstance(bounce := enabled.get("bounce_rate"), BounceRate):
        r = await rates_of(bounce.window)
        bounces = Ratio(r.bounced, r.attempted, r.bounce_rate, r.read_at)

    failed = None
    if policies and isinstance(track := enabled.get("track_failures"), TrackFailures):
        failed = await track_failures(store, now=now, window=track.within)

    return Snapshot(
        now=now,
        last_received_at=vitals.last_received_at,
        rejected_signatures=rejected,
        dead_letters=gauges.dead_letters if gauges is not None else None,
        oldest_backlog_age=gauges.oldest_backlog_age_seconds if gauges is not None else None,
        sink_lags={s.name: s.lag_seconds for s in vitals.sinks},
        complaints=complaints,
        bounces=bounces,
        track_failures=failed,
    )
