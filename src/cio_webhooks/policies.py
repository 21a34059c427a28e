"""Policies: built-in handlers that act on people in Customer.io, driven by a TOML file.

::

    dry_run = false                    # true: record what would be done, call nothing

    [[rule]]
    name = "spam-complaint"            # optional, but keep it stable: see below
    on = ["*.spammed"]                 # routing patterns, as for any handler
    action = "unsubscribe"             # identify | unsubscribe | track | suppress | unsuppress
    attributes = { spam_complaint_at = "{timestamp}" }   # values may use event fields

    [[rule]]
    name = "repeated-bounces"
    on = ["email.bounced"]
    action = "unsubscribe"
    threshold = { count = 3, within_days = 30 }   # act on the 3rd bounce within 30 days

Keys of a rule: ``on``, ``action`` (required); ``name``; ``attributes`` (a
table; for ``track`` they are the event's data); ``event_name`` (required for
``track``); ``threshold``; ``dry_run`` (this rule only records);
``confirm_deletes_person`` (see below).

A rule's ``name`` names its handler (``policy:<name>``) and its audit rows, and
is what "this already happened" is recorded under: renaming a rule makes it
act again on replayed events.  It defaults to ``<action>@<patterns>``.

Templates: a string value may hold ``{field}`` placeholders, filled from the
event's normalised fields (``cio_webhooks.events.NORMALISED_FIELDS``) plus
``timestamp`` (unix seconds; Customer.io treats unix-time ``*_at`` attributes
as dates).  A value that is only a placeholder keeps the field's type; a
missing field is an empty string inside text.  Unknown fields are refused when
the file is loaded.

``suppress`` PERMANENTLY DELETES the person in Customer.io and blocks the
identifier: a rule may only use it with ``confirm_deletes_person = true``, and
no default rule does.

Each rule is a handler on a ``Router``, so policies inherit the dispatcher's
retries, dead-lettering and replay.  Every action is recorded in an audit
table (``ActionLog``, its own SQLite file, never the inbox: a second writer
there would slow ingest).  The audit table is also the idempotency record: an
(event, rule) whose call succeeded is never sent again, whether the event is
delivered twice, the handler is retried after another rule failed, or events
are replayed.  One window remains, a crash after Customer.io answered and
before the audit row is written; the repeat is then harmless, because
identify/unsubscribe/suppress/unsuppress set the same state again and
``track`` sends a deterministic ULID ``id`` that Customer.io deduplicates on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sqlite3
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._exceptions import ConfigError
from .customerio import HttpOptions, TrackClient
from .events import NORMALISED_FIELDS, Event, normalise
from .handlers import Router, parse_pattern

__all__ = [
    "ACTIONS",
    "DEFAULT_RULES",
    "POLICY_HTTP",
    "TEMPLATE_FIELDS",
    "ActionLog",
    "Policies",
    "PolicyConfig",
    "Rule",
    "Threshold",
    "dedupe_id",
    "load_policies",
    "person_ref",
    "render",
]

ACTIONS = ("identify", "unsubscribe", "track", "suppress", "unsuppress")
#: What ``{placeholders}`` may name.
TEMPLATE_FIELDS = (*NORMALISED_FIELDS, "timestamp")
#: Track API transport for policies: every try, retry and wait fits well inside the
#: dispatcher's 30 s handler timeout; longer waits are the dispatcher's durable retry.
POLICY_HTTP: HttpOptions = {
    "timeout": 5.0,
    "max_retries": 2,
    "max_retry_after": 10.0,
    "max_elapsed": 20.0,
}

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"[A-Za-z0-9_.*,@:+-]+")
_RULE_KEYS = frozenset(
    {
        "name",
        "on",
        "action",
        "attributes",
        "event_name",
        "threshold",
        "dry_run",
        "confirm_deletes_person",
    }
)


@dataclass(frozen=True)
class Threshold:
    """Act only on the ``count``-th matching event of a person within ``within_days``."""

    count: int
    within_days: float

    def __post_init__(self) -> None:
        if self.count < 1 or self.within_days <= 0:
            raise ConfigError("threshold count and within_days must be positive")


def _placeholders(value: Any) -> set[str]:
    if isinstance(value, str):
        return set(_FIELD.findall(value))
    if isinstance(value, Mapping):
        return set().union(*(_placeholders(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_placeholders(v) for v in value))
    return set()


@dataclass(frozen=True)
class Rule:
    """One policy rule.  Validated on construction: a bad rule raises ``ConfigError``."""

    on: tuple[str, ...]
    action: str
    name: str = ""  # "" -> "<action>@<patterns>"
    attributes: Mapping[str, Any] = field(default_factory=dict)
    event_name: str | None = None  # for action = "track"
    threshold: Threshold | None = None
    confirm_deletes_person: bool = False
    dry_run: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", f"{self.action}@{','.join(self.on)}")
        where = f"rule {self.name!r}"
        if not _NAME.fullmatch(self.name):
            raise ConfigError(f"{where}: a name is letters, digits and - _ . * , @ : +")
        if not self.on:
            raise ConfigError(f"{where}: 'on' must list event patterns such as \"email.bounced\"")
        for pattern in self.on:
            parse_pattern(pattern)
        if self.action not in ACTIONS:
            raise ConfigError(f"{where}: 'action' must be one of {', '.join(ACTIONS)}")
        if self.action == "suppress" and not self.confirm_deletes_person:
            raise ConfigError(
                f"{where}: 'suppress' PERMANENTLY DELETES the person in Customer.io; add "
                "confirm_deletes_person = true if that is really what you want "
                '(to stop messages but keep the person, use action = "unsubscribe")'
            )
        if self.action == "track" and not self.event_name:
            raise ConfigError(f"{where}: action 'track' needs event_name")
        if self.action in ("suppress", "unsuppress") and self.attributes:
            raise ConfigError(f"{where}: '{self.action}' takes no attributes")
        unknown = _placeholders(dict(self.attributes)) - set(TEMPLATE_FIELDS)
        if unknown:
            raise ConfigError(
                f"{where}: unknown field(s) {', '.join(sorted(unknown))} in attributes; "
                f"use {', '.join(TEMPLATE_FIELDS)}"
            )


@dataclass(frozen=True)
class PolicyConfig:
    rules: tuple[Rule, ...]
    dry_run: bool = False

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ConfigError(
                    f"two rules are named {rule.name!r}: give them distinct 'name's"
                    " (a rule without one is named <action>@<patterns>)"
                )
            seen.add(rule.name)


#: The safe defaults, active only when Track API credentials are configured and no
#: policy file is given.  None of them deletes anyone.
DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(
        name="spam-complaint-unsubscribe",
        on=("*.spammed",),
        action="unsubscribe",
        attributes={
            "spam_complaint_at": "{timestamp}",
            "spam_complaint_campaign_id": "{campaign_id}",
        },
    ),
    Rule(
        name="bounce-mark",
        on=("email.bounced",),
        action="identify",
        attributes={
            "email_bounced": True,
            "email_bounced_at": "{timestamp}",
            "email_bounced_reason": "{failure_message}",
        },
    ),
    Rule(
        name="repeated-bounces-unsubscribe",
        on=("email.bounced",),
        action="unsubscribe",
        threshold=Threshold(count=3, within_days=30),
    ),
)


def _rule(raw: Any, index: int) -> Rule:
    """A ``Rule`` from one ``[[rule]]`` table, with errors that name the rule."""
    where = f"rule #{index + 1}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: use [[rule]] tables")
    if isinstance(raw.get("name"), str):
        where = f"rule {raw['name']!r}"
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    name = raw.get("name", "")
    on = raw.get("on")
    if isinstance(on, str):
        on = [on]
    if not isinstance(on, list) or not on or not all(isinstance(p, str) for p in on):
        raise ConfigError(f"{where}: 'on' must list event patterns such as \"email.bounced\"")
    attributes = raw.get("attributes", {})
    if not isinstance(attributes, dict):
        raise ConfigError(f"{where}: 'attributes' must be a table")
    event_name = raw.get("event_name")
    if event_name is not None and not isinstance(event_name, str):
        raise ConfigError(f"{where}: 'event_name' must be a string")
    for flag in ("confirm_deletes_person", "dry_run"):
        if not isinstance(raw.get(flag, False), bool):
            raise ConfigError(f"{where}: '{flag}' must be true or false")
    threshold = None
    if "threshold" in raw:
        t = raw["threshold"]
        try:
            threshold = Threshold(count=int(t["count"]), within_days=float(t["within_days"]))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{where}: threshold needs count and within_days") from None
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if not isinstance(name, str):
        raise ConfigError(f"{where}: 'name' must be a string")
    return Rule(
        name=name,
        on=tuple(on),
        action=str(raw.get("action")),
        attributes=attributes,
        event_name=event_name,
        threshold=threshold,
        confirm_deletes_person=raw.get("confirm_deletes_person", False),
        dry_run=raw.get("dry_run", False),
    )


def load_policies(path: Path) -> PolicyConfig:
    """Read and validate a policy file; raise ``ConfigError`` saying what is wrong."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read policies {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"policies {path}: {exc}") from exc
    unknown = set(data) - {"rule", "dry_run"}
    if unknown:
        raise ConfigError(f"policies {path}: unknown key(s) {', '.join(sorted(unknown))}")
    rules = data.get("rule", [])
    if not isinstance(rules, list):
        raise ConfigError(f"policies {path}: use [[rule]] tables")
    if not isinstance(data.get("dry_run", False), bool):
        raise ConfigError(f"policies {path}: 'dry_run' must be true or false")
    try:
        return PolicyConfig(
            rules=tuple(_rule(raw, i) for i, raw in enumerate(rules)),
            dry_run=data.get("dry_run", False),
        )
    except ConfigError as exc:
        raise ConfigError(f"policies {path}: {exc}") from None


def render(value: Any, fields: Mapping[str, Any]) -> Any:
    """Fill ``{field}`` placeholders from the event, in strings, tables and lists.

    A string that is exactly one placeholder becomes the field's value (its type
    kept); inside longer text a missing (None) field becomes "".
    """
    if isinstance(value, Mapping):
        return {k: render(v, fields) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, fields) for v in value]
    if not isinstance(value, str):
        return value
    whole = _FIELD.fullmatch(value)
    if whole:
        return fields.get(whole.group(1))
    return _FIELD.sub(
        lambda m: "" if fields.get(m.group(1)) is None else str(fields[m.group(1)]), value
    )


def person_ref(event: Event) -> str | None:
    """How the Track API addresses the person: ``identifiers.id`` (or the deprecated
    ``customer_id``), else ``cio_<cio_id>``, else the email; None when the event has none."""
    if event.person_id:
        return event.person_id
    ids = event.data.identifiers
    if ids is not None and ids.cio_id not in (None, ""):
        return f"cio_{ids.cio_id}"
    return event.email


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def dedupe_id(event: Event, rule: str) -> str:
    """A ULID that is the same every time for (``event``, ``rule``): the Track API
    drops an event whose ``id`` it has already seen.  Its time part is when the
    webhook event occurred; its random part is a hash of the event id and rule."""
    millis = (event.timestamp or 0) * 1000 & ((1 << 48) - 1)
    digest = hashlib.sha256(f"{event.event_id}\x00{rule}".encode()).digest()
    number = millis << 80 | int.from_bytes(digest[:10], "big")
    return "".join(_CROCKFORD[(number >> shift) & 31] for shift in range(125, -1, -5))


ACTIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS actions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    event_id   TEXT NOT NULL,
    rule       TEXT NOT NULL,
    person     TEXT,
    action     TEXT NOT NULL,
    request    TEXT NOT NULL,     -- JSON: what was (or would be) sent, never credentials
    status     TEXT NOT NULL,     -- ok | failed | dry_run | skipped
    detail     TEXT,
    dry_run    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS actions_event ON actions (event_id, rule);
CREATE INDEX IF NOT EXISTS actions_person ON actions (rule, person, created_at);
CREATE TABLE IF NOT EXISTS rule_hits (
    rule        TEXT NOT NULL,
    person      TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    occurred_at REAL NOT NULL,
    PRIMARY KEY (rule, event_id)
);
CREATE INDEX IF NOT EXISTS rule_hits_person ON rule_hits (rule, person, occurred_at);
"""

#: Audit statuses that settle an (event, rule): live, and in dry-run.  A dry-run row
#: does not settle a live run: switching dry-run off and replaying acts for real.
_SETTLED = {False: ("ok", "skipped"), True: ("ok", "skipped", "dry_run")}
_ACTED = {False: ("ok",), True: ("ok", "dry_run")}


class ActionLog:
    """The audit table, the idempotency record and the threshold counters (one SQLite file).

    Safe to share between coroutines: every statement runs in a worker thread
    under one lock, in autocommit mode with ``synchronous=FULL``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.executescript(ACTIONS_SCHEMA)
            self._conn = conn
        return self._conn

    def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            return fn(self._db())

    async def call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(connection)`` in a worker thread; return its result."""
        return await asyncio.to_thread(self._run, fn)

    async def settled(self, event_id: str, rule: str, *, dry_run: bool) -> bool:
        """Has ``rule`` already been carried out (or skipped for good) for ``event_id``?"""
        statuses = _SETTLED[dry_run]
        row = await self.call(
            lambda c: c.execute(
                "SELECT 1 FROM actions WHERE event_id = ? AND rule = ?"
                f" AND status IN ({','.join('?' * len(statuses))}) LIMIT 1",
                (event_id, rule, *statuses),
            ).fetchone()
        )
        return row is not None

    async def record(
        self,
        *,
        event_id: str,
        rule: str,
        person: str | None,
        action: str,
        request: Mapping[str, Any],
        status: str,
        detail: str | None,
        dry_run: bool,
        at: float,
    ) -> None:
        """Append one audit row (``request`` is stored as JSON)."""
        await self.call(
            lambda c: c.execute(
                "INSERT INTO actions (created_at, event_id, rule, person, action, request, status,"
                " detail, dry_run) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    at,
                    event_id,
                    rule,
                    person,
                    action,
                    json.dumps(request, default=str),
                    status,
                    detail,
                    int(dry_run),
                ),
            )
        )

    async def count_hit(
        self, *, rule: str, person: str, event_id: str, occurred_at: float, window: float
    ) -> int:
        """Count ``event_id`` towards ``rule``'s threshold for ``person`` (once, however
        often it is seen); return the person's hits in the ``window`` seconds up to it."""

        def run(c: sqlite3.Connection) -> int:
            c.execute(
                "INSERT OR IGNORE INTO rule_hits VALUES (?, ?, ?, ?)",
                (rule, person, event_id, occurred_at),
            )
            return int(
                c.execute(
                    "SELECT count(*) FROM rule_hits WHERE rule = ? AND person = ?"
                    " AND occurred_at > ? AND occurred_at <= ?",
                    (rule, person, occurred_at - window, occurred_at),
                ).fetchone()[0]
            )

        return int(await self.call(run))

    async def acted_since(self, *, rule: str, person: str, since: float, dry_run: bool) -> bool:
        """Did ``rule`` act on ``person`` at or after ``since``?"""
        statuses = _ACTED[dry_run]
        row = await self.call(
            lambda c: c.execute(
                "SELECT 1 FROM actions WHERE rule = ? AND person = ? AND created_at >= ?"
                f" AND status IN ({','.join('?' * len(statuses))}) LIMIT 1",
                (rule, person, since, *statuses),
            ).fetchone()
        )
        return row is not None

    async def recent(
        self, *, limit: int = 100, event_id: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest audit rows first, optionally only those of one event or status."""
        conditions: list[str] = []
        params: list[Any] = []
        for column, value in (("event_id", event_id), ("status", status)):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = await self.call(
            lambda c: c.execute(
                "SELECT id, created_at, event_id, rule, person, action, request, status, detail,"
                f" dry_run FROM actions {where} ORDER BY id DESC LIMIT ?",
                [*params, limit],
            ).fetchall()
        )
        keys = (
            "id",
            "created_at",
            "event_id",
            "rule",
            "person",
            "action",
            "request",
            "status",
            "detail",
            "dry_run",
        )
        return [dict(zip(keys, row, strict=True)) for row in rows]

    async def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


class Policies:
    """Turns a ``PolicyConfig`` into handlers that call the Track API (or only record).

    ``track`` may be None only when every rule is dry-run.  ``clock`` stamps the
    audit rows and bounds the threshold windows.
    """

    def __init__(
        self,
        config: PolicyConfig,
        log: ActionLog,
        track: TrackClient | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        live = [r.name for r in config.rules if not (config.dry_run or r.dry_run)]
        if track is None and live:
            raise ConfigError(
                "policies need Track API credentials (--track-site-id, --track-api-key)"
                " or --dry-run"
            )
        self.config = config
        self.log = log
        self.track = track
        self.clock = clock

    def router(self) -> Router:
        """A ``Router`` with one handler per rule, named ``policy:<rule name>``."""
        router = Router()
        for rule in self.config.rules:
            router.add(self._handler(rule), *rule.on, name=f"policy:{rule.name}")
        return router

    async def close(self) -> None:
        if self.track is not None:
            await self.track.close()
        await self.log.close()

    def _handler(self, rule: Rule) -> Callable[[Event], Any]:
        async def handle(event: Event) -> None:
            await self.apply(rule, event)

        handle.__qualname__ = f"policy:{rule.name}"
        return handle

    async def apply(self, rule: Rule, event: Event) -> None:
        """Carry out ``rule`` for ``event`` at most once: return at once when the audit
        log says it is settled; raise when Customer.io refused, so the dispatcher retries."""
        dry_run = self.config.dry_run or rule.dry_run
        if await self.log.settled(event.event_id, rule.name, dry_run=dry_run):
            return
        now = self.clock()
        person = person_ref(event)
        fields = normalise(event) | {"timestamp": event.timestamp}
        attributes: dict[str, Any] = render(dict(rule.attributes), fields)
        request: dict[str, Any] = {"action": rule.action, "person": person}
        if attributes:
            request["attributes"] = attributes
        if rule.action == "track":
            request["event_name"] = rule.event_name
            request["id"] = dedupe_id(event, rule.name)

        async def audit(status: str, detail: str | None = None) -> None:
            await self.log.record(
                event_id=event.event_id,
                rule=rule.name,
                person=person,
                action=rule.action,
                request=request,
                status=status,
                detail=detail,
                dry_run=dry_run,
                at=now,
            )

        if person is None:
            await audit("skipped", "the event names no person (no id, cio_id or email)")
            return
        if rule.threshold is not None:
            occurred = float(event.timestamp if event.timestamp is not None else now)
            window = rule.threshold.within_days * 86400
            hits = await self.log.count_hit(
                rule=rule.name,
                person=person,
                event_id=event.event_id,
                occurred_at=occurred,
                window=window,
            )
            if hits < rule.threshold.count:
                return
            if await self.log.acted_since(
                rule=rule.name, person=person, since=now - window, dry_run=dry_run
            ):
                return  # already acted on this person within the window
        if dry_run:
            await audit("dry_run")
            return
        try:
            await self._call(rule, person, attributes, request)
        except Exception as exc:
            await audit("failed", _describe(exc))
            raise
        await audit("ok")

    async def _call(
        self, rule: Rule, person: str, attributes: dict[str, Any], request: Mapping[str, Any]
    ) -> None:
        track = self.track
        if track is None:  # refused in __init__; kept for the type checker
            raise ConfigError("no Track API client")
        if rule.action == "identify":
            await track.identify(person, **attributes)
        elif rule.action == "unsubscribe":
            await track.unsubscribe(person, **attributes)
        elif rule.action == "track":
            assert rule.event_name is not None  # Rule refuses track without one
            await track.track(person, rule.event_name, attributes, id=request["id"])
        elif rule.action == "suppress":
            if not rule.confirm_deletes_person:  # Rule refuses it; never rely on -O here
                raise ConfigError(f"rule {rule.name!r}: suppress without confirmation")
            await track.suppress(person)
        elif rule.action == "unsuppress":
            await track.unsuppress(person)
