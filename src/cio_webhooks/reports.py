"""Delivery reports from the warehouse: unique deliveries per metric, per group.

Counts are of deliveries, not raw events: a delivery opened five times counts
once in ``opened``, and the order its events arrived in does not matter.  Opens
and clicks are split into human and machine: a delivery is human-opened when at
least one of its opens carries none of Customer.io's ``prefetched``/``proxied``/
``synthetic`` flags, machine-opened when it was opened only by machines (likewise
``machine`` for clicks); the two are disjoint, so their sum is the deliveries
opened at all.  A flag that is NULL (Customer.io did not say) counts as human.
Events without a ``delivery_id`` count once each, by ``event_id``.  Person-level
events (``object_type = customer``, e.g. an unsubscribe from the preference
centre with no message behind it) are not deliveries and are left out.

Backfilled events (``reconcile --backfill``, stand-ins built from the App API)
count only for a (delivery, metric) that has no real event: when the real one
arrives after all, the warehouse keeps both rows and the report counts the pair
once, with the real event's time and machine flags (a stand-in open has none, so
it would otherwise count a prefetch as a human open).  This holds whatever the
window or grouping: a real event outside ``since`` still hides its stand-in.

Groups (``by``):

- ``campaign``, ``broadcast``, ``newsletter``: the delivery's ``campaign_id``,
  ``broadcast_id`` or ``newsletter_id``.  Each delivery lands in exactly one
  group, even if some of its events lack the id; deliveries with none go to
  ``(none)`` (for ``by="campaign"`` that is where broadcasts, newsletters and
  transactional messages land).
- ``day``: the UTC date each event *occurred*.  This is activity per day: a
  delivery sent on Monday and opened on Tuesday counts as sent on Monday and
  opened on Tuesday, so a day's open rate mixes mail sent that day and before.
  Events without a time go to ``(none)``.

``since`` (unix seconds) keeps only events that occurred at or after it, with
the same activity meaning: opens in the window of mail sent before it count.

Rates are fractions rounded to 4 places, and None (not 0) when the denominator
is 0: delivery and bounce rates over sent; open, click, spam and unsubscribe
rates over delivered, with opens and clicks by humans only.

Rows come ordered by group: numeric ids numerically, then other ids and dates as
text, ``(none)`` last.  The counting is SQL (one pass grouping the events by
delivery, then one over the deliveries), and the warehouse is opened read-only.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._exceptions import StoreUnavailable
from .events import iso
from .store.sqlite import connect_readonly

__all__ = ["COUNTS", "GROUPINGS", "NONE_GROUP", "RATES", "ReportRow", "delivery_report"]

#: ``by`` -> the SQL expression of the group key (a column of ``events``).
GROUPINGS: dict[str, str] = {
    "campaign": "campaign_id",
    "broadcast": "broadcast_id",
    "newsletter": "newsletter_id",
    "day": "substr(occurred_at, 1, 10)",
}
#: The group of deliveries (or events) without a value for the grouping key.
NONE_GROUP = "(none)"
#: The count fields of ``ReportRow``, in order.
COUNTS = (
    "sent",
    "delivered",
    "opened",
    "machine_opened",
    "clicked",
    "machine_clicked",
    "converted",
    "bounced",
    "spammed",
    "unsubscribed",
    "failed",
)
#: The keys of ``ReportRow.rates``, in order.
RATES = (
    "delivery_rate",
    "open_rate",
    "click_rate",
    "bounce_rate",
    "spam_rate",
    "unsubscribe_rate",
)
# Metrics counted as "the delivery had at least one such event".
_PLAIN = ("sent", "delivered", "converted", "bounced", "spammed", "unsubscribed", "failed")
_MACHINE_OPEN = "coalesce(prefetched, 0) OR coalesce(proxied, 0) OR coalesce(synthetic, 0)"
_MACHINE_CLICK = "coalesce(machine, 0)"
_NEEDED = {"event_id", "object_type", "metric", "occurred_at", "delivery_id", "backfilled"} | {
    "campaign_id",
    "broadcast_id",
    "newsletter_id",
    "prefetched",
    "proxied",
    "synthetic",
    "machine",
}


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


@dataclass(frozen=True)
class ReportRow:
    """One group of the report.  Every count is of unique deliveries."""

    group: str
    sent: int
    delivered: int
    #: Deliveries opened by a human at least once.
    opened: int
    #: Deliveries opened, but only by machines (prefetch, proxy, synthetic).
    machine_opened: int
    #: Deliveries clicked by a human at least once.
    clicked: int
    #: Deliveries clicked, but only by machines.
    machine_clicked: int
    converted: int
    bounced: int
    spammed: int
    unsubscribed: int
    failed: int
    #: The App API's own totals for this group (``report --compare-api``), if asked for;
    #: a total is None when the API does not know the group.
    api: dict[str, int | None] | None = field(default=None)

    @property
    def rates(self) -> dict[str, float | None]:
        """``RATES`` as fractions (0.5 is 50 %); None when the denominator is 0."""
        return {
            "delivery_rate": _ratio(self.delivered, self.sent),
            "open_rate": _ratio(self.opened, self.delivered),
            "click_rate": _ratio(self.clicked, self.delivered),
            "bounce_rate": _ratio(self.bounced, self.sent),
            "spam_rate": _ratio(self.spammed, self.delivered),
            "unsubscribe_rate": _ratio(self.unsubscribed, self.delivered),
        }

    def as_dict(self) -> dict[str, Any]:
        """Flat: group, the counts, the rates, then ``api_<metric>`` when compared."""
        row = asdict(self)
        api = row.pop("api")
        row.update(self.rates)
        if api is not None:
            row.update({f"api_{k}": v for k, v in api.items()})
        return row


def _sql(by: str, filtered: bool) -> str:
    key = GROUPINGS[by]
    flags = ",\n               ".join(
        [
            *(f"max(metric = '{m}') AS {m}" for m in _PLAIN),
            f"max(metric = 'opened' AND NOT ({_MACHINE_OPEN})) AS human_opened",
            "max(metric = 'opened') AS any_opened",
            f"max(metric = 'clicked' AND NOT ({_MACHINE_CLICK})) AS human_clicked",
            "max(metric = 'clicked') AS any_clicked",
        ]
    )
    # A delivery is its delivery_id; an event without one is a delivery of its own.
    delivery = (
        "NULLIF(delivery_id, ''), CASE WHEN NULLIF(delivery_id, '') IS NULL THEN event_id END"
    )
    if by == "day":
        # Activity per day: a delivery counts on every day it had events.
        grp, group_by = f"{key} AS grp", f"grp, {delivery}"
    else:
        # One group per delivery, even if only some of its events carry the id.
        grp, group_by = f"max(NULLIF({key}, '')) AS grp", delivery
    where = "object_type != 'customer'" + (" AND occurred_at >= ?" if filtered else "")
    # A stand-in is ignored once the real event for its (delivery, metric) is there.
    where += """
              AND NOT (coalesce(backfilled, 0) AND EXISTS (
                  SELECT 1 FROM events AS r
                  WHERE r.delivery_id = events.delivery_id AND r.metric = events.metric
                    AND NOT coalesce(r.backfilled, 0)))"""
    return f"""
        WITH deliveries AS (
            SELECT {grp},
               {flags}
            FROM events
            WHERE {where}
            GROUP BY {group_by}
        )
        SELECT grp, sum(sent), sum(delivered), sum(human_opened),
               sum(any_opened AND NOT human_opened), sum(human_clicked),
               sum(any_clicked AND NOT human_clicked), sum(converted), sum(bounced),
               sum(spammed), sum(unsubscribed), sum(failed)
        FROM deliveries GROUP BY grp
    """


def _order(group: str) -> tuple[bool, bool, int, str]:
    numeric = group.isascii() and group.isdigit()
    return (group == NONE_GROUP, not numeric, int(group) if numeric else 0, group)


def delivery_report(
    warehouse: str | Path, *, by: str = "campaign", since: float | None = None
) -> list[ReportRow]:
    """The report for the warehouse file ``warehouse``, one row per group.

    ``by`` is one of ``GROUPINGS``; ``since`` is unix seconds.  Raises
    ``ValueError`` for an unknown ``by`` and ``StoreUnavailable`` when the file
    cannot be read as a warehouse.  Never writes, never creates the file.
    """
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {', '.join(GROUPINGS)}")
    path = Path(warehouse)
    params = () if since is None else (iso(since),)
    try:
        # Never a side file left behind either; it waits while the loader commits.
        with contextlib.closing(connect_readonly(path)) as db:
            columns = {row[1] for row in db.execute("PRAGMA table_info(events)")}
            if missing := _NEEDED - columns:
                raise StoreUnavailable(
                    f"warehouse {path}: not a warehouse, or one made by an older version"
                    f" (events lacks {', '.join(sorted(missing))}); run `cio-webhooks worker`"
                    " once to upgrade it"
                )
            rows = db.execute(_sql(by, since is not None), params).fetchall()
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"warehouse {path}: {exc}") from exc
    report = [_row(NONE_GROUP if r[0] is None else str(r[0]), r[1:]) for r in rows]
    return sorted(report, key=lambda row: _order(row.group))


def _row(group: str, values: tuple[Any, ...]) -> ReportRow:
    c = [int(v or 0) for v in values]  # sum() over no rows is NULL
    return ReportRow(
        group=group,
        sent=c[0],
        delivered=c[1],
        opened=c[2],
        machine_opened=c[3],
        clicked=c[4],
        machine_clicked=c[5],
        converted=c[6],
        bounced=c[7],
        spammed=c[8],
        unsubscribed=c[9],
        failed=c[10],
    )
