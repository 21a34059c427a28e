"""A real BigQuery emulator for the sink tests, and the BigQuery side of the sink
contract suite.

``Emulator`` runs ``bqemulator`` (REST API of BigQuery on DuckDB) as a subprocess on
127.0.0.1 from its own venv, ``.venv-bq`` (``make bq-emulator`` builds it; ``make test``
depends on it).  Its HOME is a directory inside that venv holding DuckDB's spatial and
avro extensions, copied there from PyPI packages: DuckDB looks for installed
extensions under ``$HOME/.duckdb`` and would otherwise try to download them (there is
no network here).  ``CIO_WEBHOOKS_BQ_VENV`` names another venv built the same way.

The Google client runs in the test process; ``client_environment`` keeps it from
probing for cloud metadata (``NO_GCE_CHECK``, ``GCE_METADATA_HOST`` on a closed port).

``bigquery_sink`` is the fixture factory for the contract suite: an opened
``BigQuerySink`` on a dataset of its own, plus functions reading back every
``events`` and ``deliveries`` row as dicts, times as ISO text like the rows the
loader hands over.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cio_webhooks.sinks.bigquery import BigQuerySink

ROOT = Path(__file__).resolve().parents[2]
BQ_VENV = Path(os.environ.get("CIO_WEBHOOKS_BQ_VENV", ROOT / ".venv-bq"))
PROJECT = "demo"
#: How long a start may take before the fixture gives up (a bound, not an assertion:
#: the emulator answers after about a second here).
START_LIMIT = 120.0


class EmulatorError(RuntimeError):
    """The emulator could not be started."""


class Emulator:
    """One ``bqemulator`` process serving project ``demo`` on 127.0.0.1.

    ``persistent=True`` keeps its data in ``data_dir`` so that ``stop`` then ``start``
    (same port) brings the same datasets back: the tests of a warehouse that goes
    down and comes back use that.  ``rest_port=0`` lets the emulator pick a free port,
    read back from its JSON log.
    """

    def __init__(self, workdir: Path, *, persistent: bool = False) -> None:
        self.workdir = workdir
        self.persistent = persistent
        self.rest_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._starts = 0

    @property
    def endpoint(self) -> str:
        """The ``api_endpoint`` of a sink URL."""
        return f"http://127.0.0.1:{self.rest_port}"

    def start(self) -> None:
        """Start the emulator (on the port it had, after a ``stop``) and return once
        it answers."""
        executable = BQ_VENV / "bin" / "bqemulator"
        if not executable.exists():
            raise EmulatorError(f"{executable} is missing: run `make bq-emulator` (make test does)")
        self._starts += 1
        log = self.workdir / f"emulator-{self._starts}.log"
        command = [
            str(executable),
            "start",
            "--rest-host=127.0.0.1",
            f"--rest-port={self.rest_port}",
            "--grpc-host=127.0.0.1",
            "--grpc-port=0",
            f"--project={PROJECT}",
            "--log-format=json",
            "--log-level=info",
        ]
        if self.persistent:
            data = self.workdir / "data"
            data.mkdir(exist_ok=True)
            command += ["--persistent", f"--data-dir={data}"]
        env = {**os.environ, "HOME": str(BQ_VENV / "home")}
        with log.open("wb") as out:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        self.rest_port = self._await_port(log)
        self._await_answer()

    def _await_port(self, log: Path) -> int:
        """The REST port from the ``rest.listen`` JSON log line."""
        deadline = time.monotonic() + START_LIMIT
        while time.monotonic() < deadline:
            for line in log.read_text(errors="replace").splitlines():
                if '"rest.listen"' in line:
                    with contextlib.suppress(ValueError):
                        return int(json.loads(line)["port"])
            self._check_alive(log)
            time.sleep(0.05)
        self.stop()
        raise EmulatorError(f"bqemulator did not report its port; see {log}")

    def _await_answer(self) -> None:
        url = f"{self.endpoint}/bigquery/v2/projects/{PROJECT}/datasets"
        deadline = time.monotonic() + START_LIMIT
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        self.stop()
        raise EmulatorError(f"bqemulator did not answer at {url}")

    def _check_alive(self, log: Path) -> None:
        if self._process is not None and self._process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise EmulatorError(f"bqemulator exited with {self._process.returncode}:\n{tail}")

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL) and wait for it."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def client_environment() -> Iterator[None]:
    """Keep the Google client in this process from probing for GCE metadata."""
    saved = {k: os.environ.get(k) for k in ("NO_GCE_CHECK", "GCE_METADATA_HOST")}
    os.environ["NO_GCE_CHECK"] = "true"
    os.environ["GCE_METADATA_HOST"] = "127.0.0.1:1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def running_emulator(workdir: Path, *, persistent: bool = False) -> Iterator[Emulator]:
    """An emulator that runs for the ``with`` block."""
    emulator = Emulator(workdir, persistent=persistent)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


def new_dataset() -> str:
    """A dataset name no other test uses (the session shares one emulator)."""
    return f"t_{secrets.token_hex(6)}"


def as_text(value: Any) -> Any:
    """A value read from BigQuery as the loader's rows hold it: times as ISO text."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value


@dataclass
class Reader:
    """Reads a dataset's tables back with the real client."""

    endpoint: str
    dataset: str
    table_prefix: str = ""

    def rows(self, table: str, order_by: str) -> list[dict[str, Any]]:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        client = bigquery.Client(
            project=PROJECT,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options=ClientOptions(api_endpoint=self.endpoint),
        )
        try:
            name = f"`{PROJECT}.{self.dataset}.{self.table_prefix}{table}`"
            result = client.query(f"SELECT * FROM {name} ORDER BY {order_by}").result()
            return [{k: as_text(v) for k, v in row.items()} for row in result]
        finally:
            client.close()  # type: ignore[no-untyped-call]

    def events(self) -> list[dict[str, Any]]:
        return self.rows("events", "event_id")

    def deliveries(self) -> list[dict[str, Any]]:
        return self.rows("deliveries", "delivery_id")


ReadBack = Callable[[], list[dict[str, Any]]]


@dataclass
class Peer:
    """An opened sink and what reads its tables back."""

    sink: BigQuerySink
    #: Every ``events`` row (by event_id) as a dict, times as ISO text.
    events: ReadBack
    #: Every ``deliveries`` row (by delivery_id) as a dict, times as ISO text.
    deliveries: ReadBack
    reader: Reader


@contextlib.asynccontextmanager
async def bigquery_peer(
    emulator: Emulator, parameters: str = "", *, salt: bytes | None = None
) -> AsyncIterator[Peer]:
    """A ``BigQuerySink`` made from its URL on a dataset of its own, opened; closed
    after the block.  ``parameters`` are more URL parameters (``email=hash&raw=drop``,
    ``table_prefix=cio_``); ``salt`` is the personal-data salt ``email=hash`` needs."""
    from cio_webhooks.sinks import open_sink, parse_sink_url
    from cio_webhooks.sinks.bigquery import BigQuerySink

    url = f"bigquery://{PROJECT}/{new_dataset()}?api_endpoint={emulator.endpoint}"
    sink = open_sink(parse_sink_url(f"{url}&{parameters}" if parameters else url, salt=salt))
    assert isinstance(sink, BigQuerySink)
    await sink.open()
    reader = Reader(emulator.endpoint, sink.dataset, sink.table_prefix)
    try:
        yield Peer(sink, reader.events, reader.deliveries, reader)
    finally:
        await sink.close()
