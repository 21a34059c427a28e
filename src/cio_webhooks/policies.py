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
retries, dead-lettering and replay.  Backfilled events (``Event.backfilled``,
recovered by ``reconcile --backfill``) never reach a rule: ``Policies.apply``
returns at once for them, whatever the dispatcher hands over.

Exactly once.  The store's ``Ledger`` (``store.ledger()``) holds a *decision* per
(rule, event), made in one serialised transaction *before* any call: coroutines of
one process and workers on several hosts sharing the store cannot both reserve it.  A decision goes
``in_flight`` -> ``ok`` | ``failed`` (or ``skipped``, ``dry_run``); the state and the
audit row are written in one transaction right after Customer.io answers.  An
``ok`` or ``skipped`` decision is never carried out again: not on a duplicate
delivery, a dispatcher retry after another rule failed, or a replay at any later
time.  A ``failed`` one is taken up again by the next attempt.  One that is
``in_flight`` is waited for (``ActionInFlight``, the dispatcher retries later)
unless its caller is gone: a process that no longer runs (same host), a call of
this process that was cancelled, or a lease (``IN_FLIGHT_LEASE``) that ran out.
So one window remains: a crash after Customer.io took the call and before the
decision is marked repeats that one call, once.  The repeat is harmless:
identify/unsubscribe/suppress/unsuppress set the same state again and ``track``
sends a deterministic ULID ``id`` that Customer.io deduplicates on.

Thresholds (``count`` hits within ``within_days``), measured on the events' own
times (``timestamp``; the received time only when an event has none), whatever
order Customer.io delivers them in and the dispatcher handles them in:

- each matching event of a person is recorded once as a *hit* (event id, person,
  time); the decision below is taken in the transaction that records it, and a
  hit seen before (a duplicate, a replay) never decides again;
- a *window* is ``[start, start + within_days)`` where ``start`` is a hit's time;
- a hit acts when some window holds it and at least ``count`` hits, and overlaps
  no window the rule acted on before for that person (earliest such start);
  the action is recorded on that hit's event, with the window;
- hence ``count`` to ``2 * count - 1`` hits inside ``within_days`` act exactly
  once, on whichever hit completes the count, in any order: the 4th, 5th ...
  bounce of that window does nothing.  A new action needs ``count`` hits in a
  window that does not overlap the last one (e.g. 3 bounces a month apart from
  the first of the previous three: at most one action per window per person).
  Dry runs count their own hits and windows.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._exceptions import ConfigError
from ._exposition import label_value
from .customerio import HttpOptions, TrackClient
from .events import NORMALISED_FIELDS, Event, normalise
from .handlers import Router, parse_pattern
from .store import Ledger, Verdict, Window

__all__ = [
    "ACTIONS",
    "DEFAULT_RULES",
    "POLICY_HTTP",
    "TEMPLATE_FIELDS",
    "Policies",
    "PolicyConfig",
    "Rule",
    "Threshold",
    "dedupe_id",
    "load_policies",
    "occurred_at",
    "person_ref",
    "render",
]

log = logging.getLogger("cio_webhooks.policies")

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
        if self.action == "unsubscribe" and "unsubscribed" in self.attributes:
            # It sets unsubscribed = true itself; another value would be sent as true
            # while the audit row recorded what the file said.
            raise ConfigError(f"{where}: 'unsubscribe' sets unsubscribed itself")
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
        threshold = _threshold(raw["threshold"], where)
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


def _threshold(raw: Any, where: str) -> Threshold:
    """A rule's ``threshold`` table, exactly as written: a whole ``count`` (``2.7``
    or ``true`` would silently become 2 or 1), a finite ``within_days``, no other key."""
    if not isinstance(raw, dict) or set(raw) != {"count", "within_days"}:
        raise ConfigError(
            f"{where}: threshold is a table of exactly count and within_days,"
            " e.g. { count = 3, within_days = 30 }"
        )
    count, days = raw["count"], raw["within_days"]
    if isinstance(count, bool) or not isinstance(count, int):
        raise ConfigError(f"{where}: threshold count must be a whole number, not {count!r}")
    if isinstance(days, bool) or not isinstance(days, int | float) or not math.isfinite(days):
        raise ConfigError(f"{where}: threshold within_days must be a number, not {days!r}")
    try:
        return Threshold(count=count, within_days=float(days))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


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


def occurred_at(event: Event, now: float) -> float:
    """When ``event`` happened, the time threshold windows are measured on: its own
    ``timestamp``; when it has none (or an unusable one), when it was received."""
    for value in (event.timestamp, event.received_at):
        if value is not None and math.isfinite(value) and abs(value) < 1e11:
            return float(value)
    return now


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


class Policies:
    """Turns a ``PolicyConfig`` into handlers that call the Track API (or only record).

    ``track`` may be None only when every rule is dry-run.  ``clock`` stamps the
    audit rows and times the in-flight leases; threshold windows are measured on
    the events' own times, not on it.
    """

    def __init__(
        self,
        config: PolicyConfig,
        ledger: Ledger,
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
        self.ledger = ledger
        self.track = track
        self.clock = clock
        #: Actions finished by this process since start, by (rule, status): ``ok``,
        #: ``failed`` (a Track call that failed: each attempt counts), ``dry_run``,
        #: ``skipped``.
        self.outcomes: dict[tuple[str, str], int] = {}

    def metric_lines(self) -> list[str]:
        """``cio_webhooks_policy_actions_total{rule, status}`` for ``/metrics``."""
        lines = ["# TYPE cio_webhooks_policy_actions_total counter"]
        for (rule, status), count in sorted(self.outcomes.items()):
            labels = f'rule="{label_value(rule)}",status="{status}"'
            lines.append(f"cio_webhooks_policy_actions_total{{{labels}}} {count}")
        return lines

    def router(self) -> Router:
        """A ``Router`` with one handler per rule, named ``policy:<rule name>``."""
        router = Router()
        for rule in self.config.rules:
            router.add(self._handler(rule), *rule.on, name=f"policy:{rule.name}")
        return router

    async def close(self) -> None:
        """Close the Track client; the ledger belongs to its store, which closes it."""
        if self.track is not None:
            await self.track.close()

    def _handler(self, rule: Rule) -> Callable[[Event], Any]:
        async def handle(event: Event) -> None:
            await self.apply(rule, event)

        handle.__qualname__ = f"policy:{rule.name}"
        return handle

    async def apply(self, rule: Rule, event: Event) -> None:
        """Carry out ``rule`` for ``event`` at most once (see the module docstring).

        Returns at once for a backfilled event, one already settled, or a threshold
        hit that completes no window.  Raises when Customer.io refused (the decision
        is then ``failed`` and the dispatcher's retry takes it up again), and
        ``ActionInFlight`` while another caller holds the decision."""
        if event.backfilled:  # its actions were taken, or not, when it really happened
            log.debug(
                "event=policy_skipped_backfilled event_id=%s rule=%s", event.event_id, rule.name
            )
            return
        dry_run = self.config.dry_run or rule.dry_run
        now = self.clock()
        person = person_ref(event)
        verdict = await self.ledger.reserve(
            rule=rule.name,
            event_id=event.event_id,
            person=person,
            dry_run=dry_run,
            now=now,
            threshold=(
                Window(rule.threshold.count, rule.threshold.within_days * 86400)
                if rule.threshold
                else None
            ),
            occurred_at=occurred_at(event, now),
        )
        if verdict is not Verdict.ACT:
            return
        try:
            await self._carry_out(rule, event, person, dry_run=dry_run, now=now)
        finally:  # cancelled mid-call: the reservation stays in flight, free to take over
            self.ledger.release(rule=rule.name, event_id=event.event_id, dry_run=dry_run)

    async def _carry_out(
        self, rule: Rule, event: Event, person: str | None, *, dry_run: bool, now: float
    ) -> None:
        fields = normalise(event) | {"timestamp": event.timestamp}
        attributes: dict[str, Any] = render(dict(rule.attributes), fields)
        request: dict[str, Any] = {"action": rule.action, "person": person}
        if attributes:
            request["attributes"] = attributes
        if rule.action == "track":
            request["event_name"] = rule.event_name
            request["id"] = dedupe_id(event, rule.name)

        async def finish(status: str, detail: str | None = None) -> None:
            key = (rule.name, status)
            self.outcomes[key] = self.outcomes.get(key, 0) + 1
            await self.ledger.finish(
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
            await finish("skipped", "the event names no person (no id, cio_id or email)")
            return
        if dry_run:
            await finish("dry_run")
            return
        try:
            await self._call(rule, person, attributes, request)
        except Exception as exc:
            await finish("failed", _describe(exc))
            raise
        await finish("ok")

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
