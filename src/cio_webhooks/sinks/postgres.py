"""The PostgreSQL warehouse sink: ``events``, ``deliveries`` and the channel views in a
schema of their own (``?schema=``, default ``cio_warehouse``; table names get the URL's
``?table_prefix=``).  The store's own server and database work: the schemas differ.

Types: ``timestamp`` columns are ``timestamptz``, ``bool`` columns ``boolean``, the rest
``text``, and ``raw`` is ``jsonb``.

Why ``jsonb`` and not ``json``: ``json`` has no equality operator, so ``GROUP BY
raw->'data'->'x'`` or ``SELECT DISTINCT`` over it fails, every ``->>`` parses the whole
body again, and it cannot have a GIN index; ``jsonb`` can do all of that.  Its one
refusal that a Customer.io body can meet is the escape ``\\u0000`` (a NUL in a string):
such a body (only those: a substring test, no parse for the others) is decoded and
encoded again with every NUL replaced by U+FFFD.  ``jsonb`` keeps the data, not the
bytes (key order, whitespace and duplicate keys go); the store keeps the bytes.

Values PostgreSQL cannot hold never stall the sink: a NUL character in a text value
(an id, a subject, anything Customer.io sent) becomes U+FFFD, the Unicode replacement
character, in ``events`` and ``deliveries`` alike; a ``delivery_id`` too long for a
btree entry (over 600 characters) is cut and ended by a digest of the whole.  A sink
that raised on such a batch would raise on it for ever (the loader retries the same
batch), and every later event would wait behind it.

``write`` is one transaction: the events are COPYed into a temporary staging table
(emptied at commit) and upserted by ``event_id`` (a replayed batch refreshes its rows,
never duplicates them);
the batch's deliveries rows are read ``FOR UPDATE``, joined with the batch's rows by
``merge_delivery`` in Python, COPYed and upserted whole.  Only one loader writes a sink
at a time (its lease in the store), the row locks guard the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from .._exceptions import SinkError
from ._contract import Batch
from ._rows import (
    CHANNEL_VIEWS,
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    Column,
    DeliveryRow,
    Privacy,
    merge_delivery,
)
from ._url import DEFAULT_SINK_SCHEMA, SinkURL

__all__ = [
    "OPEN_LOCK",
    "PostgresSink",
    "from_url",
    "pg_type",
    "sanitise_text",
    "scrub",
    "shorten_key",
]

#: The advisory lock ``open`` holds while it creates tables and views, so that two
#: processes opening the same sink at once do not race on CREATE (any constant of ours).
OPEN_LOCK = 0x63696F5F73696E6B  # "cio_sink"
#: Seconds to wait for the server to answer a connection.
CONNECT_TIMEOUT = 5

_PG_TYPES = {"text": "text", "timestamp": "timestamptz", "bool": "boolean", "json": "jsonb"}
_NUL = "\x00"
#: Longest ``delivery_id`` kept whole: a btree entry (the deliveries key, the events
#: index) holds about 2.7 kB, and 600 characters are at most 2.4 kB of UTF-8.
_KEY_MAX = 600
_REPLACEMENT = "\ufffd"


def pg_type(column: Column) -> str:
    """The PostgreSQL type of a warehouse column."""
    return _PG_TYPES[column.kind]


def sanitise_text(value: str) -> str:
    """``value`` with every NUL character replaced by U+FFFD (PostgreSQL text holds none)."""
    return value.replace(_NUL, _REPLACEMENT) if _NUL in value else value


def _scrub_json(value: Any) -> Any:
    if isinstance(value, str):
        return sanitise_text(value)
    if isinstance(value, dict):
        return {sanitise_text(k): _scrub_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_json(v) for v in value]
    return value


def sanitise_json(raw: str) -> str:
    """JSON text ``jsonb`` takes: a NUL, escaped (``\\u0000``) or not, becomes U+FFFD."""
    if "\\u0000" not in raw:
        return sanitise_text(raw)
    try:
        decoded = json.loads(raw)
    except ValueError:
        # Not JSON after all (never from parse_event): keep it, as a JSON string.
        return json.dumps(sanitise_text(raw))
    return json.dumps(_scrub_json(decoded), ensure_ascii=False)


def shorten_key(value: str) -> str:
    """``value`` (an indexed ``delivery_id``) when it fits a btree entry, else its first
    ``_KEY_MAX`` characters, ``~`` and the SHA-256 of the whole: distinct ids stay
    distinct, and the same id always reads the same."""
    if len(value) <= _KEY_MAX:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{value[:_KEY_MAX]}~{digest}"


def _sanitisers(columns: Sequence[Column]) -> list[tuple[int, bool]]:
    """(position, is_json) of the columns whose values may need sanitising."""
    return [(i, c.kind == "json") for i, c in enumerate(columns) if c.kind in ("text", "json")]


_EVENT_TEXT = _sanitisers(EVENT_COLUMNS)
_EVENT_DELIVERY = [c.name for c in EVENT_COLUMNS].index("delivery_id")
_DELIVERY_TEXT = _sanitisers(DELIVERY_COLUMNS)


def _sanitise(row: Sequence[Any], where: list[tuple[int, bool]], key: int) -> tuple[Any, ...]:
    out = list(row)
    for i, is_json in where:
        value = out[i]
        if isinstance(value, str):
            out[i] = sanitise_json(value) if is_json else sanitise_text(value)
    if isinstance(out[key], str):
        out[key] = shorten_key(out[key])
    return tuple(out)


def iso_sql(column: str) -> sql.Composable:
    """``column`` (a timestamptz) as the warehouse's ISO text, ``2026-01-02T03:04:05.678Z``."""
    return sql.SQL("""to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')""").format(
        sql.Identifier(column)
    )


def select_list(columns: Sequence[Column]) -> sql.Composable:
    """The columns as the rows ``_rows`` makes: timestamps as ISO text, the rest as is
    (``raw`` as its JSON text)."""
    parts: list[sql.Composable] = []
    for c in columns:
        if c.kind == "timestamp":
            parts.append(iso_sql(c.name))
        elif c.kind == "json":
            parts.append(sql.SQL("{}::text").format(sql.Identifier(c.name)))
        else:
            parts.append(sql.Identifier(c.name))
    return sql.SQL(", ").join(parts)


def _names(columns: Iterable[Column]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)


def _definitions(columns: Sequence[Column], key: str) -> sql.Composable:
    return sql.SQL(", ").join(
        sql.SQL("{} {}{}").format(
            sql.Identifier(c.name),
            sql.SQL(pg_type(c)),
            sql.SQL(" PRIMARY KEY" if c.name == key else ""),
        )
        for c in columns
    )


def _upsert(table: sql.Composable, stage: str, columns: Sequence[Column]) -> sql.Composed:
    key = columns[0].name
    return sql.SQL(
        "INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage}"
        " ON CONFLICT ({key}) DO UPDATE SET {sets}"
    ).format(
        table=table,
        cols=_names(columns),
        stage=sql.Identifier(stage),
        key=sql.Identifier(key),
        sets=sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c.name)) for c in columns[1:]
        ),
    )


class PostgresSink:
    """The ``Sink`` on PostgreSQL (see the module docstring).  One connection, made on
    ``open`` and again on the next call after a failure."""

    #: Rows of one COPY; a 5000-event write takes tens of milliseconds.
    batch_size = 5000
    #: Local and cheap per transaction: follow the store closely.
    interval = 0.1  # as the SQLite sink's (docs/benchmarks.md, issue 8)

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = DEFAULT_SINK_SCHEMA,
        table_prefix: str = "",
        name: str = "postgresql",
        privacy: Privacy | None = None,
        shown: str = "",
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.table_prefix = table_prefix
        self.name = name
        self.privacy = privacy or Privacy()
        self.url = shown or f"postgresql://...?schema={schema}"
        self._conn: psycopg.AsyncConnection[Any] | None = None
        #: The staging tables the current connection has made.
        self._staged: set[str] = set()

    def table(self, name: str) -> sql.Composed:
        """The schema-qualified identifier of table or view ``name`` (prefix added)."""
        return sql.SQL("{}.{}").format(
            sql.Identifier(self.schema), sql.Identifier(self.table_prefix + name)
        )

    # -- connection and errors ------------------------------------------------------------
    def _error(self, doing: str, exc: BaseException) -> SinkError:
        message = f"sink {self.name} ({self.url}): {doing} failed: {type(exc).__name__}: {exc}"
        return SinkError(scrub(message, self.dsn))

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        await self._drop()
        self._staged = set()
        self._conn = await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT
        )
        return self._conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            # A broken connection has nothing left to release.
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()

    # -- the contract ---------------------------------------------------------------------
    async def open(self) -> None:
        """Create the schema, tables, indexes and views that are missing, under
        ``OPEN_LOCK``; add columns a newer version defines.  Idempotent."""
        try:
            conn = await self._connection()
            async with conn.transaction():
                await self._create(conn)
        except (psycopg.Error, OSError) as exc:
            await self._drop()
            raise self._error("opening", exc) from exc

    async def _create(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", [OPEN_LOCK])
        await conn.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
        )
        events, deliveries = self.table("events"), self.table("deliveries")
        for table, name, columns in (
            (events, "events", EVENT_COLUMNS),
            (deliveries, "deliveries", DELIVERY_COLUMNS),
        ):
            await conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                    table, _definitions(columns, columns[0].name)
                )
            )
            cur = await conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = %s",
                [self.schema, self.table_prefix + name],
            )
            present = {row[0] for row in await cur.fetchall()}
            for column in columns:
                if column.name not in present:  # a table made by an older version
                    await conn.execute(
                        sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                            table, sql.Identifier(column.name), sql.SQL(pg_type(column))
                        )
                    )
        for indexed in ("occurred_at", "delivery_id"):
            await conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                    sql.Identifier(f"{self.table_prefix}events_{indexed}"),
                    events,
                    sql.Identifier(indexed),
                )
            )
        for view, object_type in CHANNEL_VIEWS.items():
            await conn.execute(
                sql.SQL(
                    "CREATE OR REPLACE VIEW {} AS SELECT * FROM {} WHERE object_type = {}"
                ).format(self.table(view), events, sql.Literal(object_type))
            )

    async def write(self, batch: Batch) -> None:
        """Upsert the events, merge the deliveries: one transaction (see the module
        docstring).  Raises ``SinkError``; the next call connects again."""
        # Last wins for a repeated event_id: ON CONFLICT refuses to touch a row twice.
        events = {
            row[0]: row
            for row in (_sanitise(r, _EVENT_TEXT, _EVENT_DELIVERY) for r in batch.events)
        }.values()
        incoming: dict[str, DeliveryRow] = {}
        for row in (_sanitise(r, _DELIVERY_TEXT, 0) for r in batch.deliveries):
            seen = incoming.get(row[0])
            incoming[row[0]] = row if seen is None else merge_delivery(seen, row)
        if not events and not incoming:
            return
        try:
            conn = await self._connection()
            async with conn.transaction():
                if events:
                    await self._stage(conn, "events", "_cio_stage_events", EVENT_COLUMNS, events)
                if incoming:
                    merged = await self._merged(conn, incoming)
                    await self._stage(
                        conn, "deliveries", "_cio_stage_deliveries", DELIVERY_COLUMNS, merged
                    )
        except (psycopg.Error, OSError) as exc:
            await self._drop()
            raise self._error(f"writing seq {batch.first_seq}..{batch.last_seq}", exc) from exc

    async def _stage(
        self,
        conn: psycopg.AsyncConnection[Any],
        name: str,
        stage: str,
        columns: Sequence[Column],
        rows: Iterable[Sequence[Any]],
    ) -> None:
        """COPY ``rows`` into a staging table emptied at commit, then upsert ``name``
        from it, replacing whole rows."""
        if stage not in self._staged:
            # Made once per connection and emptied at every commit: creating it in each
            # write (ON COMMIT DROP) cost ~3 ms of catalog writes per table per write.
            # A table changed since by open() fails the COPY once: the error drops the
            # connection, and the next one makes the table again.
            await conn.execute(
                sql.SQL("CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DELETE ROWS").format(
                    sql.Identifier(stage), self.table(name)
                )
            )
            self._staged.add(stage)
        copy = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(stage), _names(columns))
        async with conn.cursor() as cur, cur.copy(copy) as writer:
            for row in rows:
                await writer.write_row(row)
        await conn.execute(_upsert(self.table(name), stage, columns))

    async def _merged(
        self, conn: psycopg.AsyncConnection[Any], incoming: dict[str, DeliveryRow]
    ) -> list[DeliveryRow]:
        """The batch's deliveries joined with the rows already there (locked until
        commit)."""
        cur = await conn.execute(
            sql.SQL("SELECT {} FROM {} WHERE delivery_id = ANY(%s) FOR UPDATE").format(
                select_list(DELIVERY_COLUMNS), self.table("deliveries")
            ),
            [list(incoming)],
        )
        merged = dict(incoming)
        for row in await cur.fetchall():
            merged[row[0]] = merge_delivery(tuple(row), merged[row[0]])
        return list(merged.values())

    async def close(self) -> None:
        await self._drop()


def scrub(message: str, dsn: str) -> str:
    """``message`` with the password of ``dsn`` masked, wherever libpq quoted it."""
    for secret in _passwords(dsn):
        message = message.replace(secret, "***")
    return message


def _passwords(dsn: str) -> list[str]:
    """The password(s) in ``dsn``, to keep out of error messages."""
    found = []
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        password = None
    if password:
        found.append(str(password))
    try:
        raw = urllib.parse.urlsplit(dsn).password
    except ValueError:
        raw = None
    if raw:
        found.append(raw)
    return [p for p in found if p]


def from_url(url: SinkURL) -> PostgresSink:
    """The sink a ``postgresql://`` sink URL names (not yet opened)."""
    return PostgresSink(
        url.target,
        schema=url.options.get("schema", DEFAULT_SINK_SCHEMA),
        table_prefix=url.table_prefix,
        name=url.name,
        privacy=url.privacy,
        shown=str(url),
    )
