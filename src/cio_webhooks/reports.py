"""Delivery reports from the warehouse: unique deliveries per metric, per group.

Counts are of deliveries, not raw events: a delivery opened five times counts
once in ``opened``.  Opens and clicks are split into human and machine: a
delivery is human-opened when at least one of its opens carries none of
Customer.io's ``prefetched``/``proxied``/``synthetic`` flags, machine-opened when
it was opened only by machines (likewise ``machine`` for clicks).  Events
without a ``delivery_id`` count once each.  Person-level events
(``object_type = customer``) are not deliveries and are left out.

Groups: ``campaign`` (campaign_id), ``broadcast``, ``newsletter``, or ``day`` (the
UTC date the event occurred); events without the key are grouped as ``(none)``.
``since`` filters on when the event occurred.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .events import iso

__all__ = ["COUNTS", "GROUPINGS", "ReportRow", "delivery_report"]

GROUPINGS = {
    "campaign": "campaign_id",
    "broadcast": "broadcast_id",
    "newsletter": "newsletter_id",
    "day": "substr(occurred_at, 1, 10)",
}
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
_HUMAN_OPEN = (
    "metric = 'opened' AND NOT (coalesce(prefetched, 0) OR coalesce(proxied, 0)"
    " OR coalesce(synthetic, 0))"
)
_HUMAN_CLICK = "metric = 'clicked' AND NOT coalesce(machine, 0)"


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


@dataclass(frozen=True)
class ReportRow:
    group: str
    sent: int
    delivered: int
    opened: int  # human
    machine_opened: int
    clicked: int  # human
    machine_clicked: int
    converted: int
    bounced: int
    spammed: int
    unsubscribed: int
    failed: int
    #: The App API's own totals for this group (``report --compare-api``), if asked for.
    api: dict[str, int] | None = field(default=None)

    @property
    def rates(self) -> dict[str, float | None]:
        return {
            "delivery_rate": _ratio(self.delivered, self.sent),
            "open_rate": _ratio(self.opened, self.delivered),
            "click_rate": _ratio(self.clicked, self.delivered),
            "bounce_rate": _ratio(self.bounced, self.sent),
            "spam_rate": _ratio(self.spammed, self.delivered),
            "unsubscribe_rate": _ratio(self.unsubscribed, self.delivered),
        }

    def as_dict(self) -> dict[str, Any]:
        row = asdict(self)
        api = row.pop("api")
        row.update(self.rates)
        if api is not None:
            row.update({f"api_{k}": v for k, v in api.items()})
        return row


def delivery_report(
    warehouse: Path, *, by: str = "campaign", since: float | None = None
) -> list[ReportRow]:
    """The report, one row per group, ordered by group.  Reads the warehouse read-only."""
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {', '.join(GROUPINGS)}")
    key = GROUPINGS[by]
    per_delivery = ",\n".join(
        [
            *(
                f"max(metric = '{m}') AS {m}"
                for m in (
                    "sent",
                    "delivered",
                    "converted",
                    "bounced",
                    "spammed",
                    "unsubscribed",
                    "failed",
                )
            ),
            f"max({_HUMAN_OPEN}) AS human_opened",
            "max(metric = 'opened') AS any_opened",
            f"max({_HUMAN_CLICK}) AS human_clicked",
            "max(metric = 'clicked') AS any_clicked",
        ]
    )
    sql = f"""
        WITH deliveries AS (
            SELECT coalesce({key}, '(none)') AS grp,
                   coalesce(delivery_id, 'event:' || event_id) AS delivery,
                   {per_delivery}
            FROM events
            WHERE object_type != 'customer' AND (? IS NULL OR occurred_at >= ?)
            GROUP BY grp, delivery
        )
        SELECT grp, sum(sent), sum(delivered), sum(human_opened),
               sum(any_opened AND NOT human_opened), sum(human_clicked),
               sum(any_clicked AND NOT human_clicked), sum(converted), sum(bounced),
               sum(spammed), sum(unsubscribed), sum(failed)
        FROM deliveries GROUP BY grp ORDER BY grp
    """
    cutoff = iso(since)
    with sqlite3.connect(f"file:{warehouse}?mode=ro", uri=True) as db:
        rows = db.execute(sql, (cutoff, cutoff)).fetchall()
    return [_row(str(r[0]), [int(v or 0) for v in r[1:]]) for r in rows]


def _row(group: str, c: list[int]) -> ReportRow:
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
