"""Many receivers and workers on one store, SIGKILLed at random under signed load.

    .venv/bin/python bench/crash_many.py [--receivers 2] [--workers 2] [--events 2000]
        [--kills 8] [--store-args '--db WORKDIR/inbox.db'] [--seed 1] [--workdir DIR]

Starts the fake Customer.io (in this process, on 127.0.0.1), ``--receivers``
``cio-webhooks serve --no-dispatch`` and ``--workers`` ``cio-webhooks worker``
as subprocesses, all on the one store that ``--store-args`` names (the CLI
arguments every command gets: ``--db PATH`` today, ``--store URL`` once the
PostgreSQL store lands), with the default policies pointed at the fake.

It posts ``--events`` signed events (a share of spam complaints, one person each,
so each makes exactly one Track call, ``PUT /customers/{person}``; the rest
delivered/opened, which no rule wants) from ``--concurrency`` connections at
``--rate`` events/s, round-robin over the receivers; an event answered anything
but 2xx, or not at all, is sent again to the next receiver, as Customer.io
retries.  Meanwhile it SIGKILLs a receiver or a worker ``--kills`` times (seeded;
half of the kills each, at spread-out moments; a worker is killed while Track
calls are in flight, when there are some) and restarts it at once (a receiver on
the same port).  Then it waits until the store has nothing pending or retrying
(``stats --json``), stops everything and checks, through the CLI
(``events export``, ``stats``, ``dlq list``, ``actions list``):

- every acked event is stored exactly once;
- every event is handled (dead letters are counted, and fail the run);
- Track calls per (event, rule): a histogram {calls: events}; a repeat is allowed
  only in the documented crash window (a worker killed after Customer.io took the
  call and before the ledger recorded it), so each repeat must follow a call that a
  worker kill caught: sent from the killed worker's sockets (their ports are read
  from Linux ``/proc`` just before the kill) and not answered before the kill (give
  or take ``CRASH_GRACE``);
- audit rows (``actions list``) against the calls.

A killed worker's claims come back when their lease runs out (``Dispatcher.lease``,
``DEFAULT_LEASE``: 30 s, kept alive by a heartbeat only while the worker lives), so a
run with worker kills lasts at least that long after the last one.  Exits 1 when an
invariant does not hold.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from cio_webhooks.customerio.fake import FakeCustomerIO
from cio_webhooks.testing import free_port, make_event, signed_request

KEY = "bench-crash-many-signing-key-0123456789"
SITE_ID = "crash-site"
TRACK_KEY = "crash-track-key"
BIN = Path(sys.executable).parent / "cio-webhooks"
WEBHOOK_PATH = "/webhooks/customerio"
#: The default rule a spam complaint triggers (one Track call: PUT /customers/{person}).
SPAM_RULE = "spam-complaint-unsubscribe"
PERSON_PATH = "/api/v1/customers/"
#: Seconds after a worker kill in which a request of its sockets still counts as sent
#: before it: the fake reads a request a little after the worker wrote it.
CRASH_GRACE = 1.0


@dataclass(frozen=True)
class Config:
    """One run.  ``store_args`` are the CLI arguments naming the store, given to every
    ``cio-webhooks`` command (empty: ``--db WORKDIR/inbox.db``)."""

    receivers: int = 2
    workers: int = 2
    events: int = 200
    kills: int = 4
    store_args: tuple[str, ...] = ()
    spam_share: float = 0.5  # of the events: spam complaints, one Track call each
    rate: float = 100.0  # events offered per second (spreads the kills over the load)
    concurrency: int = 32  # requests in flight
    stall: float = 0.2  # seconds the fake takes to answer a Track call
    seed: int = 1
    settle_timeout: float = 600.0  # seconds, after the load, for every event to be handled
    extra_env: tuple[tuple[str, str], ...] = ()  # more CIO_WEBHOOKS_* for every process


@dataclass
class WatchedFake(FakeCustomerIO):
    """The fake Customer.io, also knowing which calls it is answering right now, from
    which client port, and when it answered each: what a killed worker had in flight
    (Customer.io took those calls; their answer and the ledger's record of it may never
    come)."""

    #: (client port, path) -> calls being answered
    answering: collections.Counter[tuple[int, str]] = field(default_factory=collections.Counter)
    #: every call: (arrived, answered (monotonic), client port, path), in answer order
    timeline: list[tuple[float, float, int, str]] = field(default_factory=list)

    async def _answer(
        self, request: web.Request, handler: Any
    ) -> web.StreamResponse:  # observes, then answers exactly as the fake does
        peer = request.transport.get_extra_info("peername") if request.transport else None
        call = (int(peer[1]) if peer else 0, request.path)
        self.answering[call] += 1
        arrived = time.monotonic()
        try:
            return await super()._answer(request, handler)
        finally:
            self.timeline.append((arrived, time.monotonic(), *call))
            self.answering[call] -= 1
            if not self.answering[call]:
                del self.answering[call]

    def track_calls(self, ports: set[int] | None = None) -> set[str]:
        """The Track person paths being answered (to clients on ``ports`` only, if given)."""
        return {
            path
            for port, path in self.answering
            if path.startswith(PERSON_PATH) and (ports is None or port in ports)
        }


def tcp_ports(pid: int) -> set[int]:
    """The local TCP ports of the sockets process ``pid`` holds (Linux ``/proc``; empty
    elsewhere): which calls at the fake come from that worker."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[len("socket:[") : -1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@dataclass
class Member:
    """One process of the fleet: a receiver (with its port) or a worker."""

    kind: str  # "receiver" | "worker"
    index: int
    port: int = 0
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    died: list[int] = field(default_factory=list)  # exit codes of exits nobody asked for

    @property
    def name(self) -> str:
        return f"{self.kind}{self.index}"


@dataclass
class Kill:
    at: float  # seconds since the load started
    member: str
    restart_s: float  # until it ran again (a receiver: until it listened)
    killed_at: float = 0.0  # time.monotonic()
    ports: frozenset[int] = frozenset()  # a worker's sockets' local ports at the kill
    caught: int = 0  # a worker's Track calls caught in the crash window (caught_calls)
    unanswered: int = 0  # of those, still unanswered at the kill


@dataclass
class Report:
    """What a run measured; ``problems`` lists the invariants that did not hold."""

    config: Config
    store_args: tuple[str, ...]
    sent: int = 0
    acked: int = 0
    never_acked: int = 0
    answers: dict[str, int] = field(default_factory=dict)  # status (or "no answer") -> count
    kills: list[Kill] = field(default_factory=list)
    stored: int = 0
    stored_twice: int = 0
    acked_missing: int = 0
    stored_not_acked: int = 0
    states: dict[str, int] = field(default_factory=dict)
    dead: int = 0
    unexpected_exits: dict[str, list[int]] = field(default_factory=dict)
    spam_events: int = 0
    histogram: dict[int, int] = field(default_factory=dict)  # calls per (event, rule) -> events
    repeats: int = 0  # calls beyond the first, all (event, rule)
    repeats_in_crash_window: int = 0
    repeats_outside: int = 0
    calls_caught_by_worker_kills: int = 0  # Track calls in the crash window (caught_calls)
    other_track_calls: int = 0  # to a person no spam event names (should be none)
    track_non_2xx: int = 0
    audit_rows: dict[str, int] = field(default_factory=dict)  # status -> rows
    events_without_one_ok_audit_row: int = 0
    load_s: float = 0.0
    settle_s: float = 0.0
    total_s: float = 0.0
    settled: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def worker_kills(self) -> int:
        return sum(k.member.startswith("worker") for k in self.kills)

    def lines(self) -> list[str]:
        c = self.config
        kills = ", ".join(
            f"{k.member}@{k.at:.1f}s"
            + (f" ({k.caught} calls caught, {k.unanswered} unanswered)" if k.ports else "")
            for k in self.kills
        )
        hist = ", ".join(f"{n}: {self.histogram[n]}" for n in sorted(self.histogram))
        audit = ", ".join(f"{s} {n}" for s, n in sorted(self.audit_rows.items())) or "none"
        return [
            f"store: {shlex.join(self.store_args)}",
            f"fleet: {c.receivers} receivers, {c.workers} workers; seed {c.seed};"
            f" {c.events} events at {c.rate:g}/s, {c.concurrency} in flight;"
            f" Track answers stalled {c.stall:g} s",
            f"kills ({len(self.kills)}, {self.worker_kills} of workers): {kills or 'none'}",
            f"load: {self.sent} events sent, {self.acked} acked, {self.never_acked} never acked;"
            f" answers {dict(sorted(self.answers.items()))}; {self.load_s:.1f} s",
            f"settled: {'yes' if self.settled else 'NO'} {self.settle_s:.1f} s after the load"
            f" (total {self.total_s:.1f} s); states {self.states}",
            f"stored: {self.stored} events; acked but missing {self.acked_missing};"
            f" stored twice {self.stored_twice}; stored but never acked {self.stored_not_acked};"
            f" dead letters {self.dead}",
            f"Track calls per (event, rule) over {self.spam_events} spam complaints: {{{hist}}};"
            f" repeats {self.repeats} (in the crash window {self.repeats_in_crash_window},"
            f" outside it {self.repeats_outside}); calls the worker kills caught"
            f" {self.calls_caught_by_worker_kills}, of them unanswered at the kill"
            f" {sum(k.unanswered for k in self.kills)}; other Track calls"
            f" {self.other_track_calls};"
            f" non-2xx {self.track_non_2xx}",
            f"audit rows: {audit}; events without exactly one ok row"
            f" {self.events_without_one_ok_audit_row}",
            f"unexpected exits: {self.unexpected_exits or 'none'}",
            "verdict: " + ("OK" if not self.problems else "FAIL: " + "; ".join(self.problems)),
        ]


class Fleet:
    """The receivers and workers, started, killed and restarted as subprocesses."""

    def __init__(self, config: Config, store_args: Sequence[str], workdir: Path, track_url: str):
        self.store_args = list(store_args)
        self.workdir = workdir
        self.env = {
            **os.environ,
            "CIO_WEBHOOKS_SIGNING_KEYS": KEY,
            "CIO_WEBHOOKS_TRACK_SITE_ID": SITE_ID,
            "CIO_WEBHOOKS_TRACK_API_KEY": TRACK_KEY,
            "CIO_WEBHOOKS_TRACK_URL": track_url,
            "CIO_WEBHOOKS_TRACK_RATE": "1000",
            "CIO_WEBHOOKS_RETRY_BASE": "1",
            "CIO_WEBHOOKS_LOG_LEVEL": "warning",
            **dict(config.extra_env),
        }
        self.receivers = [Member("receiver", i, port=free_port()) for i in range(config.receivers)]
        self.workers = [Member("worker", i) for i in range(config.workers)]

    @property
    def members(self) -> list[Member]:
        return [*self.receivers, *self.workers]

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{m.port}{WEBHOOK_PATH}" for m in self.receivers]

    async def start(self, member: Member) -> None:
        if member.kind == "receiver":
            argv = ["serve", "--no-dispatch", "--port", str(member.port)]
        else:
            argv = ["worker"]
        with (self.workdir / f"{member.name}.log").open("ab") as log:
            member.proc = await asyncio.create_subprocess_exec(
                str(BIN),
                *argv,
                *self.store_args,
                env=self.env,
                cwd=self.workdir,
                stdout=log,
                stderr=log,
            )
        member.starts += 1
        if member.kind == "receiver":
            await self._listening(member)

    async def _listening(self, member: Member, timeout: float = 60.0) -> None:
        assert member.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if member.proc.returncode is not None:
                raise RuntimeError(
                    f"{member.name} exited with {member.proc.returncode};"
                    f" see {self.workdir / member.name}.log"
                )
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", member.port)
                writer.close()
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{member.name} did not listen within {timeout:g} s")

    async def kill(self, member: Member) -> None:
        """SIGKILL, and reap at once: a zombie's pid still answers ``kill(pid, 0)``,
        and the ledger would take the dead worker's in-flight call for a live one."""
        assert member.proc is not None
        if member.proc.returncode is not None:
            member.died.append(member.proc.returncode)
        else:
            member.proc.kill()
        await member.proc.wait()

    def unexpected_exits(self) -> dict[str, list[int]]:
        for m in self.members:
            if m.proc is not None and m.proc.returncode is not None:
                m.died.append(m.proc.returncode)
                m.proc = None
        return {m.name: m.died for m in self.members if m.died}

    async def stop(self, timeout: float = 60.0) -> None:
        running = [m.proc for m in self.members if m.proc and m.proc.returncode is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        for proc in running:
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def cli(store_args: Sequence[str], *argv: str) -> str:
    """Run ``cio-webhooks ARGV STORE_ARGS``; its stdout (RuntimeError when it fails)."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN),
        *argv,
        *store_args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"cio-webhooks {' '.join(argv)}: {err.decode(errors='replace')}")
    return out.decode()


def plan_events(config: Config, rng: random.Random) -> list[dict[str, Any]]:
    """The events to send: spam complaints (person ``p-<event_id>``, one each) and
    deliveries/opens (which no default rule wants), shuffled."""
    spam = round(config.events * config.spam_share)
    events = []
    for i in range(config.events):
        event_id = f"crash-{config.seed}-{i:06d}"
        if i < spam:
            events.append(make_event(event_id, "email", "spammed", person_id=f"p-{event_id}"))
        else:
            metric = "delivered" if i % 2 else "opened"
            events.append(make_event(event_id, "email", metric, person_id=f"q-{event_id}"))
    rng.shuffle(events)
    return events


async def post_all(
    events: list[dict[str, Any]], fleet: Fleet, config: Config, report: Report
) -> set[str]:
    """Send every event until some receiver acks it (2xx); the acked event ids."""
    acked: set[str] = set()
    answers: collections.Counter[str] = collections.Counter()
    todo: asyncio.Queue[tuple[int, dict[str, Any]]] = asyncio.Queue()
    for n, event in enumerate(events):
        todo.put_nowait((n, event))
    started = time.monotonic()
    next_receiver = iter(range(10**12))
    urls = fleet.urls

    async def client(session: aiohttp.ClientSession) -> None:
        while not todo.empty():
            n, event = todo.get_nowait()
            await asyncio.sleep(max(0.0, started + n / config.rate - time.monotonic()))
            tries = 0
            while True:
                tries += 1
                body, headers = signed_request(event, key=KEY)
                url = urls[next(next_receiver) % len(urls)]
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        status = str(response.status)
                except (TimeoutError, aiohttp.ClientError, OSError):
                    status = "no answer"
                answers[status] += 1
                if status.startswith("2"):
                    acked.add(event["event_id"])
                    break
                # Customer.io retries a failed delivery; here, at once, on the next receiver
                await asyncio.sleep(min(1.0, 0.02 * tries))

    timeout = aiohttp.ClientTimeout(total=15)
    connector = aiohttp.TCPConnector(limit=config.concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(config.concurrency)))
    report.sent = len(events)
    report.acked = len(acked)
    report.never_acked = len(events) - len(acked)
    report.answers = dict(answers)
    return acked


async def kill_at_random(
    fleet: Fleet, fake: WatchedFake, config: Config, rng: random.Random, report: Report
) -> None:
    """SIGKILL ``config.kills`` members (half of them receivers, half workers, in a
    seeded order) at spread-out moments of the load and restart each at once; a worker
    once it has Track calls in flight (waiting up to 5 s for one).  Each kill goes to
    ``report.kills`` with, for a worker, the ports of its sockets at the kill."""
    load_s = config.events / config.rate
    kinds = ["receiver", "worker"] * (config.kills // 2 + 1)
    kinds = kinds[: config.kills]
    rng.shuffle(kinds)
    started = time.monotonic()
    for k, kind in enumerate(kinds):
        # within the first 80% of the load: spam complaints still arrive, calls are made
        moment = 0.8 * load_s * (k + rng.uniform(0.2, 0.9)) / max(1, config.kills)
        await asyncio.sleep(max(0.0, started + moment - time.monotonic()))
        pool = fleet.receivers if kind == "receiver" else fleet.workers
        if not pool:
            continue
        victim = rng.choice(pool)
        assert victim.proc is not None
        ports: set[int] = set()
        if kind == "worker":  # once it has Track calls in flight, if any come within 5 s
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                if fake.track_calls(tcp_ports(victim.proc.pid)):
                    break
                await asyncio.sleep(0.005)
            # Frozen first, then read: the worker runs on while /proc is read, and a
            # connection it opened in between was missing from its ports (under load,
            # calls on it were judged "outside the crash window").  A stopped process
            # opens nothing, and SIGKILL ends it all the same.
            os.kill(victim.proc.pid, signal.SIGSTOP)
            ports = tcp_ports(victim.proc.pid)
        killed_at = time.monotonic()
        await fleet.kill(victim)
        restart = time.monotonic()
        await fleet.start(victim)
        report.kills.append(
            Kill(
                killed_at - started,
                victim.name,
                time.monotonic() - restart,
                killed_at=killed_at,
                ports=frozenset(ports),
            )
        )


def caught_calls(fake: WatchedFake, kills: Sequence[Kill]) -> collections.Counter[str]:
    """Per Track path, how many of its calls a worker kill caught in the crash window:
    sent from the killed worker's sockets before the kill.  Whether it had recorded the
    outcome is not judged by time (under load, writing it can take seconds after the
    answer): a call whose outcome was recorded settles its (event, rule), so it is
    never repeated, and a repeat of a caught call is one the worker died before
    recording.  Sets each kill's ``caught`` and ``unanswered``."""
    caught: collections.Counter[str] = collections.Counter()
    for arrived, answered, port, path in fake.timeline:
        if not path.startswith(PERSON_PATH):
            continue
        for kill in kills:
            if (
                port in kill.ports
                and arrived <= kill.killed_at + CRASH_GRACE  # read by the fake a bit later
            ):
                kill.caught += 1
                kill.unanswered += answered >= kill.killed_at
                caught[path] += 1
                break
    return caught


async def settle(
    store_args: Sequence[str], expected: int, timeout: float
) -> tuple[bool, dict[str, Any]]:
    """Wait until the store holds ``expected`` events and none pending or retrying."""
    deadline = time.monotonic() + timeout
    while True:
        stats: dict[str, Any] = json.loads(await cli(store_args, "stats", "--json"))
        states = stats["states"]
        if stats["events"] >= expected and not states["pending"] and not states["retrying"]:
            return True, stats
        if time.monotonic() > deadline:
            return False, stats
        await asyncio.sleep(1.0)


async def verify(
    store_args: Sequence[str],
    events: list[dict[str, Any]],
    acked: set[str],
    fake: WatchedFake,
    report: Report,
) -> None:
    """Count, through the CLI and the fake's recorded requests, what the run left."""
    exported = [
        json.loads(line) for line in (await cli(store_args, "events", "export")).splitlines()
    ]
    ids = collections.Counter(row["event_id"] for row in exported)
    report.stored = len(ids)
    report.stored_twice = sum(1 for n in ids.values() if n > 1)
    report.acked_missing = len(acked - set(ids))
    report.stored_not_acked = len(set(ids) - acked)
    dead = json.loads(await cli(store_args, "dlq", "list", "--json", "--limit", "1000000"))
    report.dead = len(dead)

    spam = {
        e["event_id"]: PERSON_PATH + e["data"]["customer_id"]
        for e in events
        if e["metric"] == "spammed"
    }
    report.spam_events = len(spam)
    track = [r for r in fake.requests if r.path.startswith(PERSON_PATH)]
    report.track_non_2xx = sum(1 for r in track if not 200 <= r.status < 300)
    calls = collections.Counter(r.path for r in track if r.method == "PUT")
    report.other_track_calls = len(track) - sum(calls[path] for path in spam.values())
    report.histogram = dict(collections.Counter(calls[path] for path in spam.values()))
    caught = caught_calls(fake, report.kills)
    report.calls_caught_by_worker_kills = sum(caught.values())
    for path in spam.values():
        extra = max(0, calls[path] - 1)
        report.repeats += extra
        # A call a worker kill caught may be made once more; any other repeat is a
        # second call the ledger should have prevented.
        allowed = min(extra, caught[path])
        report.repeats_in_crash_window += allowed
        report.repeats_outside += extra - allowed

    audit = json.loads(await cli(store_args, "actions", "list", "--json", "--limit", "1000000"))
    report.audit_rows = dict(collections.Counter(row["status"] for row in audit))
    ok_rows = collections.Counter(
        row["event_id"] for row in audit if row["status"] == "ok" and row["rule"] == SPAM_RULE
    )
    report.events_without_one_ok_audit_row = sum(1 for e in spam if ok_rows[e] != 1)


def judge(report: Report) -> None:
    """The invariants; each one that does not hold is a line of ``report.problems``."""
    checks = [
        (report.never_acked == 0, f"{report.never_acked} events were never acked"),
        (report.settled, "events were still pending or retrying at the deadline"),
        (report.acked_missing == 0, f"{report.acked_missing} acked events are not stored"),
        (report.stored_twice == 0, f"{report.stored_twice} events are stored twice"),
        (report.dead == 0, f"{report.dead} dead letters"),
        (report.histogram.get(0, 0) == 0, f"{report.histogram.get(0, 0)} spam events got no call"),
        (report.repeats_outside == 0, f"{report.repeats_outside} repeats outside the crash window"),
        (
            report.repeats <= report.calls_caught_by_worker_kills,
            f"{report.repeats} repeats > {report.calls_caught_by_worker_kills} calls caught",
        ),
        (report.other_track_calls == 0, f"{report.other_track_calls} unexpected Track calls"),
        (
            report.events_without_one_ok_audit_row == 0,
            f"{report.events_without_one_ok_audit_row} spam events without one ok audit row",
        ),
        (not report.unexpected_exits, f"processes exited by themselves: {report.unexpected_exits}"),
    ]
    pending = sum(report.states.get(s, 0) for s in ("pending", "retrying"))
    checks.append((pending == 0, f"{pending} events pending or retrying"))
    report.problems = [problem for ok, problem in checks if not ok]


async def run(config: Config, workdir: Path) -> Report:
    """One run in ``workdir`` (logs of every process are kept there); see the module."""
    store_args = config.store_args or ("--db", str(workdir / "inbox.db"))
    report = Report(config, tuple(store_args))
    rng = random.Random(config.seed)
    events = plan_events(config, rng)
    began = time.monotonic()
    fake = WatchedFake(site_id=SITE_ID, track_key=TRACK_KEY, delay=config.stall)
    await fake.start()
    try:
        fleet = Fleet(config, store_args, workdir, fake.track_url)
        try:
            for member in fleet.receivers:  # a receiver creates the store; workers need one
                await fleet.start(member)
            for member in fleet.workers:
                await fleet.start(member)
            load_began = time.monotonic()
            killing = asyncio.create_task(kill_at_random(fleet, fake, config, rng, report))
            try:
                acked = await post_all(events, fleet, config, report)
            finally:
                await killing  # its restarts end before anything is stopped
            report.load_s = time.monotonic() - load_began
            settle_began = time.monotonic()
            report.settled, stats = await settle(store_args, len(acked), config.settle_timeout)
            report.settle_s = time.monotonic() - settle_began
            report.states = {s: n for s, n in stats["states"].items() if n}
            report.unexpected_exits = fleet.unexpected_exits()
        finally:
            await fleet.stop()
        await verify(store_args, events, acked, fake, report)
    finally:
        await fake.stop()
    report.total_s = time.monotonic() - began
    judge(report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    defaults = Config()
    parser.add_argument("--receivers", type=int, default=defaults.receivers)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument(
        "--store-args",
        default="",
        help="the store, as CLI arguments for every command, e.g. '--db /tmp/x/inbox.db'"
        " or '--store postgresql://root@127.0.0.1:5432/db?schema=s'"
        " [default: --db WORKDIR/inbox.db]",
    )
    parser.add_argument("--spam-share", type=float, default=defaults.spam_share)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="events per second")
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--stall", type=float, default=defaults.stall, help="Track answer, s")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--settle-timeout", type=float, default=defaults.settle_timeout)
    parser.add_argument("--workdir", type=Path, help="keep logs and data here [a temp dir]")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.events < 1 or args.receivers < 1 or args.workers < 1:
        parser.error("--rate, --events, --receivers and --workers must be positive")
    config = Config(
        receivers=args.receivers,
        workers=args.workers,
        events=args.events,
        kills=args.kills,
        store_args=tuple(shlex.split(args.store_args)),
        spam_share=args.spam_share,
        rate=args.rate,
        concurrency=args.concurrency,
        stall=args.stall,
        seed=args.seed,
        settle_timeout=args.settle_timeout,
    )
    with tempfile.TemporaryDirectory(prefix="crash-many-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = asyncio.run(run(config, workdir))
    print("\n".join(report.lines()))
    return 0 if not report.problems else 1


if __name__ == "__main__":
    sys.exit(main())
