"""Policies: built-in handlers that act on people in Customer.io, driven by a TOML file.

::

    dry_run = false                    # record what would be done, call nothing

    [[rule]]
    name = "spam-complaint"            # stable: it names the handler and the audit rows
    on = ["*.spammed"]                 # routing patterns, as for any handler
    action = "unsubscribe"             # identify | unsubscribe | track | suppress | unsuppress
    attributes = { spam_complaint_at = "{occurred_at}" }   # values may use event fields

    [[rule]]
    name = "repeated-bounces"
    on = ["email.bounced"]
    action = "unsubscribe"
    threshold = { count = 3, within_days = 30 }   # act on the 3rd bounce within 30 days

``suppress`` permanently deletes the person in Customer.io: a rule may only use
it with ``confirm_deletes_person = true``, and no default rule does.

Each rule is a handler on a ``Router`` (named ``policy:<name>``), so policies
inherit the dispatcher's retries, dead-lettering and replay.  Every action is
recorded in an audit table (``ActionLog``, its own SQLite file, never the inbox);
a (event, rule) pair that already succeeded is never sent again, so a retried
handler or a replay does not repeat a call that went through.
"""

from __future__ import annotations

import asyncio
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
from .customerio import CustomerIOError, TrackClient
from .events import Event, normalise
from .handlers import Router, parse_pattern

__all__ = ["DEFAULT_RULES", "ActionLog", "Policies", "PolicyConfig", "Rule", "load_policies"]

ACTIONS = ("identify", "unsubscribe", "track", "suppress", "unsuppress")


@dataclass(frozen=True)
class Threshold:
    count: int
    within_days: float


@dataclass(frozen=True)
class Rule:
    name: str
    on: tuple[str, ...]
    action: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    event_name: str | None = None  # for action = "track"
    threshold: Threshold | None = None
    confirm_deletes_person: bool = False


@dataclass(frozen=True)
class PolicyConfig:
    rules: tuple[Rule, ...]
    dry_run: bool = False


#: The safe defaults, active only when Track API credentials are configured and no
#: policy file is given.  None of them deletes anyone.
DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(
        name="spam-complaint-unsubscribe",
        on=("*.spammed",),
        action="unsubscribe",
        attributes={
            "spam_complaint_at": "{occurred_at}",
            "spam_complaint_campaign_id": "{campaign_id}",
        },
    ),
    Rule(
        name="bounce-mark",
        on=("email.bounced",),
        action="identify",
        attributes={
            "email_bounced": True,
            "email_bounced_at": "{occurred_at}",
            "email_bounce_reason": "{failure_message}",
        },
    ),
    Rule(
        name="repeated-bounces-unsubscribe",
        on=("email.bounced",),
        action="unsubscribe",
        threshold=Threshold(count=3, within_days=30),
    ),
)


def _rule(raw: Mapping[str, Any], index: int) -> Rule:
    where = f"rule #{index + 1}"
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"{where}: 'name' must be letters, digits, '-', '_' or '.'")
    where = f"rule {name!r}"
    on = raw.get("on")
    if isinstance(on, str):
        on = [on]
    if not isinstance(on, list) or not on or not all(isinstance(p, str) for p in on):
        raise ConfigError(f"{where}: 'on' must list event patterns such as \"email.bounced\"")
    for pattern in on:
        parse_pattern(pattern)
    action = raw.get("action")
    if action not in ACTIONS:
        raise ConfigError(f"{where}: 'action' must be one of {', '.join(ACTIONS)}")
    confirm = raw.get("confirm_deletes_person", False) is True
    if action == "suppress" and not confirm:
        raise ConfigError(
            f"{where}: 'suppress' permanently deletes the person in Customer.io; add "
            "confirm_deletes_person = true if that is really what you want "
            '(to stop messages but keep the person, use action = "unsubscribe")'
        )
    attributes = raw.get("attributes", {})
    if not isinstance(attributes, dict):
        raise ConfigError(f"{where}: 'attributes' must be a table")
    event_name = raw.get("event_name")
    if action == "track" and not isinstance(event_name, str):
        raise ConfigError(f"{where}: action 'track' needs event_name")
    threshold = None
    if "threshold" in raw:
        t = raw["threshold"]
        try:
            threshold = Threshold(count=int(t["count"]), within_days=float(t["within_days"]))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{where}: threshold needs count and within_days") from None
        if threshold.count < 1 or threshold.within_days <= 0:
            raise ConfigError(f"{where}: threshold count and within_days must be positive")
    unknown = set(raw) - {
        "name",
        "on",
        "action",
        "attributes",
        "event_name",
        "threshold",
        "confirm_deletes_person",
    }
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    return Rule(
        name=name,
        on=tuple(on),
        action=action,
        attributes=attributes,
        event_name=event_name,
        threshold=threshold,
        confirm_deletes_person=confirm,
    )


def load_policies(path: Path) -> PolicyConfig:
    """Read and validate a policy file; raise ``ConfigError`` saying what is wrong."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read policies {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"policies {path}: {exc}") from exc
    rules = data.get("rule", [])
    if not isinstance(rules, list):
        raise ConfigError(f"policies {path}: use [[rule]] tables")
    parsed = tuple(_rule(raw, i) for i, raw in enumerate(rules))
    names = [r.name for r in parsed]
    if len(set(names)) != len(names):
        raise ConfigError(f"policies {path}: rule names must be unique")
    return PolicyConfig(rules=parsed, dry_run=bool(data.get("dry_run", False)))


_FIELD = re.compile(r"\{([a-z_]+)\}")


def render(value: Any, fields: Mapping[str, Any]) -> Any:
    """Fill ``{field}`` placeholders from the event; a lone placeholder keeps its type."""
    if not isinstance(value, str):
        return value
    whole = _FIELD.fullmatch(value)
    if whole and whole.group(1) in fields:
        return fields[whole.group(1)]
    return _FIELD.sub(
        lambda m: "" if fields.get(m.group(1)) is None else str(fields[m.group(1)]), value
    )


def person_ref(event: Event) -> str | None:
    """How the Track API addresses the person: id, else ``cio_<cio_id>``, else email."""
    if event.person_id:
        return event.person_id
    ids = event.data.identifiers
    if ids is not None and ids.cio_id not in (None, ""):
        return f"cio_{ids.cio_id}"
    return event.email


ACTIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS actions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    event_id   TEXT NOT NULL,
    rule       TEXT NOT NULL,
    person     TEXT,
    action     TEXT NOT NULL,
    request    TEXT NOT NULL,
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


class ActionLog:
    """The audit table, the idempotency record and the threshold counters (SQLite)."""

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
        return await asyncio.to_thread(self._run, fn)

    async def succeeded(self, event_id: str, rule: str) -> bool:
        row = await self.call(
            lambda c: c.execute(
                "SELECT 1 FROM actions WHERE event_id = ? AND rule = ? AND status IN"
                " ('ok', 'dry_run', 'skipped') LIMIT 1",
                (event_id, rule),
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
        """Count this event towards ``rule``'s threshold; return hits in the window."""

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

    async def acted_since(self, *, rule: str, person: str, since: float) -> bool:
        row = await self.call(
            lambda c: c.execute(
                "SELECT 1 FROM actions WHERE rule = ? AND person = ? AND created_at >= ?"
                " AND status IN ('ok', 'dry_run') LIMIT 1",
                (rule, person, since),
            ).fetchone()
        )
        return row is not None

    async def recent(
        self, *, limit: int = 100, event_id: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest actions first, optionally of one event."""
        where, params = ("WHERE event_id = ?", [event_id]) if event_id else ("", [])
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


class Policies:
    """Turns a ``PolicyConfig`` into handlers that call the Track API (or only record)."""

    def __init__(
        self,
        config: PolicyConfig,
        log: ActionLog,
        track: TrackClient | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if track is None and not config.dry_run:
            raise ConfigError("policies need Track API credentials (or dry_run)")
        self.config = config
        self.log = log
        self.track = track
        self.clock = clock

    def router(self) -> Router:
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
        """Run ``rule`` for ``event`` once; raise on a Customer.io error so it is retried."""
        if await self.log.succeeded(event.event_id, rule.name):
            return
        now = self.clock()
        person = person_ref(event)
        fields = normalise(event) | {"timestamp": event.timestamp}
        attributes = {k: render(v, fields) for k, v in rule.attributes.items()}
        request: dict[str, Any] = {"action": rule.action, "person": person}
        if attributes:
            request["attributes"] = attributes
        if rule.event_name:
            request["event_name"] = rule.event_name

        async def audit(status: str, detail: str | None = None) -> None:
            await self.log.record(
                event_id=event.event_id,
                rule=rule.name,
                person=person,
                action=rule.action,
                request=request,
                status=status,
                detail=detail,
                dry_run=self.config.dry_run,
                at=now,
            )

        if person is None:
            await audit("skipped", "event has no person id")
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
            if await self.log.acted_since(rule=rule.name, person=person, since=now - window):
                return
        if self.config.dry_run or self.track is None:
            await audit("dry_run")
            return
        try:
            await self._call(rule, person, attributes)
        except CustomerIOError as exc:
            await audit("failed", str(exc))
            raise
        await audit("ok")

    async def _call(self, rule: Rule, person: str, attributes: dict[str, Any]) -> None:
        track = self.track
        assert track is not None
        if rule.action == "identify":
            await track.identify(person, **attributes)
        elif rule.action == "unsubscribe":
            await track.unsubscribe(person, **attributes)
        elif rule.action == "track":
            assert rule.event_name is not None
            await track.track(person, rule.event_name, attributes or None)
        elif rule.action == "suppress":
            assert rule.confirm_deletes_person  # load_policies refuses it otherwise
            await track.suppress(person)
        elif rule.action == "unsuppress":
            await track.unsuppress(person)
