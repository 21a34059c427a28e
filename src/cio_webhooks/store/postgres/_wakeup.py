"""Waking idle workers: LISTEN on a connection of its own, NOTIFY in the writing transaction.

A transaction that makes work due (stores a pending event, requeues, releases) runs
``NOTIFY <channel>``; PostgreSQL delivers it at COMMIT to every listening session, in
this process or any other.  ``Listener`` keeps one dedicated connection (never one
from the pool: a pooled connection is handed to others and would lose the LISTEN),
blocked on its socket while idle, so a waiting worker costs no CPU.  When that
connection breaks it reconnects with a growing pause (never a busy loop), and after
each (re)connect reports "work may be due", since notifications sent while it was
away are lost; the waiters' timeout is the polling fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Any

import psycopg
from psycopg import sql

__all__ = ["Listener", "channel_for"]

log = logging.getLogger("cio_webhooks.store")

#: The pause before reconnecting a broken listen connection: first, and at most.
RECONNECT_PAUSE = (0.5, 30.0)


def channel_for(schema: str) -> str:
    """The notification channel of a store in ``schema`` (an identifier of at most
    63 bytes, unique per schema)."""
    channel = f"cio_work_{schema}"
    if len(channel.encode()) <= 63:
        return channel
    return f"cio_work_{hashlib.sha256(schema.encode()).hexdigest()[:32]}"


class Listener:
    """Sets ``work`` whenever a notification arrives on ``channel``."""

    def __init__(self, dsn: str, channel: str, work: asyncio.Event) -> None:
        self._dsn = dsn
        self._channel = channel
        self._work = work
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.attempts = 0  # connections tried, and made: tests, diagnostics
        self.connects = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="cio-pg-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    async def _run(self) -> None:
        pause = RECONNECT_PAUSE[0]
        while True:
            self.attempts += 1
            try:
                self._conn = await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True, connect_timeout=10
                )
                await self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                self.connects += 1
                pause = RECONNECT_PAUSE[0]
                self._work.set()  # anything sent while we were not listening
                async for _ in self._conn.notifies():
                    self._work.set()
            except (psycopg.Error, OSError) as exc:
                log.warning("event=listen_lost channel=%s error=%s", self._channel, exc)
            finally:
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        await self._conn.close()
                    self._conn = None
            await asyncio.sleep(pause)
            pause = min(pause * 2, RECONNECT_PAUSE[1])
