"""The BigQuery sink: ``events``, ``deliveries`` and the channel views in one dataset.

::

    bigquery://PROJECT/DATASET?credentials=/path/key.json&location=EU&table_prefix=cio_
    bigquery://demo/warehouse?api_endpoint=http://127.0.0.1:9050     an emulator

Credentials: a service-account key file (``credentials=``); else, with an
``api_endpoint`` (an emulator), none at all; else Application Default Credentials.

Rows stay unique without relying on ``insertId`` (streaming dedupe is best-effort
and lasts about a minute): every write loads the batch into a staging table with a
load job (``WRITE_TRUNCATE``), then ``MERGE``\\ s it into the table on its key, updating
rows that exist and inserting the others, and drops the staging table.  A replayed
batch therefore refreshes the same rows.  Each batch stages into tables of its own
(named by the sink and the batch's first seq, expiring after a day if never dropped):
BigQuery takes at most 1,500 load jobs a day into one table, failed ones included,
which one fixed staging table would reach at a write a minute plus retries.

The load goes through the resumable upload protocol (the client's choice when it is
not told the size): the emulator the tests run against refuses the client's
one-request multipart upload (its media part is typed ``*/*``); real BigQuery takes
both.

``deliveries`` is read-modify-write: the rows of the batch's delivery_ids are read,
each is folded with the batch's row by ``merge_delivery``, and the results replace
the rows whole through the same stage-and-MERGE.  Only one loader writes a sink at a
time (its lease in the store), so nothing writes between the read and the MERGE.

Tables, made by ``open`` when missing:

- ``events``: partitioned by day on ``occurred_at``, clustered by ``object_type``,
  ``metric``, ``delivery_id``.  ``occurred_at`` rather than ``loaded_at``: it is what
  queries filter on, and it never changes for an event_id, so the MERGE can name the
  batch's ``occurred_at`` range and BigQuery scans only those days instead of the whole
  table on every batch.  An event without a time (a body whose timestamp is missing or
  out of range) goes to the ``__NULL__`` partition.
- ``deliveries``: clustered by ``delivery_id``, not partitioned: it is looked up by
  delivery_id, and a candidate partition column such as ``first_event_at`` moves when
  an earlier event arrives.
- one view per ``CHANNEL_VIEWS`` entry.

``raw`` is a STRING holding the JSON body: BigQuery's JSON functions take it as it is
(``JSON_VALUE(raw, '$.data.subject')``), and unlike a JSON column its load cannot fail
on a number JSON-typed columns cannot hold, which would stop the sink on that batch
for good.

The client is blocking, so every call runs in a thread (``asyncio.to_thread``).
A call that fails (BigQuery refused it, or could not be reached within ``timeout``
seconds, retries included) raises ``SinkError`` with what failed, never a credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from .._exceptions import ConfigError, SinkError
from ._contract import Batch
from ._rows import (
    CHANNEL_VIEWS,
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    KEEP_ALL,
    Column,
    DeliveryRow,
    Privacy,
    merge_delivery,
)
from ._url import SinkURL

if TYPE_CHECKING:
    from google.cloud import bigquery

__all__ = ["DEFAULT_TIMEOUT", "BigQuerySink", "from_url"]

log = logging.getLogger("cio_webhooks.sinks")

#: Seconds one API call may take, its retries included, before ``write`` gives up
#: with ``SinkError`` (the loader then retries the batch with backoff).  Until then an
#: outage shows only as growing lag, so not longer than a load job of a batch needs.
DEFAULT_TIMEOUT = 60.0
#: Every write runs five jobs (two loads, a read, two MERGEs) and each MERGE bills at
#: least 10 MB per table it reads: one write a minute keeps that small.
DEFAULT_INTERVAL = 60.0
#: A batch is held in memory as NDJSON for its load (a few KB per event with ``raw``).
DEFAULT_BATCH_SIZE = 20_000

#: How long a staging table outlives a sink that stopped before dropping it.
_STAGING_LIFETIME = dt.timedelta(days=1)
#: Retries of an upload that fails to connect (1 s, then 2 s apart): the loader
#: retries the whole batch with its own backoff, and the client's default (6, up to a
#: minute) would outlast ``timeout``.
_UPLOAD_RETRIES = 2
_TYPES = {"text": "STRING", "timestamp": "TIMESTAMP", "bool": "BOOL", "json": "STRING"}
_SCOPES = ("https://www.googleapis.com/auth/bigquery",)
_OCCURRED = [c.name for c in EVENT_COLUMNS].index("occurred_at")


class BigQuerySink:
    """A ``Sink`` writing to the dataset ``project.dataset`` (see the module docstring).

    ``credentials`` is the path of a service-account key file; ``api_endpoint`` the
    base URL of another BigQuery API (an emulator); ``location`` where the dataset is
    made when missing, and where jobs run.
    """

    def __init__(
        self,
        project: str,
        dataset: str,
        *,
        name: str = "bigquery",
        privacy: Privacy = KEEP_ALL,
        table_prefix: str = "",
        credentials: str | None = None,
        api_endpoint: str | None = None,
        location: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        batch_size: int = DEFAULT_BATCH_SIZE,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.name = name
        self.url = f"bigquery://{project}/{dataset}"
        self.privacy = privacy
        self.batch_size = batch_size
        self.interval = interval
        self.project = project
        self.dataset = dataset
        self.table_prefix = table_prefix
        self.timeout = timeout
        self._credentials_file = credentials
        self._api_endpoint = api_endpoint
        self._location = location
        self._client: bigquery.Client | None = None
        # True once open() made every table; a write finding a table gone clears it,
        # so that the next write makes the tables again.
        self._ready = False

    def table(self, name: str) -> str:
        """The full id of table ``name`` (prefix applied)."""
        return f"{self.project}.{self.dataset}.{self.table_prefix}{name}"

    def _quoted(self, name: str) -> str:
        return f"`{self.table(name)}`"

    # -- Sink ---------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, and make the dataset, tables and views that are missing."""
        await asyncio.to_thread(self._open)

    async def write(self, batch: Batch) -> None:
        """Upsert the events by event_id, then merge the deliveries (two MERGEs: a
        failure between them leaves events written and the batch replayed, which
        changes nothing more)."""
        if not self._ready:
            await self.open()
        try:
            await asyncio.to_thread(self._write, batch)
        except SinkError as exc:
            if _is_not_found(exc.__cause__):
                self._ready = False
            raise

    async def close(self) -> None:
        client, self._client = self._client, None
        self._ready = False
        if client is not None:
            await asyncio.to_thread(client.close)

    # -- blocking side ------------------------------------------------------------

    def _connect(self) -> bigquery.Client:
        from google.api_core.client_options import ClientOptions
        from google.cloud import bigquery

        credentials = self._load_credentials()
        options = ClientOptions(api_endpoint=self._api_endpoint) if self._api_endpoint else None
        with self._failing("connect"):
            return bigquery.Client(
                project=self.project,
                credentials=credentials,
                location=self._location,
                client_options=options,
            )

    def _load_credentials(self) -> Any:
        import google.auth
        from google.auth.credentials import AnonymousCredentials
        from google.oauth2 import service_account

        if self._credentials_file:
            try:
                return service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                    self._credentials_file, scopes=_SCOPES
                )
            except (OSError, ValueError) as exc:
                # The message of a malformed key file may quote it: name the file only.
                raise SinkError(
                    f"sink {self.name}: cannot use the key file {self._credentials_file}"
                    f" ({type(exc).__name__})"
                ) from None
        if self._api_endpoint:
            return AnonymousCredentials()  # type: ignore[no-untyped-call]
        with self._failing("find Application Default Credentials"):
            credentials, _ = google.auth.default(scopes=_SCOPES)
        return credentials

    def _open(self) -> None:
        from google.api_core.exceptions import NotFound
        from google.cloud import bigquery

        if self._client is None:
            self._client = self._connect()
        client = self._client
        retry = self._retry()
        reference = f"{self.project}.{self.dataset}"
        with self._failing(f"create dataset {reference}"):
            try:
                client.get_dataset(reference, retry=retry, timeout=self.timeout)
            except NotFound:
                # Only when missing: creating needs a permission that writing does not.
                dataset = bigquery.Dataset(reference)
                if self._location:
                    dataset.location = self._location
                client.create_dataset(dataset, exists_ok=True, retry=retry, timeout=self.timeout)
        events = bigquery.Table(self.table("events"), schema=_schema(EVENT_COLUMNS))
        events.time_partitioning = bigquery.TimePartitioning(
            type_=bigquery.TimePartitioningType.DAY, field="occurred_at"
        )
        events.clustering_fields = ["object_type", "metric", "delivery_id"]
        deliveries = bigquery.Table(self.table("deliveries"), schema=_schema(DELIVERY_COLUMNS))
        deliveries.clustering_fields = ["delivery_id"]
        views = []
        for view_name, object_type in CHANNEL_VIEWS.items():
            view = bigquery.Table(self.table(view_name))
            view.view_query = (
                f"SELECT * FROM {self._quoted('events')} WHERE object_type = '{object_type}'"
            )
            views.append(view)
        for table in (events, deliveries, *views):
            with self._failing(f"create {table.table_id}"):
                client.create_table(table, exists_ok=True, retry=retry, timeout=self.timeout)
        self._ready = True

    def _write(self, batch: Batch) -> None:
        # Staging tables of this batch: named by its first seq, so that a replay (which
        # starts at the same seq) overwrites the ones a crash left behind.
        tag = f"{self.name.replace('-', '_')}_{batch.first_seq}"
        if batch.events:
            self._merge_events(batch.events, f"staging_events_{tag}")
        if batch.deliveries:
            self._merge_deliveries(batch.deliveries, f"staging_deliveries_{tag}")

    def _merge_events(self, rows: Sequence[tuple[Any, ...]], staging: str) -> None:
        from google.cloud import bigquery

        # The loader's batches hold each event_id once; a MERGE would insert a repeated
        # one twice (nothing in BigQuery enforces a key), so the last row wins here.
        rows = list({r[0]: r for r in rows}.values())
        self._stage(staging, EVENT_COLUMNS, rows)
        times = [r[_OCCURRED] for r in rows if r[_OCCURRED] is not None]
        # An event_id's occurred_at never changes, so its stored row lies in the batch's
        # range of days: naming that range lets BigQuery prune the other partitions.
        prune = []
        parameters = []
        if times:
            prune.append("T.occurred_at BETWEEN @low AND @high")
            parameters = [
                bigquery.ScalarQueryParameter("low", "TIMESTAMP", _timestamp(min(times))),
                bigquery.ScalarQueryParameter("high", "TIMESTAMP", _timestamp(max(times))),
            ]
        if len(times) < len(rows):
            prune.append("T.occurred_at IS NULL")
        on = f"T.event_id = S.event_id AND ({' OR '.join(prune)})"
        self._query(
            "merge events",
            _merge(self._quoted("events"), self._quoted(staging), EVENT_COLUMNS, on),
            parameters,
        )
        self._drop(staging)

    def _merge_deliveries(self, rows: Sequence[DeliveryRow], staging: str) -> None:
        from google.cloud import bigquery

        ids = bigquery.ArrayQueryParameter("ids", "STRING", [r[0] for r in rows])
        names = ", ".join(c.name for c in DELIVERY_COLUMNS)
        stored = self._query(
            "read deliveries",
            f"SELECT {names} FROM {self._quoted('deliveries')} WHERE delivery_id IN UNNEST(@ids)",
            [ids],
        )
        held = {row[0]: tuple(_text(v) for v in row) for row in stored}
        merged = [merge_delivery(held[r[0]], r) if r[0] in held else r for r in rows]
        self._stage(staging, DELIVERY_COLUMNS, merged)
        on = "T.delivery_id = S.delivery_id AND T.delivery_id IN UNNEST(@ids)"
        self._query(
            "merge deliveries",
            _merge(self._quoted("deliveries"), self._quoted(staging), DELIVERY_COLUMNS, on),
            [ids],
        )
        self._drop(staging)

    def _stage(
        self, table: str, columns: Sequence[Column], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        """Make the staging table ``table`` hold ``rows``: created (expiring in a day,
        should the sink stop before dropping it) and filled by one load job."""
        from google.cloud import bigquery

        assert self._client is not None
        staging = bigquery.Table(self.table(table), schema=_schema(columns))
        staging.expires = dt.datetime.now(dt.UTC) + _STAGING_LIFETIME
        with self._failing(f"create {self.table_prefix}{table}"):
            self._client.create_table(
                staging, exists_ok=True, retry=self._retry(), timeout=self.timeout
            )
        names = [c.name for c in columns]
        lines = b"\n".join(msgspec.json.encode(dict(zip(names, r, strict=True))) for r in rows)
        config = bigquery.LoadJobConfig(
            schema=_schema(columns),
            source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
            create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
        )
        with self._failing(f"load {len(rows)} rows into {self.table_prefix}{table}"):
            # No size given: the resumable upload (see the module docstring).
            job = self._client.load_table_from_file(
                io.BytesIO(lines),
                self.table(table),
                job_config=config,
                num_retries=_UPLOAD_RETRIES,
                timeout=self.timeout,
            )
            job.result(retry=self._retry(), timeout=self.timeout)

    def _drop(self, table: str) -> None:
        """Drop a staging table; a failure only leaves it to expire (the rows are in)."""
        from google.api_core.exceptions import GoogleAPIError

        assert self._client is not None
        try:
            self._client.delete_table(
                self.table(table), not_found_ok=True, retry=self._retry(), timeout=self.timeout
            )
        except (GoogleAPIError, OSError) as exc:
            log.warning("sink %s: could not drop %s (%s)", self.name, table, type(exc).__name__)

    def _query(self, what: str, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        from google.cloud import bigquery
        from google.cloud.bigquery.retry import DEFAULT_JOB_RETRY

        assert self._client is not None
        config = bigquery.QueryJobConfig(query_parameters=list(parameters))
        with self._failing(what):
            job = self._client.query(
                sql,
                job_config=config,
                retry=self._retry(),
                job_retry=DEFAULT_JOB_RETRY.with_deadline(self.timeout),
                timeout=self.timeout,
            )
            return [tuple(row.values()) for row in job.result(timeout=self.timeout)]

    def _retry(self) -> Any:
        from google.cloud.bigquery import DEFAULT_RETRY

        return DEFAULT_RETRY.with_deadline(self.timeout)

    @contextlib.contextmanager
    def _failing(self, what: str) -> Iterator[None]:
        """Turn what the Google client raises into ``SinkError`` naming the step and the
        error (a credential travels in request headers, which no message quotes)."""
        try:
            yield
        except SinkError:
            raise
        except Exception as exc:
            if not _is_client_error(exc):
                raise
            summary = " ".join(str(exc).split())[:300]
            raise SinkError(
                f"sink {self.name}: {what} in {self.url} failed: {type(exc).__name__}: {summary}"
            ) from exc


def _is_not_found(exc: BaseException | None) -> bool:
    from google.api_core.exceptions import NotFound

    return isinstance(exc, NotFound)


def _is_client_error(exc: Exception) -> bool:
    import concurrent.futures

    import requests
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError

    return isinstance(
        exc,
        GoogleAPIError
        | GoogleAuthError
        | requests.RequestException
        | concurrent.futures.TimeoutError
        | OSError,
    )


def _schema(columns: Sequence[Column]) -> list[bigquery.SchemaField]:
    from google.cloud import bigquery

    return [
        bigquery.SchemaField(c.name, _TYPES[c.kind], mode="REQUIRED" if i == 0 else "NULLABLE")
        for i, c in enumerate(columns)
    ]


def _merge(target: str, staging: str, columns: Sequence[Column], on: str) -> str:
    """MERGE ``staging`` into ``target``: matched rows take every column of the staged
    row, the others are inserted."""
    names = [c.name for c in columns]
    updates = ", ".join(f"{n} = S.{n}" for n in names[1:])
    return (
        f"MERGE {target} T USING {staging} S ON {on}"
        f" WHEN MATCHED THEN UPDATE SET {updates}"
        f" WHEN NOT MATCHED THEN INSERT ({', '.join(names)})"
        f" VALUES ({', '.join(f'S.{n}' for n in names)})"
    )


def _timestamp(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _text(value: Any) -> Any:
    """A value read from BigQuery as ``_rows`` holds it (times as ISO text)."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value


def from_url(url: SinkURL) -> BigQuerySink:
    """The sink a ``bigquery://PROJECT/DATASET`` URL names (not opened)."""
    if url.kind != "bigquery":
        raise ConfigError(f"sink {url.name}: not a bigquery URL")
    options = url.options
    return BigQuerySink(
        options["project"],
        options["dataset"],
        name=url.name,
        privacy=url.privacy,
        table_prefix=url.table_prefix,
        credentials=options.get("credentials") or None,
        api_endpoint=options.get("api_endpoint") or None,
        location=options.get("location") or None,
        timeout=_seconds(url.name, options.get("timeout")),
    )


def _seconds(name: str, text: str | None) -> float:
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ConfigError(f"sink {name}: timeout must be a number of seconds > 0")
    return value
