"""Telling people: one ``Message`` per transition, to every configured notifier.

=========  ==============================================================================
notifier   sends
=========  ==============================================================================
log        one line: ``event=alert rule=... status=firing|resolved severity=... value=...``
slack      POST ``{"text": "..."}`` to a Slack incoming webhook (figure, threshold, link)
webhook    POST ``{"rule", "status", "level", "value", "threshold", "message", "url",
           "at", "repeat"}`` (JSON) to any URL
=========  ==============================================================================

HTTP notifiers share an ``aiohttp.ClientSession`` their caller owns and closes, each
POST bounded by ``ALERT_HTTP_TIMEOUT``.  A failure raises ``NotifyError`` saying which
notifier and why, never the URL (a webhook URL is its own secret); ``send_all`` logs it
and goes on with the others.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from .._exceptions import CioWebhooksError
from ..settings import ALERT_HTTP_TIMEOUT
from ._config import NotifyConfig

__all__ = [
    "LogNotifier",
    "Message",
    "Notifier",
    "NotifyError",
    "SlackNotifier",
    "WebhookNotifier",
    "build_notifiers",
    "send_all",
    "send_test",
]

log = logging.getLogger("cio_webhooks.alerts")


class NotifyError(CioWebhooksError):
    """A notifier could not deliver a message (the text names it, never its URL)."""


@dataclass(frozen=True)
class Message:
    """What is said about one transition of one rule (or a test)."""

    rule: str
    status: str  # "firing" | "resolved" (| "test")
    level: str
    value: float
    threshold: float
    text: str
    url: str  # the dashboard page
    at: float  # unix seconds
    repeat: bool = False

    @property
    def title(self) -> str:
        """``FIRING complaint_rate (critical)``, ``STILL FIRING ...``, ``RESOLVED ...``."""
        if self.status == "resolved":
            return f"RESOLVED {self.rule}"
        if self.status == "test":
            return "TEST cio-webhooks alerts"
        return f"{'STILL FIRING' if self.repeat else 'FIRING'} {self.rule} ({self.level})"

    def stamp(self) -> str:
        return dt.datetime.fromtimestamp(self.at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def as_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "status": self.status,
            "level": self.level,
            "value": self.value,
            "threshold": self.threshold,
            "message": f"{self.title}: {self.text}",
            "url": self.url,
            "at": self.stamp(),
            "repeat": self.repeat,
        }


class Notifier(Protocol):
    """Something that delivers messages.  ``name`` says which (in errors and logs)."""

    name: str

    async def send(self, message: Message) -> None:
        """Deliver ``message`` or raise ``NotifyError``."""
        ...


class LogNotifier:
    """One logfmt line per message, at INFO when resolved, WARNING otherwise."""

    name = "log"

    async def send(self, message: Message) -> None:
        level = logging.INFO if message.status == "resolved" else logging.WARNING
        log.log(
            level,
            "event=alert rule=%s status=%s severity=%s repeat=%s value=%s threshold=%s"
            " url=%s message=%s",
            message.rule,
            message.status,
            message.level,
            str(message.repeat).lower(),
            f"{message.value:g}",
            f"{message.threshold:g}",
            message.url,
            message.text,
        )


class _HttpNotifier:
    name = "http"

    def __init__(
        self, url: str, session: aiohttp.ClientSession, *, timeout: float = ALERT_HTTP_TIMEOUT
    ) -> None:
        self._url = url
        self._session = session
        self._timeout = timeout

    def __repr__(self) -> str:  # never the URL: it is the secret
        return f"{type(self).__name__}(<url hidden>)"

    def payload(self, message: Message) -> dict[str, Any]:
        raise NotImplementedError

    async def send(self, message: Message) -> None:
        try:
            async with self._session.post(
                self._url,
                json=self.payload(message),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                allow_redirects=False,
            ) as answer:
                await answer.read()
                status = answer.status
        except TimeoutError:
            raise NotifyError(f"{self.name}: no answer within {self._timeout:g} s") from None
        except aiohttp.ClientError as exc:
            # The exception's text may quote the URL: only its kind is told.
            raise NotifyError(f"{self.name}: could not be reached ({type(exc).__name__})") from None
        if not 200 <= status < 300:
            raise NotifyError(f"{self.name}: answered HTTP {status}")


class SlackNotifier(_HttpNotifier):
    """A Slack incoming webhook: ``{"text": ...}`` in Slack's markup, with a link."""

    name = "slack"

    def payload(self, message: Message) -> dict[str, Any]:
        icon = {"firing": ":rotating_light:", "resolved": ":white_check_mark:"}.get(
            message.status, ":bell:"
        )
        text = f"{icon} *{_escape(message.title)}*: {_escape(message.text)}"
        return {"text": f"{text} <{message.url}|Open the dashboard>"}


class WebhookNotifier(_HttpNotifier):
    """Any endpoint taking JSON: ``Message.as_json()``."""

    name = "webhook"

    def payload(self, message: Message) -> dict[str, Any]:
        return message.as_json()


def _escape(text: str) -> str:
    # Slack's markup reads these three as control characters.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def build_notifiers(
    notify: NotifyConfig, session: aiohttp.ClientSession, *, timeout: float = ALERT_HTTP_TIMEOUT
) -> list[Notifier]:
    """The notifiers ``notify`` configures (log first), the HTTP ones on ``session``."""
    found: list[Notifier] = []
    if notify.log:
        found.append(LogNotifier())
    if notify.slack:
        found.append(SlackNotifier(notify.slack, session, timeout=timeout))
    if notify.webhook:
        found.append(WebhookNotifier(notify.webhook, session, timeout=timeout))
    return found


async def send_all(notifiers: Sequence[Notifier], message: Message) -> dict[str, str]:
    """Send ``message`` through every notifier at once; a failure is logged (without a
    URL) and does not stop the others.  Returns ``{notifier: reason}`` of the failures."""

    async def one(notifier: Notifier) -> str | None:
        try:
            await notifier.send(message)
        except NotifyError as exc:
            reason = str(exc)
        except Exception as exc:  # a bug must not stop the others, nor the alerter
            reason = f"{notifier.name}: {type(exc).__name__}"
        else:
            return None
        log.error(
            "event=alert_notify_failed notifier=%s rule=%s status=%s error=%s",
            notifier.name,
            message.rule,
            message.status,
            reason,
        )
        return reason

    reasons = await asyncio.gather(*(one(n) for n in notifiers))
    return {n.name: r for n, r in zip(notifiers, reasons, strict=True) if r is not None}


async def send_test(
    notify: NotifyConfig,
    url: str,
    *,
    now: float,
    session: aiohttp.ClientSession | None = None,
    timeout: float = ALERT_HTTP_TIMEOUT,
) -> tuple[list[str], dict[str, str]]:
    """Send a test message (linking to ``url``) through every notifier of ``notify``.
    Returns the notifiers' names and ``{notifier: reason}`` of those that failed."""
    message = Message(
        rule="test",
        status="test",
        level="info",
        value=0.0,
        threshold=0.0,
        text="a test message: alerts of cio-webhooks reach this channel",
        url=url,
        at=now,
    )
    if session is None:
        async with aiohttp.ClientSession() as own:
            return await send_test(notify, url, now=now, session=own, timeout=timeout)
    notifiers = build_notifiers(notify, session, timeout=timeout)
    return [n.name for n in notifiers], await send_all(notifiers, message)
