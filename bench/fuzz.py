"""Hostile-input run against a real ``cio-webhooks serve`` on loopback.

    .venv/bin/python bench/fuzz.py --count 100000 --seed 1     # authentic, mutated bodies
    .venv/bin/python bench/fuzz.py --forged 10800 --seed 1     # forged requests

It starts ``cio-webhooks serve`` (a subprocess on 127.0.0.1, a fresh temporary data
directory, a known signing key), sends the requests over many concurrent
connections, prints the count of each HTTP status, checks what the inbox holds,
stops the server and removes the directory (``--keep`` keeps it).  Everything is
bounded: the count, the time spent sending (``--max-seconds``), each request's
time, the wait for the server.  The same ``--seed`` sends the same bodies.

Authentic mode (``--count``): every body is built from a ``tests/samples/*.json``
event with a fresh ``event_id`` and then mutated (see ``MUTATIONS``: type changes,
nan/inf/huge numbers, deep nesting, invalid UTF-8, truncation, duplicate keys,
bodies at and over the size limit, missing fields, non-objects, ...), and is
correctly signed.  The contract (FACTS.md §3): an authentic request is answered
200 (stored or quarantined), or 413 when the body is over ``--max-body``; never
another status.  Then the inbox and the quarantine are read back:

- every body answered 200 is there: its exact bytes, or (dedupe aside) an event
  or quarantine row with its ``event_id``;
- nothing is there that was not answered 200 (a 413'd or failed body is not kept);
- no ``event_id`` is held twice (inbox and quarantine together);
- with the dispatcher on (the default), the warehouse loader catches up with the
  inbox within ``--settle`` seconds (a body that poisons the loader stalls it).

Bodies that carry no readable ``event_id`` and are sent more than once (the empty
body, ``[]``, ...) may be quarantined once per request; they are counted apart.

Forged mode (``--forged``): requests with a valid body but a wrong key, a
timestamp other than the signed one, a truncated, uppercase, padded or non-hex
signature, missing or duplicate signature/timestamp headers, a tampered body, a
timestamp in a form other than plain ASCII digits.  Expected: every one 401, and
nothing stored.

Exit status: 0 when every check holds, 1 when one fails, 2 when the run could not
be made (the server did not start, a bad option).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDict

from cio_webhooks.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from cio_webhooks.testing import free_port

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "tests" / "samples"
KEY = "fuzz-signing-key-0123456789abcdef"
OTHER_KEY = "not-the-signing-key-0123456789ab"
PATH = "/webhooks/customerio"
DEFAULT_MAX_BODY = 2 * 1024 * 1024  # serve's default --max-body
#: Every authentic body starts with an event_id of its own, made of this and its number.
UNIQUE_ID_PREFIX = "fuzz-"

Json = Any
Mutation = Callable[[random.Random, dict[str, Any], int], bytes]


# -- building bodies ---------------------------------------------------------------------


def samples() -> list[dict[str, Any]]:
    """The sample events (JSON objects) under tests/samples."""
    found = []
    for path in sorted(SAMPLES.glob("*.json")):
        with contextlib.suppress(ValueError):
            value = json.loads(path.read_bytes())
            if isinstance(value, dict) and "event_id" in value:
                found.append(value)
    if not found:
        raise SystemExit(f"no sample events under {SAMPLES}")
    return found


def dump(value: Json) -> bytes:
    """Compact JSON; NaN/Infinity are written as the bare literals Python emits."""
    return json.dumps(value, separators=(",", ":"), allow_nan=True).encode()


def paths(value: Json, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every path inside ``value`` (not the root)."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield (*prefix, key)
            yield from paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield (*prefix, index)
            yield from paths(child, (*prefix, index))


def put(value: Json, path: tuple[str | int, ...], new: Json) -> None:
    target = value
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = new


def odd_value(rng: random.Random) -> Json:
    """A value of some other JSON type than the field expects."""
    return rng.choice(
        [
            {},
            [],
            {"nested": {"x": [1, "2", None]}},
            [1, "two", None, {"three": 3}],
            0,
            -1,
            rng.randrange(-(2**31), 2**31),
            "",
            "text",
            "12345",
            "true",
            "null",
            True,
            False,
            None,
            1.5,
        ]
    )


EXTREME_NUMBERS: list[Json] = [
    math.nan,
    math.inf,
    -math.inf,
    "nan",
    "inf",
    "Infinity",
    "-Infinity",
    1e308,
    -1e308,
    1e30,
    2**63,
    2**63 - 1,
    -(2**63) - 1,
    2**64,
    10**400,  # an integer literal no float can hold
    5e-324,
    -0.0,
    253402300800,  # 10000-01-01: past what datetime holds
    -62135596801,  # before year 1
    1e16,
    "1613063089",
    "",
]


def mut_valid(rng: random.Random, event: dict[str, Any], limit: int) -> bytes:
    return dump(event)


def mut_type_change(rng: random.Random, event: dict[str, Any], limit: int) -> bytes:
    for _ in range(rng.choice([1, 1, 2, 3])):
        path = rng.choice(list(paths(event)))
        put(event, path, odd_value(rng))
    return dump(event)


def mut_data_field_type(rng: random.Random, event: dict[str, Any], limit: int) -> bytes:
    """A sound envelope with one data field of an unexpected type."""
    data = event.setdefault("data", {})
    if not isinstance(data, dict):
        data = event["data"] = {}
    name = rng.choice(
        [
            "delivery_id",
            "customer_id",
            "campaign_id",
            "failure_message",
            "identifiers",
            "recipient",
            "href",
            "prefetched",
            "proxied",
            "machine",
            "subject",
            "email_address",
        ]
    )
    data[name] = odd_value(rng)
    return dump(event)


def mut_number(rng: random.Random, event: dict[str, Any], limit: int) -> bytes:
    numeric = [p for p in paths(event) if isinstance(_get(event, p), int | float)]
    path = rng.choice([("timestamp",), ("timestamp",), *numeric])
    put(event, path, rng.choice(EXTREME_NUMBERS))
    return dump(event)


def _get(value: Json, path: tuple[str | int, ...]) -> Json:
    for step in path:
        value = value[step]
    return value


def mut_deep(rng: random.Random, event: dict[str, Any], limit: int) -> bytes:
    depth = rng.choice([64, 500, 980, 981, 1000, 5000, 100_000])
    opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
    nested = opener * depth + b"1" + closer * depth
    where = rng.choice(["data", "extra", "data.identifiers"])
    marker = b'"__deep__"'
    if where == "data":
        event["data"] = "__deep__"
    elif where == "extra":
        event["extra"] = "__deep__"
    else:
        data = event.get("data")
        if isinstance(data, dict):
            data["identifiers"] = "__deep__"
        else:
            event["data"] = "__deep__"
    return dump(event).replace(marker, nested, 1)


INVALID_UTF8 = [
    b"\xff",
    b"\xfe\xff",
    b"\xc0\xaf",  # overlong '/'
    b"\xe0\x80\xaf",  # overlong, 3 bytes
    b"\xf0\x80\x80\xaf",  # overlong, 4 bytes
    b"\xed\xa0\x80",  # a UTF-16 surrogate encoded
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"\xc3",  # truncated sequence
    b"\x80\x80",  # lone continuation bytes
    b"\\ud800",  # a lone surrogate as a JSON escape
    b"\\udfff\\ud800",
    b"\x00",
]


def mut_invalid_utf8(rng: random.Random, event: dict[str, Any], limit: int) -> bytes:
    strings = [p for p in paths(event) if isinstance(_get(event, p), str)]
    path = rng.choice(strings or [("event_id",)])
    put(event, path, "__bad__")
    bad = b"".join(rng.choice(INVALID_UTF8) for _ in range(rng.randint(1, 3)))
    return dump(event).replace(b"__bad__", b"a" + bad + b"z", 1)


def mut_truncate(rng: random.Random, event: dict[str, Any], limit: int) -> bytes:
    body = dump(event)
    return body[: rng.randrange(1, len(body))]


def mut_duplicate_keys(rng: random.Random, event: dict[str, Any], limit: int) -> bytes:
    key = rng.choice(["event_id", "metric", "object_type", "timestamp", "data"])
    value = rng.choice([odd_value(rng), "duplicate", event.get(key)])
    body = dump(event)
    extra = b'"' + key.encode() + b'":' + dump(value)
    # at the front or at the back of the top-level object
    return b"{" + extra + b"," + body[1:] if rng.random() < 0.5 else body[:-1] + b"," + extra + b"}"


def mut_giant(rng: random.Random, event: dict[str, Any], limit: int) -> bytes:
    """A giant string: the body just under, at, or just over the size limit."""
    event.setdefault("data", {})
    if not isinstance(event["data"], dict):
        event["data"] = {}
    event["data"]["subject"] = ""
    base = len(dump(event))
    target = limit + rng.choice([-4096, -100, -1, 0, 1, 100, 65536])
    event["data"]["subject"] = "x" * max(0, target - base)
    return dump(event)


def mut_missing(rng: random.Random, event: dict[str, Any], limit: int) -> bytes:
    for key in rng.sample(["event_id", "object_type", "metric", "timestamp", "data"], k=1):
        event.pop(key, None)
    if rng.random() < 0.3:
        event.pop("event_id", None)
    return dump(event)


def mut_odd_event_id(rng: random.Random, event: dict[str, Any], limit: int) -> bytes:
    event["event_id"] = rng.choice(
        [
            "",
            " ",
            None,
            0,
            12345,
            1.5,
            True,
            [],
            {"id": "x"},
            event["event_id"] + "\x00",
            event["event_id"] * 4000,  # very long
            "é" + event["event_id"],
        ]
    )
    return dump(event)


NOT_OBJECTS = [
    b"",
    b" ",
    b"\n",
    b"null",
    b"true",
    b"0",
    b"-1e999",
    b'"a string"',
    b"[]",
    b"[{}]",
    b"{}",
    b"{",
    b"}",
    b"NaN",
    b"\xef\xbb\xbf{}",  # a UTF-8 byte order mark
    b"\x00\x00\x00\x00",
    b"<xml/>",
    b"event_id=1&metric=sent",
]


def mut_not_object(rng: random.Random, event: dict[str, Any], limit: int) -> bytes:
    choice = rng.randrange(len(NOT_OBJECTS) + 3)
    if choice < len(NOT_OBJECTS):
        return NOT_OBJECTS[choice]
    body = dump(event)
    if choice == len(NOT_OBJECTS):
        return b"[" + body + b"]"  # the event inside an array
    if choice == len(NOT_OBJECTS) + 1:
        return body + body  # two values
    return b"\xef\xbb\xbf" + body  # with a BOM


def mut_trailing(rng: random.Random, event: dict[str, Any], limit: int) -> bytes:
    return dump(event) + rng.choice([b"x", b"\x00", b" garbage", b",", b"}", b"\xff"])


def mut_big_values(rng: random.Random, event: dict[str, Any], limit: int) -> bytes:
    """Many keys, long keys, a huge array: large but under the limit."""
    kind = rng.randrange(3)
    if kind == 0:
        event["extra"] = list(range(rng.choice([1000, 50_000])))
    elif kind == 1:
        event["extra"] = {f"k{i}": i for i in range(rng.choice([1000, 20_000]))}
    else:
        event["k" * rng.choice([1000, 100_000])] = "v"
    return dump(event)


def mut_unicode(rng: random.Random, event: dict[str, Any], limit: int) -> bytes:
    strings = [p for p in paths(event) if isinstance(_get(event, p), str)]
    path = rng.choice(strings or [("event_id",)])
    put(event, path, rng.choice(["\u0000", "\u202e", "\U0001f4a9" * 50, "a\u0301", "[red]x[/]"]))
    return json.dumps(event, ensure_ascii=rng.random() < 0.5).encode()


def mut_combined(rng: random.Random, event: dict[str, Any], limit: int) -> bytes:
    """A type change, then an extreme number, then maybe invalid UTF-8."""
    body = json.loads(mut_type_change(rng, event, limit))
    body = json.loads(mut_number(rng, body, limit)) if isinstance(body, dict) else body
    if isinstance(body, dict) and rng.random() < 0.5:
        return mut_invalid_utf8(rng, body, limit)
    return dump(body)


#: name -> (weight, mutation).  Giant bodies are rare: each is about ``--max-body`` bytes.
MUTATIONS: dict[str, tuple[float, Mutation]] = {
    "valid": (4, mut_valid),
    "type_change": (14, mut_type_change),
    "data_field_type": (10, mut_data_field_type),
    "extreme_number": (12, mut_number),
    "deep_nesting": (4, mut_deep),
    "invalid_utf8": (10, mut_invalid_utf8),
    "truncated": (8, mut_truncate),
    "duplicate_keys": (6, mut_duplicate_keys),
    "giant": (0.1, mut_giant),
    "missing_field": (8, mut_missing),
    "odd_event_id": (6, mut_odd_event_id),
    "not_an_object": (4, mut_not_object),
    "trailing_bytes": (4, mut_trailing),
    "big_values": (0.5, mut_big_values),
    "unicode": (4, mut_unicode),
    "combined": (6, mut_combined),
}


@dataclass(frozen=True)
class Body:
    mutation: str
    data: bytes


def authentic_bodies(seed: int, count: int, limit: int) -> Iterator[Body]:
    """``count`` mutated bodies, the same for the same seed; each starts with its own event_id."""
    rng = random.Random(seed)
    bases = samples()
    names = list(MUTATIONS)
    weights = [MUTATIONS[name][0] for name in names]
    for i in range(count):
        event = json.loads(json.dumps(rng.choice(bases)))  # a deep copy
        event["event_id"] = f"{UNIQUE_ID_PREFIX}{seed}-{i:07d}"
        name = rng.choices(names, weights)[0]
        yield Body(name, MUTATIONS[name][1](rng, event, limit))


def readable_event_ids(body: bytes) -> frozenset[str]:
    """The ``event_id`` a lenient reader finds in ``body`` (dedupe is by it): every
    candidate when the key is there twice, since which one wins is the parser's choice."""
    text = body.decode("utf-8", "replace")
    try:
        if not isinstance(json.loads(text), dict):
            return frozenset()
        # Read again as (key, value) pairs, to see each event_id of the top-level object.
        top: list[tuple[str, Json]] = json.loads(text, object_pairs_hook=lambda items: items)
    except (ValueError, RecursionError):
        return frozenset()
    found = [value for key, value in top if key == "event_id"]
    # as the receiver reads it: a string or an integer, as text, stripped
    return frozenset(
        str(v).strip()
        for v in found
        if isinstance(v, str | int) and not isinstance(v, bool) and str(v).strip()
    )


# -- forged requests ---------------------------------------------------------------------

Headers = CIMultiDict[str]


def _headers(pairs: list[tuple[str, str]]) -> Headers:
    headers: Headers = CIMultiDict([("Content-Type", "application/json")])
    for name, value in pairs:
        headers.add(name, value)
    return headers


def forged_request(rng: random.Random, body: bytes, now: int) -> tuple[str, bytes, Headers]:
    """One forged request: (how it is forged, body, headers)."""
    ts = str(now)
    good = sign(body, ts, KEY)
    sig, stamp = SIGNATURE_HEADER, TIMESTAMP_HEADER
    kinds: dict[str, Callable[[], tuple[bytes, list[tuple[str, str]]]]] = {
        "wrong_key": lambda: (body, [(stamp, ts), (sig, sign(body, ts, OTHER_KEY))]),
        "other_timestamp": lambda: (body, [(stamp, str(now + 1)), (sig, good)]),
        "signed_other_timestamp": lambda: (body, [(stamp, ts), (sig, sign(body, now - 1, KEY))]),
        "truncated_signature": lambda: (body, [(stamp, ts), (sig, good[: rng.randrange(64)])]),
        "uppercase_signature": lambda: (body, [(stamp, ts), (sig, good.upper())]),
        # Leading/trailing spaces are not part of an HTTP field value (RFC 9110 §5.5): the
        # server's parser drops them, so such a request is authentic.  Padding inside is not.
        "padded_signature": lambda: (body, [(stamp, ts), (sig, good[:32] + " " + good[32:])]),
        "longer_signature": lambda: (body, [(stamp, ts), (sig, good + "0")]),
        "prefixed_signature": lambda: (body, [(stamp, ts), (sig, "sha256=" + good)]),
        "non_hex_signature": lambda: (body, [(stamp, ts), (sig, "g" * 64)]),
        "empty_signature": lambda: (body, [(stamp, ts), (sig, "")]),
        "missing_signature": lambda: (body, [(stamp, ts)]),
        "missing_timestamp": lambda: (body, [(sig, good)]),
        "missing_both": lambda: (body, []),
        "duplicate_signature": lambda: (
            body,
            [(stamp, ts), (sig, good), (sig, rng.choice([good, "0" * 64]))],
        ),
        "duplicate_timestamp": lambda: (body, [(stamp, ts), (stamp, ts), (sig, good)]),
        "tampered_body": lambda: (body + b" ", [(stamp, ts), (sig, good)]),
        "other_body": lambda: (b"{}", [(stamp, ts), (sig, good)]),
        # correctly signed over a timestamp that is not plain ASCII digits
        "signed_plus_timestamp": lambda: _signed_odd_timestamp(body, "+" + ts),
        "signed_underscore_timestamp": lambda: _signed_odd_timestamp(body, f"{ts[:4]}_{ts[4:]}"),
        "signed_negative_timestamp": lambda: _signed_odd_timestamp(body, "-" + ts),
        "signed_decimal_timestamp": lambda: _signed_odd_timestamp(body, ts + ".0"),
        "empty_timestamp": lambda: (body, [(stamp, ""), (sig, sign(body, "", KEY))]),
    }
    kind = rng.choice(sorted(kinds))
    data, pairs = kinds[kind]()
    return kind, data, _headers(pairs)


def _signed_odd_timestamp(body: bytes, ts: str) -> tuple[bytes, list[tuple[str, str]]]:
    return body, [(TIMESTAMP_HEADER, ts), (SIGNATURE_HEADER, sign(body, ts, KEY))]


# -- the server --------------------------------------------------------------------------


def cio_webhooks() -> list[str]:
    exe = Path(sys.executable).parent / "cio-webhooks"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "cio_webhooks.cli"]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    log: Path


@contextlib.asynccontextmanager
async def serve(
    data_dir: Path, *, max_body: int, dispatch: bool, wait: float
) -> AsyncIterator[Server]:
    """``cio-webhooks serve`` on a free loopback port until the block ends (then SIGTERM)."""
    port = free_port()
    log = data_dir / "serve.log"
    args = [
        *cio_webhooks(),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--signing-key",
        KEY,
        "--max-body",
        str(max_body),
        "--log-level",
        "error",
    ]
    if not dispatch:
        args.append("--no-dispatch")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIO_WEBHOOKS_")}
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(process, f"http://127.0.0.1:{port}", data_dir, log)
    try:
        await _until_ready(server, wait)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)


async def _until_ready(server: Server, wait: float) -> None:
    deadline = time.monotonic() + wait
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                break
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(server.url + "/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    tail = server.log.read_text(errors="replace")[-2000:]
    raise SystemExit(f"cio-webhooks serve did not start within {wait:.0f} s:\n{tail}")


# -- sending -----------------------------------------------------------------------------


@dataclass
class Sent:
    """What one request was and how it was answered (``status`` 0: no answer)."""

    index: int
    mutation: str
    digest: bytes
    size: int
    event_ids: frozenset[str]
    status: int


@dataclass
class Run:
    sent: list[Sent] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    stopped_early: bool = False


async def send_all(
    url: str,
    requests: Iterator[tuple[int, str, bytes, Headers | None]],
    *,
    concurrency: int,
    max_seconds: float,
    timeout: float,
) -> Run:
    """Send every request over ``concurrency`` connections; ``None`` headers: sign now."""
    run = Run()
    deadline = time.monotonic() + max_seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:

        async def worker() -> None:
            for index, mutation, body, headers in requests:  # one shared iterator: each taken once
                if time.monotonic() > deadline:
                    run.stopped_early = True
                    return
                if headers is None:
                    ts = int(time.time())
                    headers = _headers(
                        [(TIMESTAMP_HEADER, str(ts)), (SIGNATURE_HEADER, sign(body, ts, KEY))]
                    )
                status = 0
                try:
                    async with session.post(
                        url + PATH, data=body, headers=headers, skip_auto_headers=["Content-Type"]
                    ) as response:
                        await response.read()
                        status = response.status
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    run.errors[type(exc).__name__] += 1
                run.sent.append(
                    Sent(
                        index,
                        mutation,
                        hashlib.sha256(body).digest(),
                        len(body),
                        readable_event_ids(body),
                        status,
                    )
                )

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return run


# -- checking ----------------------------------------------------------------------------


@dataclass
class Stored:
    rows: int = 0
    digests: Counter[bytes] = field(default_factory=Counter)
    event_ids: Counter[str] = field(default_factory=Counter)


def read_store(inbox: Path) -> tuple[Stored, Stored]:
    """(events, quarantine) of the inbox file, read-only."""
    events, quarantine = Stored(), Stored()
    with contextlib.closing(sqlite3.connect(f"{inbox.resolve().as_uri()}?mode=ro", uri=True)) as db:
        for table, into in (("events", events), ("quarantine", quarantine)):
            for event_id, body in db.execute(f"SELECT event_id, body FROM {table}"):
                into.rows += 1
                into.digests[hashlib.sha256(bytes(body)).digest()] += 1
                if event_id is not None:
                    into.event_ids[str(event_id)] += 1
    return events, quarantine


async def warehouse_settles(data_dir: Path, seconds: float) -> tuple[bool, int, int]:
    """Wait (bounded) until the loader's cursor reaches the inbox's last event.

    Returns (caught up, warehouse rows, inbox events)."""
    inbox, warehouse = data_dir / "inbox.db", data_dir / "warehouse.db"
    deadline = time.monotonic() + seconds
    while True:
        last = _scalar(inbox, "SELECT coalesce(max(seq), 0) FROM events")
        cursor = _scalar(warehouse, "SELECT coalesce(max(inbox_seq), 0) FROM loader_state")
        if cursor >= last or time.monotonic() > deadline:
            rows = _scalar(warehouse, "SELECT count(*) FROM events")
            return cursor >= last, rows, _scalar(inbox, "SELECT count(*) FROM events")
        await asyncio.sleep(0.5)


def _scalar(path: Path, sql: str) -> int:
    try:
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        ) as db:
            return int(db.execute(sql).fetchone()[0])
    except sqlite3.Error:
        return 0


def status_lines(run: Run, *, group: bool) -> list[str]:
    statuses = Counter(s.status for s in run.sent)
    lines = [
        "statuses: "
        + ", ".join(f"{status or 'no answer'}: {n}" for status, n in sorted(statuses.items()))
    ]
    if run.errors:
        lines.append("client errors: " + ", ".join(f"{k}: {n}" for k, n in run.errors.items()))
    if group:
        by: dict[str, Counter[int]] = defaultdict(Counter)
        for s in run.sent:
            by[s.mutation][s.status] += 1
        width = max(map(len, by))
        for name in sorted(by):
            counts = ", ".join(f"{k or 'none'}: {n}" for k, n in sorted(by[name].items()))
            lines.append(f"  {name:<{width}}  {counts}")
    return lines


def check_authentic(
    run: Run, events: Stored, quarantine: Stored, max_body: int
) -> tuple[list[str], set[int]]:
    """The failures of the authentic run (empty when every check holds), and the
    indexes of the bodies concerned."""
    failures = []
    unexpected = [s for s in run.sent if s.status != (413 if s.size > max_body else 200)]
    culprits = {s.index for s in unexpected}
    wrong = Counter((s.mutation, s.status) for s in unexpected)
    if wrong:
        listed = ", ".join(f"{m} -> {st or 'no answer'}: {n}" for (m, st), n in wrong.most_common())
        failures.append(f"{sum(wrong.values())} answer(s) other than the contract's: {listed}")
    acked = {s.digest for s in run.sent if s.status == 200}
    stored_ids = events.event_ids + quarantine.event_ids
    lost = [
        s
        for s in run.sent
        if s.status == 200
        and s.digest not in events.digests
        and s.digest not in quarantine.digests
        and not any(event_id in stored_ids for event_id in s.event_ids)
    ]
    culprits.update(s.index for s in lost)
    missing = Counter(s.mutation for s in lost)
    if missing:
        failures.append(
            f"{sum(missing.values())} body(ies) answered 200 but neither stored nor quarantined: "
            + ", ".join(f"{m}: {n}" for m, n in missing.most_common())
        )
    invented = sum(n for d, n in (events.digests + quarantine.digests).items() if d not in acked)
    if invented:
        failures.append(f"{invented} row(s) hold a body that was never answered 200")
    # Only ids the generator made unique: bodies that share an id on purpose (12345, "")
    # are the dedupe's business, whichever of them it keeps.
    twice = [
        event_id
        for event_id, n in stored_ids.items()
        if n > 1 and event_id.startswith(UNIQUE_ID_PREFIX)
    ]
    if twice:
        failures.append(
            f"{len(twice)} unique event_id(s) held more than once (inbox + quarantine),"
            f" e.g. {twice[0][:60]!r}"
        )
    return failures, culprits


# -- main --------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="cio-webhooks-fuzz-"))
    failures: list[str] = []
    print(f"# data dir {data_dir}; seed {args.seed}; {args.concurrency} connections")
    try:
        async with serve(
            data_dir, max_body=args.max_body, dispatch=not args.no_dispatch, wait=args.start_wait
        ) as server:
            started = time.monotonic()
            requests: Iterator[tuple[int, str, bytes, Headers | None]]
            if args.forged:
                rng = random.Random(args.seed)
                base = samples()

                def forged() -> Iterator[tuple[int, str, bytes, Headers | None]]:
                    for i in range(args.forged):
                        event = dict(rng.choice(base), event_id=f"forged-{args.seed}-{i:07d}")
                        yield i, *forged_request(rng, dump(event), int(time.time()))

                requests = forged()
                total = args.forged
            else:
                requests = (
                    (i, b.mutation, b.data, None)
                    for i, b in enumerate(authentic_bodies(args.seed, args.count, args.max_body))
                )
                total = args.count
            run = await send_all(
                server.url,
                requests,
                concurrency=args.concurrency,
                max_seconds=args.max_seconds,
                timeout=args.timeout,
            )
            elapsed = time.monotonic() - started
            print(
                f"sent {len(run.sent)} of {total} {'forged' if args.forged else 'authentic'}"
                f" request(s) in {elapsed:.1f} s ({len(run.sent) / max(elapsed, 1e-9):.0f}/s)"
            )
            print("\n".join(status_lines(run, group=True)))
            if run.stopped_early:
                failures.append(f"--max-seconds {args.max_seconds:g} reached before the end")
            if not args.forged and not args.no_dispatch:
                caught_up, rows, stored = await warehouse_settles(data_dir, args.settle)
                print(f"warehouse: {rows} row(s) for {stored} inbox event(s)")
                if not caught_up:
                    failures.append(f"the warehouse loader did not catch up in {args.settle:g} s")
            if server.process.poll() is not None:
                failures.append(f"the server exited with {server.process.returncode}")
        events, quarantine = read_store(data_dir / "inbox.db")
        print(f"inbox: {events.rows} event(s), quarantine: {quarantine.rows} row(s)")
        if args.forged:
            if bad := Counter(s.status for s in run.sent if s.status != 401):
                failures.append(f"forged requests not answered 401: {dict(bad)}")
                by = Counter(s.mutation for s in run.sent if s.status != 401)
                failures.append("  by forgery: " + ", ".join(f"{m}: {n}" for m, n in by.items()))
            if events.rows or quarantine.rows:
                failures.append("forged requests were stored")
        else:
            found, culprits = check_authentic(run, events, quarantine, args.max_body)
            failures += found
            if args.keep and culprits:
                # The same seed gives the same bodies: write out the ones that failed.
                out = data_dir / "failed"
                out.mkdir()
                for i, b in enumerate(authentic_bodies(args.seed, args.count, args.max_body)):
                    if i in culprits:
                        (out / f"{i:07d}-{b.mutation}.body").write_bytes(b.data)
                print(f"# bodies of the failed checks in {out}")
            repeats = sum(n - 1 for n in quarantine.digests.values() if n > 1)
            if repeats:
                print(f"quarantine rows repeating a body sent more than once: {repeats}")
        tail = server.log.read_text(errors="replace").strip().splitlines()
        if tail:
            print(f"server log: {len(tail)} line(s); last: {tail[-1][:200]}")
    finally:
        if args.keep:
            print(f"# kept {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    for failure in failures:
        print(f"FAIL: {failure}")
    print("OK" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=100_000, help="authentic bodies to send")
    parser.add_argument("--forged", type=int, default=0, help="send N forged requests instead")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent connections")
    parser.add_argument("--max-body", type=int, default=DEFAULT_MAX_BODY)
    parser.add_argument("--max-seconds", type=float, default=1800, help="stop sending after")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per request")
    parser.add_argument("--settle", type=float, default=120, help="wait for the warehouse")
    parser.add_argument("--start-wait", type=float, default=30, help="wait for the server")
    parser.add_argument("--no-dispatch", action="store_true", help="serve --no-dispatch")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args(argv)
    for name in ("count", "concurrency", "max_body"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.forged < 0:
        parser.error("--forged must not be negative")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(main_async(args))
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
