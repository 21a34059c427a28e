"""Finding stored events by what a person looks for: who, which message, which words.

The store filters by what it indexes (time, kind, state, ``seq``) and by a substring
of the raw body; an ``EventQuery`` adds the fields people search by (person, email,
delivery, campaign), read from the parsed event.  The store's substring test is the
coarse sieve (the value must appear in the body), the parsed fields the exact one::

    EventQuery --filter()--> EventFilter (store: time, kinds, states, body text)
               --matches()-> the parsed event's person / email / delivery / campaign

``find_events`` pages newest first (the dashboard's Events page); ``matching_ids``
lists every match (bulk retry or discard, which the store then applies by id).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from ._exceptions import ConfigError, InvalidEvent
from .events import NORMALISED_FIELDS, normalised_values, parse_event
from .store import EventFilter, JobState, Operations, StoredEvent, Watch

__all__ = ["EventPage", "EventQuery", "find_events", "matching_ids", "parse_since", "parse_span"]

#: Stored events one page may look at before it returns what it found so far (with a
#: cursor to go on): a rare match must not make one request scan the whole store.
SCAN_LIMIT = 20_000

_FIELD = {name: i for i, name in enumerate(NORMALISED_FIELDS)}
#: Which normalised fields each search field matches (any of them).
_PERSON = ("person_id", "cio_id")
_EMAIL = ("email", "recipient")
_CAMPAIGN = (
    "campaign_id",
    "broadcast_id",
    "newsletter_id",
    "transactional_message_id",
    "action_id",
)


@dataclass(frozen=True, slots=True)
class EventQuery:
    """What to look for; empty fields match everything.

    ``person`` matches the customer id or ``cio_id``; ``email`` the address or the
    recipient, in any case; ``delivery`` the delivery id; ``campaign`` a campaign,
    broadcast, newsletter, transactional message or action id; ``text`` any part of
    the raw JSON body (ASCII letters in any case).  Times are unix seconds of receipt.
    """

    since: float | None = None
    until: float | None = None
    kinds: tuple[str, ...] = ()
    states: tuple[JobState, ...] = ()
    person: str | None = None
    email: str | None = None
    delivery: str | None = None
    campaign: str | None = None
    text: str | None = None

    @property
    def _fields(self) -> list[tuple[tuple[str, ...], str]]:
        wanted = (
            (_PERSON, self.person),
            (_EMAIL, self.email),
            (("delivery_id",), self.delivery),
            (_CAMPAIGN, self.campaign),
        )
        return [(names, value) for names, value in wanted if value]

    def filter(self) -> EventFilter:
        """The store's part: a superset of the matches.  Without ``text``, the first
        field value searched for must appear in the body too; not an email with letters
        beyond ASCII, which ``matches`` compares in any case and the store's text test
        folds only for ASCII (``ÉMILE@x`` must still find ``émile@x``)."""
        sieve = self.text or next(
            (v for names, v in self._fields if v.isascii() or names is not _EMAIL), None
        )
        return EventFilter(
            since=self.since,
            until=self.until,
            kinds=self.kinds,
            states=self.states,
            text=sieve,
        )

    def matches(self, stored: StoredEvent) -> bool:
        """Whether an event the store's ``filter()`` returned is one asked for."""
        fields = self._fields
        if not fields:
            return True
        try:
            values = normalised_values(parse_event(stored.body, received_at=stored.received_at))
        except InvalidEvent:
            return False
        for names, wanted in fields:
            fold = names is _EMAIL
            target = wanted.casefold() if fold else wanted
            found = (values[_FIELD[name]] for name in names)
            if not any(
                v is not None and ((str(v).casefold() if fold else str(v)) == target) for v in found
            ):
                return False
        return True


@dataclass(frozen=True, slots=True)
class EventPage:
    """One page of matches, newest first.  ``next_before`` is the cursor of the next
    page (None: there is none); a page may hold fewer than asked for and still have
    one, when it stopped after looking at ``SCAN_LIMIT`` events."""

    events: list[StoredEvent]
    next_before: int | None


async def find_events(
    store: Watch, query: EventQuery, *, before_seq: int | None = None, limit: int = 50
) -> EventPage:
    """Up to ``limit`` matches of ``query`` below ``before_seq``, newest first."""
    where = query.filter()
    found: list[StoredEvent] = []
    cursor = before_seq
    scanned = 0
    batch = max(limit, 200)
    while scanned < SCAN_LIMIT:
        chunk = await store.browse(where, before_seq=cursor, limit=batch)
        for stored in chunk:
            scanned += 1
            cursor = stored.seq
            if query.matches(stored):
                found.append(stored)
                if len(found) == limit:
                    return EventPage(found, stored.seq)
        if len(chunk) < batch:
            return EventPage(found, None)
    return EventPage(found, cursor)


async def matching_ids(
    store: Operations, query: EventQuery, *, limit: int | None = None
) -> list[str]:
    """The ``event_id`` of every match, oldest first (at most ``limit``)."""
    ids: list[str] = []
    async for stored in store.iter_events(query.filter()):
        if query.matches(stored):
            ids.append(stored.event_id)
            if limit is not None and len(ids) >= limit:
                break
    return ids


_SPAN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*")
_SPAN_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_span(text: str) -> float | None:
    """``90s``, ``30m``, ``12h``, ``7d``, ``2w`` -> seconds; None for anything else."""
    m = _SPAN.fullmatch(text)
    return float(m.group(1)) * _SPAN_UNITS[m.group(2)] if m else None


def parse_since(text: str, now: float) -> float:
    """``7d``, ``12h``, ``30m``, ``90s``, an ISO date/time (UTC if naive) or unix seconds."""
    span = parse_span(text)
    if span is not None:
        return now - span
    if re.fullmatch(r"\d+(?:\.\d+)?", text):  # unix seconds: not nan, inf, 1e3 or +5
        return float(text)
    try:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--since {text!r}: use 7d, 12h, 30m, an ISO date or unix seconds"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()
