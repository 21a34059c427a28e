"""The Parquet sink: a directory of Hive-partitioned Parquet files, one dataset per table.

::

    DIR/events/date=YYYY-MM-DD/object_type=X/part-<lo:020d>-<hi:020d>.parquet
    DIR/deliveries/bucket=NN/deliveries.parquet
    DIR/_parquet_sink.json      the layout (bucket count), checked on open
    DIR/.staging/               temp files and compaction work, never read

Read it as one dataset, e.g. with DuckDB::

    SELECT * FROM read_parquet('DIR/events/**/*.parquet', hive_partitioning = true)
    SELECT * FROM read_parquet('DIR/deliveries/**/*.parquet', hive_partitioning = true)

or ``pyarrow.dataset.dataset("DIR/events", partitioning="hive")`` (pandas alike).
``date`` is the UTC day of ``occurred_at`` (``__HIVE_DEFAULT_PARTITION__``, read as
NULL, when it has none); ``object_type`` (URL-quoted in the directory name) also stays a
column in the files.  The ``object_type`` partition is what the SQL sinks' per-channel
views are: ``WHERE object_type = 'email'`` reads only that channel's files.  Columns are
typed: ``timestamp("ms", "UTC")`` for times, ``bool``, ``string`` (``raw`` is JSON text);
files are zstd-compressed.

Every file appears whole: it is written under ``.staging/``, fsynced and renamed into
place (same filesystem, so the rename is atomic), and the directory is fsynced.

**Events: one row per event_id, at every moment a reader looks.**  A file is named by
the ``seq`` range of the batch that wrote it (a compacted file: the range of the files
it merged).  An event's partition follows from its own fields, so an event written
again (a replayed batch, a re-read from the same cursor with a larger batch after a
crash, whatever its ``seq`` range) can only be in a file of its own partition.
``write`` looks its event_ids up in the ``event_id`` column of the partition's files
(each file's column read once, then cached while the file is unchanged, for the
partitions the last batch wrote), and then only ever replaces a file by one *of the
same name*:

- a file that holds some of the batch's events is rewritten in place
  with those rows refreshed (the rename swaps old content for new in one step);
- the batch's other events go to ``part-<first_seq>-<last_seq>``, merged with what
  that file already holds when it exists.

No step moves a row between files, so a reader never sees an event twice, nor misses
one that was there before.  (A batch spans several partitions, each written in its own
step: a batch interrupted part-way shows some of its events until it is written again,
as any batch not yet written shows none.)

**Compaction** moves rows between files, which renames cannot do atomically one file at
a time; it swaps the whole partition directory instead.  When a partition holds more
than ``compact_at`` files, its rows (deduplicated by ``event_id``, sorted by
``occurred_at``) are written to one file in a new directory under ``.staging/``, and
``renameat2(RENAME_EXCHANGE)`` swaps that directory with the partition in one step;
the old files, now in ``.staging/``, are then deleted.  A crash at any point leaves
either the old partition or the new one visible, and leftovers in ``.staging/`` that
``open`` removes.  Where the kernel or filesystem cannot exchange two directories
(``open`` tries it; not Linux, or a filesystem without it), partitions are not
compacted: the sink stays exact, with more files.  A query that listed the files just
before a compaction may fail with "file not found": run it again.

**Deliveries: one row per delivery_id, at every moment.**  Parquet cannot update a row,
so each ``delivery_id`` belongs to one of ``buckets`` files for good (CRC-32 of the id
modulo the bucket count, kept in ``_parquet_sink.json``).  ``write`` reads each bucket
file its batch touches, folds the batch's rows in with ``merge_delivery`` and replaces
the file under the same name.  A delivery's row is therefore in exactly one file, and a
reader sees the row before the write or after it, never both; ``merge_delivery`` being
idempotent and order-independent, replays and arrival order change nothing.  A write
costs one read and rewrite of every bucket it touches, so the sink asks the loader for
large, infrequent batches (``batch_size``, ``interval``).

Only one loader writes a sink at a time (it holds a lease in the store); within the
process, a lock serialises writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import threading
import urllib.parse
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .._exceptions import SinkError
from ._contract import Batch
from ._rows import (
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    KEEP_ALL,
    Column,
    DeliveryRow,
    EventRow,
    Privacy,
    merge_delivery,
)
from ._url import SinkURL

__all__ = ["DELIVERY_BUCKETS", "NULL_PARTITION", "ParquetSink", "from_url"]

T = TypeVar("T")

#: How many files ``deliveries`` is split into.  Fixed for a directory once written.
DELIVERY_BUCKETS = 8
#: The Hive name of a NULL partition value (pyarrow and DuckDB read it as NULL).
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
_LAYOUT = "_parquet_sink.json"
_STAGING = ".staging"
_PART = re.compile(r"^part-(\d{20})-(\d{20})\.parquet$")
_DELIVERIES_FILE = "deliveries.parquet"
_EVENT_ID = 0
_OCCURRED_AT = [c.name for c in EVENT_COLUMNS].index("occurred_at")
_OBJECT_TYPE = [c.name for c in EVENT_COLUMNS].index("object_type")
_RENAME_EXCHANGE = 2
#: Longest partition value in a directory name (``object_type=`` + this < 255 bytes).
_PARTITION_MAX = 200
_AT_FDCWD = -100


def _arrow_type(column: Column) -> pa.DataType:
    if column.kind == "timestamp":
        return pa.timestamp("ms", tz="UTC")
    if column.kind == "bool":
        return pa.bool_()
    return pa.string()


def _schema(columns: Sequence[Column]) -> pa.Schema:
    return pa.schema([pa.field(c.name, _arrow_type(c)) for c in columns])


EVENTS_SCHEMA = _schema(EVENT_COLUMNS)
DELIVERIES_SCHEMA = _schema(DELIVERY_COLUMNS)


def _table(schema: pa.Schema, rows: Sequence[Sequence[Any]]) -> pa.Table:
    """``rows`` (``_rows`` form: ISO text for times) as a table of ``schema``."""
    arrays = []
    for i, field in enumerate(schema):
        values = [row[i] for row in rows]
        if pa.types.is_timestamp(field.type):
            # Arrow parses events.iso's text itself (in C: ~20x parsing in Python).
            arrays.append(pa.array(values, type=pa.string()).cast(field.type))
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _rows_of(table: pa.Table) -> list[tuple[Any, ...]]:
    """A table's rows in ``_rows`` form (the inverse of ``_table``)."""
    columns = []
    for field in table.schema:
        column = table.column(field.name)
        if pa.types.is_timestamp(field.type):
            # events.iso's form (%S of a millisecond timestamp has the .fff), so that
            # merge_delivery compares the times it reads back as the text it was given.
            column = pc.strftime(column, format="%Y-%m-%dT%H:%M:%SZ")
        columns.append(column.to_pylist())
    return list(zip(*columns, strict=True)) if columns else []


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns: a file written before a column was
    added reads with that column NULL."""
    arrays = [
        table.column(f.name).cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _read(path: Path, schema: pa.Schema) -> pa.Table:
    # A file read on its own: without the partition columns a dataset read would add.
    return _conform(pq.ParquetFile(path).read(), schema)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path) -> None:
    """``mkdir -p`` that makes each new directory durable: a file renamed into a
    directory whose own entry a power cut loses is lost with it."""
    if path.is_dir():
        return
    _make_dirs(path.parent)
    with contextlib.suppress(FileExistsError):
        path.mkdir()
        _fsync_dir(path.parent)


def _write_file(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, compression="zstd")
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _partition(value: str | None) -> str:
    """The directory name of a partition value: URL-quoted, and when that is longer
    than ``_PARTITION_MAX``, cut and ended by ``~`` and a digest of the whole value: a
    name holds at most 255 bytes, and a sink that refused the batch would stall on it.
    Hive readers take the value from the name, so they read such a value cut (the
    files keep it whole); Customer.io's object types are short words."""
    if value is None:
        return NULL_PARTITION
    quoted = urllib.parse.quote(value, safe="")
    if len(quoted) <= _PARTITION_MAX:
        return quoted
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    head = value[:_PARTITION_MAX]
    while len(urllib.parse.quote(head, safe="")) > _PARTITION_MAX - len(digest) - 1:
        head = head[:-1]  # whole characters only: readers URL-decode the name
    return f"{urllib.parse.quote(head, safe='')}~{digest}"


def _bucket(delivery_id: str, buckets: int) -> int:
    return zlib.crc32(delivery_id.encode("utf-8", "surrogatepass")) % buckets


class ParquetSink:
    """Events and deliveries as Parquet files under ``directory`` (see the module
    docstring for the layout and why every row is there exactly once)."""

    def __init__(
        self,
        directory: str | Path,
        *,
        name: str = "parquet",
        url: str | None = None,
        privacy: Privacy = KEEP_ALL,
        batch_size: int = 50_000,
        interval: float = 30.0,
        compact_at: int = 16,
        buckets: int = DELIVERY_BUCKETS,
    ) -> None:
        self.directory = Path(directory)
        self.name = name
        self.url = url or f"parquet://{self.directory}"
        self.privacy = privacy
        self.batch_size = batch_size
        self.interval = interval
        self.compact_at = compact_at
        self.buckets = buckets
        self._lock = threading.Lock()
        self._ready = False
        self._can_swap = False  # whether directories can be exchanged (set by open)
        # file -> ((inode, size, mtime), its event_ids): see _event_ids.
        self._ids: dict[Path, tuple[tuple[int, int, int], frozenset[str]]] = {}

    @property
    def can_compact(self) -> bool:
        """Whether this directory's filesystem can swap a partition atomically (known
        once opened); without it, partitions keep one file per batch."""
        return self._can_swap

    @property
    def events_dir(self) -> Path:
        return self.directory / "events"

    @property
    def deliveries_dir(self) -> Path:
        return self.directory / "deliveries"

    @property
    def _staging(self) -> Path:
        return self.directory / _STAGING

    async def open(self) -> None:
        """Create the directories, check the layout and remove what a crash left in
        ``.staging/``; idempotent."""
        await self._call(self._prepare)

    async def write(self, batch: Batch) -> None:
        """Upsert the batch's events by ``event_id`` and merge its deliveries (see the
        module docstring); ``SinkError`` when the directory cannot take it."""

        def run() -> None:
            if not self._ready:
                self._prepare()
            self._write_events(batch)
            self._write_deliveries(batch.deliveries)

        await self._call(run)

    async def close(self) -> None:
        """Nothing to release: every write is complete on disk when it returns."""

    async def compact(self) -> None:
        """Compact every partition holding more than one file (``write`` compacts a
        partition once it holds more than ``compact_at``)."""

        def run() -> None:
            if not self._ready:
                self._prepare()
            for partition in sorted(p for p in self.events_dir.glob("*/*") if p.is_dir()):
                if len(self._parts(partition)) > 1:
                    self._compact(partition)

        await self._call(run)

    # -- in a worker thread, under self._lock ------------------------------------------

    async def _call(self, fn: Callable[[], T]) -> T:
        def locked() -> T:
            with self._lock:
                return fn()

        try:
            return await asyncio.to_thread(locked)
        except (OSError, ValueError, pa.ArrowException) as exc:
            self._ready = False  # check the directories again on the next write
            raise SinkError(f"parquet sink {self.name} ({self.directory}): {exc}") from exc

    def _prepare(self) -> None:
        for path in (self.events_dir, self.deliveries_dir, self._staging):
            _make_dirs(path)
        layout = self.directory / _LAYOUT
        if layout.exists():
            buckets = json.loads(layout.read_text()).get("delivery_buckets")
            if buckets != self.buckets:
                raise SinkError(
                    f"parquet sink {self.name}: {self.directory} was written with"
                    f" {buckets} delivery buckets, not {self.buckets}"
                )
        else:
            tmp = self._staging / f"{uuid.uuid4().hex}.tmp"
            tmp.write_text(json.dumps({"version": 1, "delivery_buckets": self.buckets}))
            os.replace(tmp, layout)
        probe = self._staging / f"probe-{uuid.uuid4().hex}"
        (probe / "a").mkdir(parents=True)
        (probe / "b").mkdir()
        self._can_swap = _exchange(probe / "a", probe / "b")
        # Only this sink writes here (the loader's lease): what is staged is a leftover.
        for leftover in self._staging.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        self._ready = True

    def _install(self, table: pa.Table, path: Path) -> None:
        """Write ``table`` to ``path`` whole: staged, fsynced, renamed over."""
        tmp = self._staging / f"{uuid.uuid4().hex}.tmp"
        try:
            _write_file(table, tmp)
            _make_dirs(path.parent)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    @staticmethod
    def _parts(partition: Path) -> list[tuple[int, int, Path]]:
        found = []
        for entry in os.scandir(partition):
            match = _PART.match(entry.name)
            if match:
                found.append((int(match[1]), int(match[2]), Path(entry.path)))
        return sorted(found)

    def _write_events(self, batch: Batch) -> None:
        by_partition: dict[tuple[str | None, str | None], list[EventRow]] = defaultdict(list)
        for row in batch.events:
            at = row[_OCCURRED_AT]
            by_partition[at[:10] if at else None, row[_OBJECT_TYPE]].append(row)
        touched: set[Path] = set()
        for (day, object_type), rows in by_partition.items():
            partition = (
                self.events_dir
                / f"date={_partition(day)}"
                / f"object_type={_partition(object_type)}"
            )
            self._write_partition(partition, rows, batch.first_seq, batch.last_seq)
            touched.add(partition)
        # Keep the ids of the partitions being written (today's, as a rule), not all.
        self._ids = {path: ids for path, ids in self._ids.items() if path.parent in touched}

    def _write_partition(self, partition: Path, rows: list[EventRow], lo: int, hi: int) -> None:
        """Write ``rows`` (all of this partition) so that each event_id is in one file."""
        _make_dirs(partition)
        pending = {row[_EVENT_ID]: row for row in rows}
        target = partition / f"part-{lo:020d}-{hi:020d}.parquet"
        held: pa.Table | None = None
        for _, _, path in self._parts(partition):
            if path == target:
                held = _read(path, EVENTS_SCHEMA)  # merged below, with the new events
            elif not self._event_ids(path).isdisjoint(pending):
                refreshed = self._refresh(_read(path, EVENTS_SCHEMA), pending)
                assert refreshed is not None
                self._install(refreshed, path)
        if held is not None:
            refreshed = self._refresh(held, pending)
            held = held if refreshed is None else refreshed
            new = pa.concat_tables([held, _table(EVENTS_SCHEMA, list(pending.values()))])
        else:
            new = _table(EVENTS_SCHEMA, list(pending.values()))
        if new.num_rows:
            self._install(new, target)
        if len(self._parts(partition)) > self.compact_at:
            self._compact(partition)

    def _event_ids(self, path: Path) -> frozenset[str]:
        """The event_ids in the file ``path``, cached while it keeps its inode, size
        and mtime (only this sink writes it, and every write renames a new inode in)."""
        info = path.stat()
        key = (info.st_ino, info.st_size, info.st_mtime_ns)
        cached = self._ids.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        column = pq.ParquetFile(path).read(columns=["event_id"]).column("event_id")
        ids = frozenset(column.to_pylist())
        self._ids[path] = (key, ids)
        return ids

    @staticmethod
    def _refresh(table: pa.Table, pending: dict[str, EventRow]) -> pa.Table | None:
        """``table`` with its rows of events in ``pending`` replaced by theirs (taken
        out of ``pending``); None when it holds none of them."""
        ids = table.column("event_id").to_pylist()
        hits = [i for i, event_id in enumerate(ids) if event_id in pending]
        if not hits:
            return None
        replaced = set(hits)
        keep = [i for i in range(len(ids)) if i not in replaced]
        fresh = _table(EVENTS_SCHEMA, [pending.pop(ids[i]) for i in hits])
        return pa.concat_tables([table.take(pa.array(keep, type=pa.int64())), fresh])

    def _compact(self, partition: Path) -> None:
        parts = self._parts(partition)
        # Without an atomic swap, moving rows between files would show them twice or
        # not at all for a moment, and a crash between two renames could lose them.
        if not parts or not self._can_swap:
            return
        tables = [_read(path, EVENTS_SCHEMA) for _, _, path in parts]
        merged = pa.concat_tables(tables)
        # One row per event_id, the one from the file with the latest range: there are
        # no duplicates to drop unless a store renumbered its events.
        last_index = {event_id: i for i, event_id in enumerate(merged["event_id"].to_pylist())}
        keep = pa.array(sorted(last_index.values()), type=pa.int64())
        merged = merged.take(keep).sort_by("occurred_at")
        lo, hi = parts[0][0], max(last for _, last, _ in parts)
        work = self._staging / uuid.uuid4().hex
        work.mkdir()
        _write_file(merged, work / f"part-{lo:020d}-{hi:020d}.parquet")
        _fsync_dir(work)
        if _exchange(work, partition):
            _fsync_dir(partition.parent)
        # ``work`` now holds the old files (or, without a swap, the unused new one).
        shutil.rmtree(work)

    def _write_deliveries(self, rows: Iterable[DeliveryRow]) -> None:
        by_bucket: dict[int, list[DeliveryRow]] = defaultdict(list)
        for row in rows:
            by_bucket[_bucket(row[0], self.buckets)].append(row)
        for bucket, batch_rows in sorted(by_bucket.items()):
            path = self.deliveries_dir / f"bucket={bucket:02d}" / _DELIVERIES_FILE
            held: dict[str, DeliveryRow] = {}
            if path.exists():
                held = {row[0]: row for row in _rows_of(_read(path, DELIVERIES_SCHEMA))}
            for row in batch_rows:
                seen = held.get(row[0])
                held[row[0]] = row if seen is None else merge_delivery(seen, row)
            self._install(_table(DELIVERIES_SCHEMA, [held[k] for k in sorted(held)]), path)


def from_url(url: SinkURL) -> ParquetSink:
    """The sink ``parquet:///DIR`` names (not opened yet)."""
    return ParquetSink(url.path, name=url.name, url=str(url) or None, privacy=url.privacy)
