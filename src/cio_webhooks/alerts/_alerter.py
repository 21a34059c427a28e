"""The ``Alerter``: the background task that judges the rules and sends the messages."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence

import aiohttp

from ..settings import ALERT_EVERY, ALERT_HTTP_TIMEOUT, ALERT_RATES_EVERY
from ..store import AlertState, Store
from ..vitals import EmailRates, email_rates
from ._config import AlertConfig
from ._notify import Message, Notifier, build_notifiers, send_all
from ._rules import evaluate, span
from ._snapshot import read_snapshot
from ._state import RESOLVED, Transition, decide

__all__ = ["Alerter", "message_of"]

log = logging.getLogger("cio_webhooks.alerts")


def message_of(transition: Transition, config: AlertConfig, now: float) -> Message:
    """What is said about ``transition`` (at ``now``), linking to its dashboard page."""
    f = transition.finding
    text = f.text
    if transition.status == RESOLVED:
        text += f" (it fired for {span(now - transition.since)})"
    elif transition.repeat:
        text += f" (firing for {span(now - transition.since)})"
    return Message(
        rule=f.rule,
        status=transition.status,
        level=f.level,
        value=f.value,
        threshold=f.threshold,
        text=text,
        url=config.link(f.page),
        at=now,
        repeat=transition.repeat,
    )


class Alerter:
    """Judge ``config``'s rules on ``store`` every ``every`` seconds and send one
    message per transition (``decide``) to the notifiers.

    Any number of processes may run one on the same store: the alert state is the
    store's, changed by compare-and-set, and only the process whose change was
    recorded sends.  ``notifiers`` default to those of ``config.notify``, on an HTTP
    session the alerter opens in ``run`` (or ``check``) and closes after.
    ``policies`` False: no policy runs, ``track_failures`` is not judged.  Email rates
    (a count over a day of events) are read again only every ``rates_every`` seconds."""

    def __init__(
        self,
        store: Store,
        config: AlertConfig,
        *,
        clock: Callable[[], float] = time.time,
        every: float = ALERT_EVERY,
        policies: bool = True,
        notifiers: Sequence[Notifier] | None = None,
        timeout: float = ALERT_HTTP_TIMEOUT,
        rates_every: float = ALERT_RATES_EVERY,
    ) -> None:
        self.store = store
        self.config = config
        self.every = every
        self._clock = clock
        self._policies = policies
        self._notifiers = list(notifiers) if notifiers is not None else None
        self._timeout = timeout
        self._rates_every = rates_every
        self._rates: dict[float, tuple[float, EmailRates]] = {}  # window -> (read at, rates)

    async def _email_rates(self, window: float, now: float) -> EmailRates:
        cached = self._rates.get(window)
        if cached is None or not 0 <= now - cached[0] < self._rates_every:
            cached = (now, await email_rates(self.store, now=now, window=window))
            self._rates[window] = cached
        return cached[1]

    @contextlib.asynccontextmanager
    async def notifiers(self) -> AsyncIterator[list[Notifier]]:
        """The notifiers to send through, for the ``async with`` block."""
        if self._notifiers is not None:
            yield self._notifiers
        else:
            async with aiohttp.ClientSession() as session:
                yield build_notifiers(self.config.notify, session, timeout=self._timeout)

    async def check(self, notifiers: Sequence[Notifier] | None = None) -> list[Message]:
        """Judge every enabled rule once, now; record and send each transition this
        process wins.  Returns the messages it sent (each to every notifier)."""
        if notifiers is None:
            async with self.notifiers() as found:
                return await self.check(found)
        now = self._clock()
        snapshot = await read_snapshot(
            self.store, self.config, now=now, policies=self._policies, rates=self._email_rates
        )
        states = {state.rule: state for state in await self.store.alert_states()}
        await self._quiet_disabled(states.values(), now)
        sent: list[Message] = []
        for finding in evaluate(snapshot, self.config):
            rule = self.config.rule(finding.rule)
            transition = decide(
                finding, states.get(finding.rule), now=now, cooldown=self.config.cooldown_of(rule)
            )
            if transition is None:
                continue
            # Recorded first, sent after: another process may have taken this very
            # transition (then it sends, not us), and a crash in between loses one
            # message instead of sending it twice.
            if not await self.store.swap_alert(transition.state, expected=transition.expected):
                log.debug("event=alert_taken rule=%s status=%s", finding.rule, transition.status)
                continue
            message = message_of(transition, self.config, now)
            await send_all(notifiers, message)
            sent.append(message)
        return sent

    async def _quiet_disabled(self, states: Iterable[AlertState], now: float) -> None:
        """A rule turned off while firing is recorded resolved, without a message: it
        would otherwise show as firing on the dashboard for good, and send a RESOLVED
        for something long gone once turned on again."""
        enabled = {rule.name for rule in self.config.enabled}
        for state in states:
            if state.firing and state.rule not in enabled:
                quiet = dataclasses.replace(state, firing=False, changed_at=now)
                await self.store.swap_alert(quiet, expected=state.version)

    async def run(self, stop: asyncio.Event) -> None:
        """``check`` every ``every`` seconds until ``stop`` is set; a failed check is
        logged and the next one comes on time."""
        rules = ",".join(r.name for r in self.config.enabled) or "none"
        async with self.notifiers() as notifiers:
            log.info(
                "event=alerts_started rules=%s notifiers=%s every=%g",
                rules,
                ",".join(n.name for n in notifiers) or "none",
                self.every,
            )
            while not stop.is_set():
                try:
                    await self.check(notifiers)
                except Exception as exc:  # the store is down, a bug: the next check retries
                    log.error("event=alert_check_failed error=%s", f"{type(exc).__name__}: {exc}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.every)
