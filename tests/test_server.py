"""The real service: `cio-webhooks serve` as a subprocess on 127.0.0.1.

Includes the crash test: a server under concurrent load is SIGKILLed, restarted,
and every event that was answered 2xx must be in the inbox.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from cio_webhooks.testing import free_port, make_event, signed_request, wait_until_listening

from .conftest import KEY

BIN = Path(sys.executable).parent / "cio-webhooks"


@dataclass
class Server:
    data_dir: Path
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    #: Soft and hard open-files limit of the server process (as ``ulimit -n``).
    open_files: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/customerio"

    def start(self) -> Server:
        env = {**os.environ, "CIO_WEBHOOKS_SIGNING_KEYS": KEY, **self.env}
        self.proc = subprocess.Popen(
            [
                str(BIN),
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                *self.extra,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=self._limit_open_files if self.open_files else None,
        )
        try:
            wait_until_listening(self.port, self.proc, timeout=20)
        except RuntimeError as exc:
            stderr = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""  # type: ignore[union-attr]
            raise RuntimeError(f"{exc}: {stderr}") from None
        return self

    def _limit_open_files(self) -> None:
        assert self.open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        assert self.proc is not None
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err.decode()

    def inbox_ids(self) -> set[str]:
        with sqlite3.connect(self.data_dir / "inbox.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            return {row[0] for row in db.execute("SELECT event_id FROM events")}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data").start()
    yield srv
    if srv.proc and srv.proc.poll() is None:
        srv.stop()


async def load(url: str, prefix: str, *, concurrency: int, stop: asyncio.Event) -> dict[str, int]:
    """Post unique signed events until ``stop``; return event_id -> HTTP status (0: no answer)."""
    results: dict[str, int] = {}
    counter = iter(range(10**9))

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            event_id = f"{prefix}-{next(counter)}"
            body, headers = signed_request(make_event(event_id), key=KEY)
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    results[event_id] = response.status
            except (aiohttp.ClientError, OSError):
                results[event_id] = 0
                await asyncio.sleep(0.01)

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return results


def test_send_command_posts_signed_samples_end_to_end(server: Server, tmp_path: Path) -> None:
    sample = tmp_path / "bounce.json"
    sample.write_text(json.dumps(make_event("sent-by-cli", metric="bounced")))
    done = subprocess.run(
        [str(BIN), "send", str(sample), "--url", server.url, "--signing-key", KEY],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert '200 {"ok":true,"status":"stored"}' in done.stdout
    wrong = subprocess.run(
        [str(BIN), "send", str(sample), "--url", server.url, "--signing-key", "wrong"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert wrong.returncode == 1
    assert "401" in wrong.stdout
    # The warehouse loader runs in the same process and catches up on its own.
    deadline = time.monotonic() + 10
    rows: list[tuple[str, str]] = []
    while time.monotonic() < deadline and not rows:
        if (server.data_dir / "warehouse.db").exists():
            with sqlite3.connect(server.data_dir / "warehouse.db") as wh:
                rows = wh.execute("SELECT event_id, metric FROM events").fetchall()
        time.sleep(0.05)
    assert rows == [("sent-by-cli", "bounced")]


def test_user_handlers_run_in_the_served_process(tmp_path: Path) -> None:
    module = tmp_path / "my_hooks.py"
    marker = tmp_path / "seen.txt"
    module.write_text(
        "from cio_webhooks import Router\n"
        "router = Router()\n"
        "@router.on('email.bounced')\n"
        "def record(event):\n"
        f"    open({str(marker)!r}, 'a').write(event.event_id + '\\n')\n"
    )
    srv = Server(
        tmp_path / "data",
        extra=["--handlers", "my_hooks:router"],
        env={"PYTHONPATH": str(tmp_path)},
    ).start()
    try:
        for event_id, metric in [("b1", "bounced"), ("d1", "delivered"), ("b1", "bounced")]:
            body, headers = signed_request(make_event(event_id, metric=metric), key=KEY)
            asyncio.run(_post(srv.url, body, headers))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not marker.exists():
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        srv.stop()
    assert marker.read_text().split() == ["b1"]


async def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as response,
    ):
        return response.status


def test_bad_handlers_spec_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            str(BIN),
            "serve",
            "--data-dir",
            str(tmp_path),
            "--signing-key",
            KEY,
            "--handlers",
            "no_such_module:router",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "cannot import 'no_such_module'" in done.stderr
    assert "Traceback" not in done.stderr


def test_sigterm_drains_in_flight_requests_and_stops_cleanly(server: Server) -> None:
    async def scenario() -> dict[str, int]:
        stop = asyncio.Event()
        task = asyncio.create_task(load(server.url, "term", concurrency=16, stop=stop))
        await asyncio.sleep(1.0)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(1.0)
        stop.set()
        return await task

    results = asyncio.run(scenario())
    assert server.proc is not None
    rc = server.proc.wait(timeout=30)
    err = server.proc.stderr.read().decode()  # type: ignore[union-attr]
    acked = {e for e, status in results.items() if status == 200}
    assert acked, "the load never got an answer"
    assert set(results.values()) <= {200, 0}  # answered 2xx, or refused after SIGTERM
    assert rc in (0, -signal.SIGTERM)
    assert "Traceback" not in err
    assert acked <= server.inbox_ids()


@pytest.mark.parametrize("round_", [1, 2])
def test_sigkill_under_load_loses_no_acked_event(tmp_path: Path, round_: int) -> None:
    srv = Server(tmp_path / "data").start()

    async def scenario() -> dict[str, int]:
        stop = asyncio.Event()
        task = asyncio.create_task(load(srv.url, f"kill{round_}", concurrency=48, stop=stop))
        await asyncio.sleep(2.0)
        assert srv.proc is not None
        srv.proc.kill()  # SIGKILL: no drain, no shutdown hooks
        await asyncio.sleep(0.3)
        stop.set()
        return await task

    results = asyncio.run(scenario())
    srv.proc.wait(timeout=10)  # type: ignore[union-attr]
    acked = {e for e, status in results.items() if status == 200}
    assert len(acked) > 100, "too little load to mean anything"
    assert set(results.values()) <= {200, 0}

    restarted = Server(srv.data_dir, port=srv.port).start()  # recovers the WAL on open
    try:
        stored = restarted.inbox_ids()
        missing = acked - stored
        assert not missing, f"{len(missing)} acked events lost, e.g. {sorted(missing)[:3]}"
        # And it keeps working after the crash.
        body, headers = signed_request(make_event(f"after-{round_}"), key=KEY)
        assert asyncio.run(_post(restarted.url, body, headers)) == 200
    finally:
        restarted.stop()


@pytest.mark.parametrize("named_by", ["data-dir", "store", "postgresql"])
def test_worker_processes_what_a_receive_only_server_stored(
    tmp_path: Path, named_by: str, request: pytest.FixtureRequest
) -> None:
    module = tmp_path / "worker_hooks.py"
    marker = tmp_path / "handled.txt"
    module.write_text(
        "from cio_webhooks import Router\n"
        "router = Router()\n"
        "@router.on('*')\n"
        "def record(event):\n"
        f"    open({str(marker)!r}, 'a').write(event.event_id + '\\n')\n"
    )
    data = tmp_path / "data"
    # The same receiver/worker split on the store of --data-dir, of --store, and on
    # the real PostgreSQL.
    store: list[str] = []
    if named_by == "store":
        store = ["--store", f"sqlite://{data / 'inbox.db'}"]
    elif named_by == "postgresql":
        store = ["--store", str(request.getfixturevalue("pg_url"))]
    srv = Server(data, extra=["--no-dispatch", *store]).start()
    try:
        for i in range(3):
            body, headers = signed_request(make_event(f"w{i}"), key=KEY)
            assert asyncio.run(_post(srv.url, body, headers)) == 200
    finally:
        srv.stop()
    assert not marker.exists()  # --no-dispatch: stored, not handled
    worker = subprocess.Popen(
        [str(BIN), "worker", "--data-dir", str(data), *store, "--handlers", "worker_hooks:router"],
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if marker.exists() and len(marker.read_text().split()) == 3:
                break
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    assert sorted(marker.read_text().split()) == ["w0", "w1", "w2"]
    assert worker.returncode == 0
    assert "Traceback" not in err.decode()


def test_unusable_data_path_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = subprocess.run(
        [
            str(BIN),
            "serve",
            "--db",
            str(blocker / "inbox.db"),
            "--signing-key",
            KEY,
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 3
    assert f"cannot open {blocker / 'inbox.db'}: a parent is not a directory" in done.stderr
    assert "Traceback" not in done.stderr


def test_authentic_hostile_requests_are_never_refused_by_the_real_server(
    tmp_path: Path,
) -> None:
    from multidict import CIMultiDict

    server = Server(tmp_path / "data", extra=["--dedupe-days", "10"]).start()
    now = int(time.time())

    def body(event_id: str, timestamp: str = "1700000000", subject: bytes = b"Hi") -> bytes:
        raw = json.dumps(make_event(event_id, subject="SUBJECT")).encode()
        return raw.replace(b"1700000000", timestamp.encode()).replace(b"SUBJECT", subject)

    deep = b"[" * 981 + b"]" * 981
    cases = {
        "nan": (body("nan", '"nan"'), now),
        "inf": (body("inf", '"Infinity"'), now),
        "huge": (body("huge", "1e308"), now),
        "int64": (body("int64", "9223372036854775808"), now),
        "utf8": (body("utf8", subject=b"\xc0\xaf\xff"), now),
        "deep": (body("deep").replace(b'"Hi"', deep).replace(b'"SUBJECT"', deep), now),
        "late": (body("late"), now - 3 * 86400),
        "stale": (body("stale"), now - 12 * 86400),  # beyond --dedupe-days 10
    }

    async def scenario() -> tuple[dict[str, int], int, str]:
        statuses: dict[str, int] = {}
        async with aiohttp.ClientSession() as session:
            for name, (raw, ts) in cases.items():
                _, headers = signed_request(raw, key=KEY, timestamp=ts)
                async with session.post(server.url, data=raw, headers=headers) as response:
                    statuses[name] = response.status
            raw = body("twice")
            _, headers = signed_request(raw, key=KEY, timestamp=now)
            repeated = CIMultiDict(headers)
            repeated.add("X-CIO-Signature", headers["X-CIO-Signature"])
            async with session.post(server.url, data=raw, headers=repeated) as response:
                twice = response.status
            metrics_url = server.url.replace("/webhooks/customerio", "/metrics")
            async with session.get(metrics_url) as response:
                metrics = await response.text()
        return statuses, twice, metrics

    try:
        statuses, twice, metrics = asyncio.run(scenario())
    finally:
        server.stop()
    assert statuses == dict.fromkeys(cases, 200)
    assert twice == 401
    assert 'outcome="late"} 1' in metrics
    assert 'outcome="stale"} 1' in metrics
    stored = server.inbox_ids()
    assert {"nan", "inf", "huge", "int64", "utf8", "late"} <= stored
    assert "stale" not in stored
    assert "twice" not in stored


HALF_HEAD = b"POST /webhooks/customerio HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1\r\n"


def _connect(srv: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.port), timeout=60)


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _signed_post(srv: Server, event_id: str) -> int:
    body, headers = signed_request(make_event(event_id), key=KEY)
    return asyncio.run(_post(srv.url, body, headers))


def test_half_sent_requests_are_closed_after_the_read_timeout(tmp_path: Path) -> None:
    srv = Server(tmp_path / "data", extra=["--read-timeout", "0.5"]).start()
    try:
        silent, half_head, half_body = (_connect(srv) for _ in range(3))
        half_head.sendall(HALF_HEAD)
        half_body.sendall(HALF_HEAD + b"Content-Length: 1000\r\n\r\n{")
        assert _answer(silent) == b""  # nothing asked: closed without an answer
        assert _answer(half_head).startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert _answer(half_body) == b""  # the handler waiting for the body sees a disconnect
        assert _signed_post(srv, "after-slow-clients") == 200
    finally:
        _, err = srv.stop()
    assert "event=connection_closed reason=read_timeout phase=head" in err
    assert "event=connection_closed reason=read_timeout phase=body" in err
    assert srv.inbox_ids() == {"after-slow-clients"}


def _kept_alive_post(event_id: str) -> bytes:
    body, headers = signed_request(make_event(event_id), key=KEY)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (
        b"POST /webhooks/customerio HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"{head}Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def test_a_kept_alive_connection_gets_whole_answers_and_a_full_read_time_per_request(
    tmp_path: Path,
) -> None:
    srv = Server(tmp_path / "data", extra=["--read-timeout", "1"]).start()
    try:
        sock = _connect(srv)
        sock.sendall(_kept_alive_post("kept-alive-1"))
        # Head and body leave in one write, so one read holds the whole answer.
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert answer.endswith(b'{"ok":true,"status":"stored"}')
        time.sleep(0.6)
        # The first request's read time would be up 0.4 s into this one: the second
        # has its own second, so its body may still come 0.6 s after its head.
        second = _kept_alive_post("kept-alive-2")
        sock.sendall(second[:-10])
        time.sleep(0.6)
        sock.sendall(second[-10:])
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        srv.stop()
    assert srv.inbox_ids() == {"kept-alive-1", "kept-alive-2"}


def test_an_oversized_request_head_is_answered_431(tmp_path: Path) -> None:
    srv = Server(tmp_path / "data", extra=["--max-header-size", "4096"]).start()
    try:
        whole = _connect(srv)  # a complete head, in one piece
        whole.sendall(HALF_HEAD + b"X-Big: " + b"a" * 5000 + b"\r\nContent-Length: 2\r\n\r\n{}")
        endless = _connect(srv)  # a head that never ends
        endless.sendall(HALF_HEAD + b"X-Big: " + b"a" * 5000)
        for sock in (whole, endless):
            assert _answer(sock).startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        assert _signed_post(srv, "normal-head") == 200
    finally:
        srv.stop()


def test_an_oversized_head_pipelined_after_a_request_in_one_write_is_answered_431(
    tmp_path: Path,
) -> None:
    # The second head begins after the first body, inside the same read: its size is
    # still checked, though the bytes counted since a head began were reset in between.
    srv = Server(tmp_path / "data", extra=["--max-header-size", "4096"]).start()
    try:
        sock = _connect(srv)
        big = HALF_HEAD + b"X-Big: " + b"a" * 5000 + b"\r\nContent-Length: 2\r\n\r\n{}"
        sock.sendall(_kept_alive_post("before-the-big-head") + big)
        assert b"HTTP/1.1 431 Request Header Fields Too Large\r\n" in _answer(sock)
    finally:
        srv.stop()


def test_a_signed_post_succeeds_while_hundreds_of_slowloris_connections_are_open(
    tmp_path: Path,
) -> None:
    srv = Server(tmp_path / "data", extra=["--read-timeout", "120"]).start()
    attackers: list[socket.socket] = []
    try:
        for _ in range(300):
            sock = _connect(srv)
            sock.sendall(HALF_HEAD)
            attackers.append(sock)
        for sock in attackers:  # each trickles one more header line, as slowloris does
            sock.sendall(b"X-More: 1\r\n")
        assert _signed_post(srv, "during-slowloris") == 200
        for sock in attackers:  # ...and they were all still open meanwhile
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in attackers:
            sock.close()
        srv.stop()
    assert srv.inbox_ids() == {"during-slowloris"}


def test_a_connection_cap_above_the_open_files_limit_is_lowered_to_fit(tmp_path: Path) -> None:
    # With 1000 connections allowed but only 256 files, accept() failed past ~250
    # and every new connection, Customer.io's included, was dropped.
    srv = Server(tmp_path / "data", extra=["--read-timeout", "120"], open_files=256).start()
    attackers: list[socket.socket] = []
    try:
        for _ in range(400):
            sock = _connect(srv)
            sock.sendall(HALF_HEAD)
            attackers.append(sock)
        assert _signed_post(srv, "past-the-open-files-limit") == 200
    finally:
        for sock in attackers:
            sock.close()
        _, err = srv.stop()
    assert "event=max_connections_lowered configured=1000 max_connections=192" in err
    assert srv.inbox_ids() == {"past-the-open-files-limit"}


def _raw_signed_post(sock: socket.socket, event_id: str) -> bytes:
    body, headers = signed_request(make_event(event_id), key=KEY)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    sock.sendall(
        b"POST /webhooks/customerio HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        + f"{head}Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return _answer(sock)


def test_past_the_connection_cap_the_oldest_idle_connection_makes_room(tmp_path: Path) -> None:
    srv = Server(tmp_path / "data", extra=["--max-connections", "20"]).start()
    try:
        held = [_connect(srv) for _ in range(20)]
        held[-1].sendall(HALF_HEAD)  # the newest is slow: it is not the one closed
        answer = _raw_signed_post(_connect(srv), "past-the-cap")
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert _answer(held[0]) == b""  # the oldest idle connection was closed for it
        held[-1].setblocking(False)
        with pytest.raises(BlockingIOError):
            held[-1].recv(1)
    finally:
        srv.stop()
    assert srv.inbox_ids() == {"past-the-cap"}


def test_past_the_connection_cap_with_none_idle_a_connection_gets_503(tmp_path: Path) -> None:
    srv = Server(tmp_path / "data", extra=["--max-connections", "20"]).start()
    busy = [_connect(srv) for _ in range(20)]
    try:
        for sock in busy:  # each in the middle of a body: none can be closed for room
            sock.sendall(HALF_HEAD + b"Expect: 100-continue\r\nContent-Length: 1000\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n")  # head was read
            sock.sendall(b"{")
        one_more = _connect(srv)
        assert _answer(one_more).startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    finally:
        for sock in busy:
            sock.close()
        _, err = srv.stop()
    assert "event=connection_refused reason=max_connections limit=20" in err


def _stderr_until(proc: subprocess.Popen[bytes], text: str, timeout: float = 30) -> str:
    """What ``proc`` wrote to stderr up to the line holding ``text``."""
    assert proc.stderr is not None
    out = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.1)
        if ready:
            chunk = os.read(proc.stderr.fileno(), 65536)
            if not chunk:
                break
            out += chunk
    return out.decode()


def test_first_run_prints_the_real_port_and_send_uses_the_generated_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIO_WEBHOOKS_")}
    proc = subprocess.Popen(
        [str(BIN), "serve", "--port", "0", "--data-dir", str(data)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        banner = _stderr_until(proc, "listening on")
        listening = re.search(
            r"listening on (http://127\.0\.0\.1:(\d+)/webhooks/customerio)", banner
        )
        assert listening, banner
        url, port = listening.group(1), int(listening.group(2))
        assert port != 0
        assert f"send examples/email_delivered.json --url {url} --data-dir {data}" in banner
        dashboard = _stderr_until(proc, "dashboard on")
        assert f"dashboard on http://127.0.0.1:{port}/ui/ (no login: this machine only)" in (
            dashboard
        )
        sample = tmp_path / "event.json"
        sample.write_text(json.dumps(make_event("first-run")))
        sent = subprocess.run(
            [str(BIN), "send", str(sample), "--url", url, "--data-dir", str(data)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert sent.returncode == 0, sent.stderr
        assert '200 {"ok":true,"status":"stored"}' in sent.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_a_busy_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                str(BIN),
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path),
                "--signing-key",
                KEY,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1
    assert (
        done.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def test_two_receivers_share_a_port_and_one_answers_while_the_other_is_down(
    tmp_path: Path, pg_url: str
) -> None:
    extra = ["--no-dispatch", "--reuse-port", "--store", pg_url]
    first = Server(tmp_path / "a", extra=extra).start()
    second = Server(tmp_path / "b", extra=extra, port=first.port).start()
    # The port answered before the second started: wait for it to say it listens.
    assert second.proc is not None
    assert second.proc.stderr is not None
    ready, _, _ = select.select([second.proc.stderr], [], [], 20)
    assert ready
    assert b"listening on" in second.proc.stderr.readline()
    try:
        acked = []
        for i in range(20):
            body, headers = signed_request(make_event(f"r{i}"), key=KEY)
            if asyncio.run(_post(first.url, body, headers)) == 200:
                acked.append(f"r{i}")
        first.stop(signal.SIGKILL)
        for i in range(20, 40):  # only the second listens now: nothing is refused
            body, headers = signed_request(make_event(f"r{i}"), key=KEY)
            assert asyncio.run(_post(first.url, body, headers)) == 200
            acked.append(f"r{i}")
    finally:
        for srv in (first, second):
            if srv.proc and srv.proc.poll() is None:
                srv.stop()
    assert len(acked) == 40
    done = subprocess.run(
        [str(BIN), "events", "export", "--store", pg_url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(line)["event_id"] for line in done.stdout.splitlines()) == sorted(
        acked
    )
