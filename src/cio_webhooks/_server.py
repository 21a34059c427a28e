"""The HTTP server: the listening socket, and uvicorn with limits on every connection.

uvicorn alone lets one client hold resources for ever: it has no limit on the size of a
request head with httptools (a 10 MB header is buffered), no deadline for receiving a
request (a connection that sends one header line every few seconds stays open), and
``limit_concurrency`` answers 503 to requests but still keeps idle connections open, so
a flood of idle connections locks real requests out.
``LimitedHttpProtocol`` adds the three limits of ``ConnectionLimits`` to uvicorn's
httptools protocol; everything else (keep-alive, pipelining, graceful shutdown) is
uvicorn's.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ._exceptions import CioWebhooksError
from .settings import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_SIZE, DEFAULT_READ_TIMEOUT

__all__ = [
    "ConnectionLimits",
    "LimitedHttpProtocol",
    "PortUnavailable",
    "fit_open_files",
    "listen",
    "protocol_for",
]

log = logging.getLogger("cio_webhooks.server")


@dataclass(frozen=True)
class ConnectionLimits:
    """What one client may take from the server."""

    max_header_size: int = DEFAULT_MAX_HEADER_SIZE
    read_timeout: float = DEFAULT_READ_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS


#: File descriptors kept for everything but client connections: the listening socket,
#: the SQLite files and their WAL/SHM, the Track client's sockets, logs.
RESERVED_FILES = 64


def fit_open_files(limits: ConnectionLimits) -> ConnectionLimits:
    """``limits`` with a connection cap this process can keep: the soft open-files
    limit is raised to the hard one when the cap needs it, and the cap is lowered
    (with a warning) when even that is too few.  Past the open-files limit accept()
    fails, and every new connection, Customer.io's included, is dropped; under the
    cap, the oldest idle connection is closed to make room instead."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limits.max_connections + RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return limits
    cap = max(1, soft - RESERVED_FILES)
    log.warning(
        "event=max_connections_lowered configured=%d max_connections=%d open_files_limit=%d",
        limits.max_connections,
        cap,
        soft,
    )
    return ConnectionLimits(
        max_header_size=limits.max_header_size,
        read_timeout=limits.read_timeout,
        max_connections=cap,
    )


class PortUnavailable(CioWebhooksError):
    """The address to listen on cannot be bound (in use, not ours, not an address)."""


def listen(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port), for uvicorn to serve on.

    ``reuse_port`` (SO_REUSEPORT) lets several receivers on one host listen on one
    port, the kernel spreading connections among them: one stopping or restarting
    leaves the port answered by the others."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        # Listening now makes "listening on" true when printed: connections wait in the
        # backlog until uvicorn accepts them, instead of being refused while it starts.
        sock.listen()
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise PortUnavailable(f"cannot listen on {host}:{port}: {reason}") from exc
    return sock


class _OneWritePerResponse:
    """The connection's transport, but what is written goes out once per response.

    uvicorn writes a response's head and its body separately, and each ``write``
    is a send on the socket (no Nagle delay on loopback or with TCP_NODELAY): two
    system calls and two segments where one does.  Writes are kept until the
    response is complete (``flush`` from ``on_response_complete``), the connection
    is closed, or at the latest the end of this turn of the event loop (a
    ``100 Continue``, a streamed body), so nothing waits on a later event.
    Everything else is the real transport's."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        pending = self._pending
        if pending:
            self._pending = []
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus ``limits`` (set on a subclass by ``protocol_for``)."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    # The server's connections that are not in the middle of a request (waiting for a
    # head, or kept alive between requests), oldest first: the ones to close for room.
    idle: ClassVar[dict[LimitedHttpProtocol, None]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # When the current request's read time is up (None: no deadline running), and
        # the one timer that checks it.  The timer is not cancelled and re-made for every
        # request on a kept-alive connection: it stays, and when it fires early for a
        # deadline that has moved, it is set again for the rest.
        self._deadline_at: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reading_head = True  # the next bytes belong to a request head
        self._head_bytes = 0  # bytes received since that head began
        self._chunk_bytes = 0  # size of the data being parsed

    # Connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._out = _OneWritePerResponse(transport, self.loop)
        super().connection_made(cast(asyncio.Transport, self._out))
        if len(self.connections) > self.limits.max_connections and not self._make_room():
            log.warning(
                "event=connection_refused reason=max_connections limit=%d",
                self.limits.max_connections,
            )
            self._answer_and_close(503, b"Too many connections")
            return
        self.idle[self] = None
        self._arm_deadline()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline_at = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.idle.pop(self, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._deadline_at is None:  # a new request on a kept-alive connection
            self._arm_deadline()
        self._chunk_bytes = len(data)
        if self._reading_head:
            self._head_bytes += self._chunk_bytes
        super().data_received(data)
        # A head that never ends: refuse it before it is buffered any further.  (A head
        # completed within this data is measured exactly in on_headers_complete.)
        if self._reading_head and self._head_bytes > self.limits.max_header_size:
            self._refuse_head()

    # Parser callbacks

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self.idle.pop(self, None)
        # The bytes received since the head began, plus this chunk (which may hold a
        # pipelined head that began after the previous body), bound the head's size
        # from above: only a head that may be over the limit is measured.
        if self._head_bytes + self._chunk_bytes > self.limits.max_header_size:
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size > self.limits.max_header_size:
                self._refuse_head()
                return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():  # nothing to deliver on a refused request
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm_deadline()
        self._reading_head, self._head_bytes = True, 0
        if not self.transport.is_closing():
            super().on_message_complete()

    def on_response_complete(self) -> None:
        self._out.flush()
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self.idle.pop(self, None)
            self.idle[self] = None  # idle again, and now the newest

    # Limits

    def _make_room(self) -> bool:
        """Close the oldest idle connection (a slow client's, most likely: a real request
        sends its head at once) so that this one can be served; False when none is idle."""
        victim = next(iter(self.idle), None)
        if victim is None:
            return False
        del self.idle[victim]
        log.info("event=connection_closed reason=max_connections phase=idle")
        victim._close_idle()
        return True

    def _close_idle(self) -> None:
        if self._head_bytes:
            self._answer_and_close(503, b"Too many connections")
        else:
            self._disarm_deadline()
            self.transport.close()

    def _arm_deadline(self) -> None:
        self._deadline_at = self.loop.time() + self.limits.read_timeout
        if self._timer is None:
            self._timer = self.loop.call_at(self._deadline_at, self._check_deadline)

    def _disarm_deadline(self) -> None:
        self._deadline_at = None  # the timer, when it fires, finds nothing to do

    def _check_deadline(self) -> None:
        self._timer = None
        if self._deadline_at is None:
            return
        if self.loop.time() < self._deadline_at:  # re-armed since: wait for the rest
            self._timer = self.loop.call_at(self._deadline_at, self._check_deadline)
            return
        self._read_timed_out()

    def _read_timed_out(self) -> None:
        self._deadline_at = None
        if self.transport.is_closing():
            return
        phase = "head" if self._reading_head else "body"
        log.info(
            "event=connection_closed reason=read_timeout phase=%s timeout_s=%g",
            phase,
            self.limits.read_timeout,
        )
        if self._reading_head and self._head_bytes:
            self._answer_and_close(408, b"Request Timeout")
        else:  # nothing was asked, or the handler waits for the body: it sees a disconnect
            self.transport.close()

    def _refuse_head(self) -> None:
        if self.transport.is_closing():
            return
        log.warning(
            "event=request_refused reason=header_too_large limit_bytes=%d",
            self.limits.max_header_size,
        )
        self._answer_and_close(431, b"Request Header Fields Too Large")

    def _answer_and_close(self, status: int, text: bytes) -> None:
        self._disarm_deadline()
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: %d\r\n" % len(text),
                    b"connection: close\r\n\r\n",
                    text,
                ]
            )
        )
        self.transport.close()


def protocol_for(limits: ConnectionLimits) -> type[LimitedHttpProtocol]:
    """The protocol class for uvicorn's ``Config(http=...)``, holding ``limits``."""
    return cast(
        "type[LimitedHttpProtocol]",
        type("LimitedHttpProtocol", (LimitedHttpProtocol,), {"limits": limits, "idle": {}}),
    )
