"""The operator's actions on dead letters and quarantined bodies, shared by the CLI
(``dlq retry|discard``, ``quarantine reingest``) and the dashboard, so that both do
exactly the same thing::

    where = await named_dead_letters(store, ("ev1", "ev2"))  # refuses non-dead ones
    n = await store.requeue(where, now=now)                   # retry
    counts = await reingest(store, quarantined_bodies(store, ()), named=False)
    await record_action(store, OperatorAction(now, "cli:ann", "dlq_retry", n, "every dead letter"))

``reingest`` reads quarantined bodies again: those that are events now are stored
(deduplicated) and leave the quarantine.  ``record_action`` keeps who did what in the
store, where every dashboard lists it, whichever tool the operator used.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field

from ._exceptions import ConfigError, InvalidEvent
from .app import STALE_REASON
from .events import parse_event
from .store import EventFilter, JobState, Operations, OperatorAction, Quarantined, Watch

__all__ = ["Reingested", "named_dead_letters", "quarantined_bodies", "record_action", "reingest"]

log = logging.getLogger("cio_webhooks.operator")


async def named_dead_letters(store: Operations, event_ids: tuple[str, ...]) -> EventFilter:
    """The filter of the dead letters ``event_ids``.  A named event that is not a dead
    letter refuses the whole action (``ConfigError``): a typo must not pass as
    "0 event(s)"."""
    wrong = []
    for event_id in event_ids:
        stored = await store.get_event(event_id)
        if stored is None:
            wrong.append(f"{event_id!r} (no such event)")
        elif stored.state is not JobState.DEAD:
            wrong.append(f"{event_id!r} ({stored.state.value})")
    if wrong:
        raise ConfigError(f"not dead letters, nothing done: {', '.join(wrong)}")
    return EventFilter(states=(JobState.DEAD,), event_ids=event_ids)


async def quarantined_bodies(
    store: Operations, idents: tuple[int, ...]
) -> AsyncIterator[Quarantined]:
    """The named bodies (all must exist, else ``ConfigError``), or every one, newest
    first, page by page."""
    if idents:
        named = [await store.quarantined(ident=i, limit=1) for i in idents]
        missing = [str(i) for i, found in zip(idents, named, strict=True) if not found]
        if missing:
            raise ConfigError(f"no quarantined body {', '.join(missing)}")
        for found in named:
            yield found[0]
        return
    before: int | None = None
    while page := await store.quarantined(limit=500, before_id=before):
        for q in page:
            yield q
        before = page[-1].id


@dataclass
class Reingested:
    """What ``reingest`` did with each body."""

    stored: int = 0
    duplicate: int = 0
    still_invalid: int = 0
    stale_left: int = 0
    #: Bodies the store cannot hold as an event (they stay quarantined), with why.
    refused: list[tuple[int, str]] = field(default_factory=list)

    @property
    def released(self) -> int:
        """Bodies that left the quarantine (stored, or already stored)."""
        return self.stored + self.duplicate

    def counts(self) -> dict[str, int]:
        """The counts in order; ``refused`` only when some were."""
        out = {
            "stored": self.stored,
            "duplicate": self.duplicate,
            "still_invalid": self.still_invalid,
            "stale_left": self.stale_left,
        }
        if self.refused:
            out["refused"] = len(self.refused)
        return out


async def reingest(
    store: Operations, bodies: AsyncIterable[Quarantined], *, named: bool
) -> Reingested:
    """Read ``bodies`` again; release those that are events now.  Stale bodies (signed
    beyond the dedupe horizon) are released only when ``named`` (the operator named
    them one by one), else left and counted."""
    done = Reingested()
    async for q in bodies:
        if not named and q.reason.startswith(STALE_REASON):
            done.stale_left += 1
            continue
        try:
            event = parse_event(q.body, received_at=q.received_at)
        except InvalidEvent:
            done.still_invalid += 1
            continue
        try:
            result = await store.release_quarantined(q.id, event)
        except ValueError as exc:
            # A value this store cannot hold (PostgreSQL: a NUL in the event_id): the
            # body stays quarantined, and the other bodies are still read again.
            done.refused.append((q.id, str(exc)))
            continue
        if result.value == "stored":
            done.stored += 1
        else:
            done.duplicate += 1
    return done


async def record_action(store: Watch, action: OperatorAction) -> Exception | None:
    """Keep ``action`` in the store (``Watch.record_operator_action``); None when it
    was kept, else the error that kept it from being kept.

    The action is done by then: a record the store cannot take must not turn its
    result into an error page or a failed command (the operator would do it again),
    so the error is returned for the caller to report, never raised."""
    try:
        await store.record_operator_action(action)
    except Exception as exc:  # whatever it is, the events were changed all the same
        return exc
    return None
