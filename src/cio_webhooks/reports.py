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

- ``campaign``, ``broadcast``, ``newsletter``, ``transactional``: the delivery's
  ``campaign_id``, ``broadcast_id``, ``newsletter_id`` or
  ``transactional_message_id``.  Each delivery lands in exactly one
  group, even if some of its events lack the id; deliveries with none go to
  ``(none)`` (for ``by="campaign"`` that is where broadcasts, newsletters and
  transactional messages land).
- ``domain``: the recipient's domain (``gmail.com``), lower-cased, from the
  ``recipient`` column, else ``email``; ``(none)`` without an address, and for
  every delivery of a sink that hashes addresses.
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

The same query runs on a SQLite warehouse and on a PostgreSQL sink's ``events``
(``delivery_report_for``): one template, with the few pieces that differ (the UTC day
of a timestamp, the ``since`` bound, byte-wise text comparison) per dialect, so both
give the same rows for the same events.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._exceptions import ConfigError, StoreUnavailable
from .events import iso
from .store.sqlite import connect_readonly

if TYPE_CHECKING:
    from .sinks import SinkURL

__all__ = [
    "COUNTS",
    "GROUPINGS",
    "NONE_GROUP",
    "RATES",
    "ReportRow",
    "delivery_event_ids",
    "delivery_report",
    "delivery_report_for",
]

#: ``by`` -> the SQL expression of the group key (a column of ``events``; ``day`` and
#: ``domain`` differ by dialect: see ``_Dialect``).
GROUPINGS: dict[str, str] = {
    "campaign": "campaign_id",
    "broadcast": "broadcast_id",
    "newsletter": "newsletter_id",
    "transactional": "transactional_message_id",
    "domain": "(the recipient's domain)",
    "day": "substr(occurred_at, 1, 10)",
}
#: The address a delivery went to: the recipient, else the person's email.
_ADDRESS = "COALESCE(NULLIF(recipient, ''), email)"
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
# ``IS TRUE``, not coalesce(flag, 0): the same in SQLite (0/1 integers) and PostgreSQL
# (booleans), NULL counting as not set.
_MACHINE_OPEN = "prefetched IS TRUE OR proxied IS TRUE OR synthetic IS TRUE"
_MACHINE_CLICK = "machine IS TRUE"
_NEEDED = {"event_id", "object_type", "metric", "occurred_at", "delivery_id", "backfilled"} | {
    "campaign_id",
    "broadcast_id",
    "newsletter_id",
    "transactional_message_id",
    "recipient",
    "email",
    "prefetched",
    "proxied",
    "synthetic",
    "machine",
}


@dataclass(frozen=True)
class _Dialect:
    """What differs between the warehouses the report reads; the counting does not."""

    #: The UTC date of ``occurred_at`` as ``YYYY-MM-DD`` text.
    day: str
    #: The ``since`` bound, compared with ``occurred_at`` (bound to ISO text).
    since: str
    #: Appended to a text value so that max() compares bytes, as SQLite does.
    binary: str
    #: The position of ``@`` in a text (1-based, 0 when absent).
    find_at: str

    @property
    def domain(self) -> str:
        """The lower-cased domain of the delivery's address; NULL when it has none
        (no address, or a hashed one: ``email=hash`` sinks group every message there)."""
        at = self.find_at.format(_ADDRESS)
        return f"CASE WHEN {at} > 0 THEN lower(substr({_ADDRESS}, {at} + 1)) END"


_SQLITE = _Dialect(day="substr(occurred_at, 1, 10)", since="?", binary="", find_at="instr({}, '@')")
_POSTGRES = _Dialect(
    day="to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    since="CAST(%s AS timestamptz)",
    binary=' COLLATE "C"',
    find_at="strpos({}, '@')",
)


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


def _flag(condition: str) -> str:
    return f"max(CASE WHEN {condition} THEN 1 ELSE 0 END)"


def _sql(by: str, filtered: bool, table: str = "events", dialect: _Dialect = _SQLITE) -> str:
    """The report query over ``table`` (a quoted, qualified name) in ``dialect``."""
    key = {"day": dialect.day, "domain": dialect.domain}.get(by, GROUPINGS[by])
    conditions = {
        **{m: f"metric = '{m}'" for m in _PLAIN},
        "human_opened": f"metric = 'opened' AND NOT ({_MACHINE_OPEN})",
        "any_opened": "metric = 'opened'",
        "human_clicked": f"metric = 'clicked' AND NOT ({_MACHINE_CLICK})",
        "any_clicked": "metric = 'clicked'",
    }
    flags = ",\n               ".join(f"{_flag(c)} AS {name}" for name, c in conditions.items())
    # A delivery is its delivery_id; an event without one is a delivery of its own.
    delivery = (
        "NULLIF(delivery_id, ''), CASE WHEN NULLIF(delivery_id, '') IS NULL THEN event_id END"
    )
    if by == "day":
        # Activity per day: a delivery counts on every day it had events.
        grp, group_by = f"{key} AS grp", f"grp, {delivery}"
    else:
        # One group per delivery, even if only some of its events carry the id.
        grp, group_by = f"max(NULLIF({key}, ''){dialect.binary}) AS grp", delivery
    where = "object_type != 'customer'"
    if filtered:
        where += f" AND occurred_at >= {dialect.since}"
    # A stand-in is ignored once the real event for its (delivery, metric) is there.
    where += f"""
              AND NOT (backfilled IS TRUE AND EXISTS (
                  SELECT 1 FROM {table} AS r
                  WHERE r.delivery_id = events.delivery_id AND r.metric = events.metric
                    AND r.backfilled IS NOT TRUE))"""
    return f"""
        WITH per_delivery AS (
            SELECT {grp},
               {flags}
            FROM {table} AS events
            WHERE {where}
            GROUP BY {group_by}
        )
        SELECT grp, sum(sent), sum(delivered), sum(human_opened),
               sum(any_opened - human_opened), sum(human_clicked),
               sum(any_clicked - human_clicked), sum(converted), sum(bounced),
               sum(spammed), sum(unsubscribed), sum(failed)
        FROM per_delivery GROUP BY grp
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
    return _sqlite_report(Path(warehouse), "events", by, since)


def delivery_report_for(
    url: SinkURL, *, by: str = "campaign", since: float | None = None
) -> list[ReportRow]:
    """The report over the ``events`` table of the SQL sink ``url`` (``sqlite`` or
    ``postgresql``, its ``table_prefix`` and schema honoured): the same rows as
    ``delivery_report`` gives for the same events.  Read-only.  Raises ``ValueError``
    for an unknown ``by``, ``ConfigError`` for a sink kind without SQL here, and
    ``StoreUnavailable`` when the warehouse cannot be read (errors show the URL
    masked, never its password)."""
    if url.kind == "sqlite":
        return _sqlite_report(url.path, f"{url.table_prefix}events", by, since)
    if url.kind == "postgresql":
        return _postgres_report(url, by, since)
    raise ConfigError(f"report reads sqlite and postgresql sinks, not {url.kind} ({url})")


def delivery_event_ids(url: SinkURL, delivery_id: str, *, limit: int = 100) -> list[str]:
    """The ``event_id`` s the SQL sink ``url`` holds for one delivery, newest first (by
    the time they occurred), at most ``limit``: the dashboard's "other events of this
    delivery", read from the warehouse's ``delivery_id`` index instead of a scan of the
    store.  Read-only; raises like ``delivery_report_for``."""
    query = "SELECT event_id FROM {} WHERE delivery_id = {} ORDER BY occurred_at DESC LIMIT {}"
    table = f"{url.table_prefix}events"
    if url.kind == "sqlite":
        with _sqlite_warehouse(url.path) as db:
            found = db.execute(query.format(f'"{table}"', "?", "?"), (delivery_id, limit))
            return [row[0] for row in found.fetchall()]
    if url.kind == "postgresql":
        from psycopg import sql

        name = sql.Identifier(url.options["schema"], table)
        statement = sql.SQL(query).format(name, sql.Placeholder(), sql.Placeholder())
        with _postgres_warehouse(url) as conn:
            return [str(row[0]) for row in conn.execute(statement, [delivery_id, limit])]
    raise ConfigError(f"the dashboard reads sqlite and postgresql sinks, not {url.kind} ({url})")


@contextlib.contextmanager
def _sqlite_warehouse(path: Path) -> Iterator[sqlite3.Connection]:
    """The warehouse file, read-only (never a side file left behind either; a read
    waits while the loader commits); its errors as ``StoreUnavailable``."""
    try:
        with contextlib.closing(connect_readonly(path)) as db:
            yield db
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"warehouse {path}: {exc}") from exc


@contextlib.contextmanager
def _postgres_warehouse(url: SinkURL) -> Iterator[Any]:
    """A read-only session on the PostgreSQL sink ``url``; its errors as
    ``StoreUnavailable`` naming the sink without its password."""
    import psycopg

    from .sinks.postgres import CONNECT_TIMEOUT, scrub

    try:
        with psycopg.connect(url.target, connect_timeout=CONNECT_TIMEOUT) as conn:
            conn.read_only = True  # every transaction of this session
            yield conn
    except (psycopg.Error, OSError) as exc:
        raise StoreUnavailable(scrub(f"warehouse {url}: {exc}", url.target)) from exc


def _check_by(by: str) -> None:
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {', '.join(GROUPINGS)}")


def _lacking(where: str, columns: set[str]) -> StoreUnavailable | None:
    if missing := _NEEDED - columns:
        return StoreUnavailable(
            f"warehouse {where}: not a warehouse, or one made by an older version"
            f" (events lacks {', '.join(sorted(missing))}); run `cio-webhooks worker`"
            " once to upgrade it"
        )
    return None


def _sqlite_report(path: Path, table: str, by: str, since: float | None) -> list[ReportRow]:
    _check_by(by)
    params = () if since is None else (iso(since),)
    with _sqlite_warehouse(path) as db:
        # table_prefix is letters, digits and _ (SinkURL checks): safe to quote.
        columns = {row[1] for row in db.execute(f'PRAGMA table_info("{table}")')}
        if error := _lacking(str(path), columns):
            raise error
        rows = db.execute(_sql(by, since is not None, f'"{table}"'), params).fetchall()
    return _report(rows)


def _postgres_report(url: SinkURL, by: str, since: float | None) -> list[ReportRow]:
    _check_by(by)
    from psycopg import sql

    schema, name = url.options["schema"], f"{url.table_prefix}events"
    with _postgres_warehouse(url) as conn:
        cur = conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = %s",
            [schema, name],
        )
        if error := _lacking(str(url), {row[0] for row in cur.fetchall()}):
            raise error
        table = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))
        query = _sql(by, since is not None, table.as_string(conn), _POSTGRES)
        rows = conn.execute(query.encode(), None if since is None else [iso(since)]).fetchall()
    return _report(rows)


def _report(rows: list[Any]) -> list[ReportRow]:
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
