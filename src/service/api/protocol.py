"""What one connection may cost the server: uvicorn's httptools protocol with three bounds.

- **Header time.** A connection's request line and headers must arrive within HEADER_TIMEOUT_S,
  counted from the accept (or, on a keep-alive connection, from the next request's first byte):
  bytes trickling in do not extend it. Late ones are answered ``408`` and closed. Idle keep-alive
  time between requests is uvicorn's ``timeout_keep_alive`` (KEEP_ALIVE_TIMEOUT_S).
- **Header size.** Request line plus headers larger than MAX_HEADER_BYTES are answered ``431``
  and closed; the parser is never fed past the budget (httptools buffers a header until its end,
  so an endless header would otherwise grow memory without bound).
- **Connections.** At most MAX_CONNECTIONS open per process (0: three quarters of the open-file
  limit, the rest kept for model files, Redis, the broker and the registry). A connection over
  the cap makes room by closing, in this order: the longest-waiting one that has not finished
  its headers (``408``; one that has sent nothing yet only once it has had EVICTABLE_AFTER_S
  to); one already answered and lingering (below); the longest-idle keep-alive one (quietly, as
  its keep-alive timeout would). Otherwise the newcomer is answered ``503`` with ``Retry-After``.
  The grace keeps a flood of reconnecting stalled clients from evicting a normal client's
  connection in the moment between its accept and its request (the slow-headers drill).

A refused connection lingers up to LINGER_S, its input read and dropped, so that the client reads
the answer rather than a reset; it keeps its slot (its file descriptor is still open) and goes
when room is needed and no stalled connection can: a client refused while still sending its
request (a normal client refused at the very start of a flood) would otherwise be closed by the
next newcomer mid-request, and its kernel would drop the answer on the reset. Whenever the
server closes a connection itself, it first drops the input the kernel already holds, so the
close is a FIN after the answer, not a reset that would destroy the answer before the client
reads it.

uvicorn's own ``limit_concurrency`` is not used: it counts the same connections but answers only
after reading a request's headers (a slow client still holds its slot meanwhile), never makes
room by closing a stalled connection, and sends no Retry-After; requests in flight are bounded
by this cap (one per connection) and inference backpressure by MAX_QUEUE_SIZE.

Every refusal is counted in ``lab2prod_connections_refused_total{reason}``. The bounds are read
from the settings once per process, so ``--workers`` processes each apply them. Per request the
added work is a few attribute checks, and a dict update when a connection goes idle or its
headers come in pieces; the header clock is one timer per process, set for the oldest waiting
connection (measurements: docs/hardening.md).

The protocol also starts the service's hot routes' direct answers (``api.direct``) in place of
uvicorn's ASGI run, where a request's turn comes (``_start_asgi_task``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from dataclasses import dataclass
from typing import Any, ClassVar
from weakref import WeakKeyDictionary

from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from service.api.direct import DirectAnswers, direct_answers_of
from service.monitoring.metrics import CONNECTIONS_REFUSED
from service.settings import Settings, get_settings

logger = logging.getLogger(__name__)
MIN_CONNECTIONS = 64
# After a refusal, read and drop what the client is still sending for up to this long before
# closing: closing with unread input makes the kernel send a reset (and drop unsent output), and
# a client still writing its request would see "connection reset" instead of the answer.
LINGER_S = 2.0
RETRY_AFTER_S = 1
EVICTABLE_AFTER_S = 1.0  # at most; a quarter of HEADER_TIMEOUT_S when that is shorter

_REFUSALS = {  # reason -> status; each counter child exists (at 0) from the start
    "header_timeout": 408, "evicted": 408, "header_too_large": 431, "over_capacity": 503,
}
_REFUSED = {reason: CONNECTIONS_REFUSED.labels(reason) for reason in _REFUSALS}
_EXPLANATIONS = {
    "header_timeout": "request headers not received in time (HEADER_TIMEOUT_S)",
    "evicted": "request headers not received before the server needed the connection",
    "header_too_large": "request line and headers too large (MAX_HEADER_BYTES)",
    "over_capacity": "too many open connections (MAX_CONNECTIONS); retry later",
}

# Where a connection stands (``_phase``).
WAITING = "waiting"  # its headers are incomplete and no request of it is being served
ACTIVE = "active"  # a request is being read or answered
IDLE = "idle"  # keep-alive, between requests
LINGERING = "lingering"  # answered 408/431/503, dropping input until the client closes
CLOSING = "closing"  # closed by us, its file descriptor not yet released
CLOSED = "closed"  # gone, or handed to the WebSocket protocol


def connection_limit(max_connections: int, open_files: int | None = None) -> int:
    """MAX_CONNECTIONS, or for 0 three quarters of the open-file limit (``ulimit -n``; the
    process's own when ``open_files`` is None), and never fewer than 64."""
    if max_connections < 0:
        raise ValueError(f"max_connections must be 0 (derive from the open-file limit) or "
                         f"positive, not {max_connections}")
    if max_connections:
        return max_connections
    if open_files is None:
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if open_files == resource.RLIM_INFINITY or open_files < 0:
        open_files = 1 << 16  # unlimited: still a bound, far above what one process serves
    return max(MIN_CONNECTIONS, open_files - open_files // 4)


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    max_header_bytes: int
    max_connections: int  # resolved: never 0

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(settings.header_timeout_s, settings.max_header_bytes,
                   connection_limit(settings.max_connections))


class ConnectionGuard:
    """One server's (one process's) connections that may be closed to make room, each kind
    oldest first, and the one timer that times out the oldest connection waiting for headers."""

    def __init__(self, limits: ConnectionLimits, loop: asyncio.AbstractEventLoop,
                 direct: DirectAnswers | None = None) -> None:
        self.limits = limits
        self.loop = loop
        self.direct = direct  # the service's hot routes, answered without ASGI (api.direct)
        # Insertion order is waiting order: a connection is (re)inserted when its clock starts.
        self.waiting: dict[GuardedHttpToolsProtocol, float] = {}
        self.idle: dict[GuardedHttpToolsProtocol, None] = {}  # in the order they went idle
        self.lingering: dict[GuardedHttpToolsProtocol, None] = {}
        self.closing = 0  # closed by us, still in uvicorn's connection set until released
        self.evictable_after_s = min(EVICTABLE_AFTER_S, limits.header_timeout_s / 4)
        self._timer: asyncio.TimerHandle | None = None

    def over_capacity(self, connections: int) -> bool:
        return connections - self.closing > self.limits.max_connections

    def wait(self, protocol: GuardedHttpToolsProtocol, since: float) -> None:
        self.waiting[protocol] = since
        protocol._phase = WAITING
        if self._timer is None:
            self._arm()

    def forget(self, protocol: GuardedHttpToolsProtocol) -> None:
        self.waiting.pop(protocol, None)
        self.idle.pop(protocol, None)
        self.lingering.pop(protocol, None)

    def make_room(self) -> bool:
        """Close one connection (see the module's docstring for which); False when every
        connection is busy with a request."""
        victim = self._oldest_evictable()
        if victim is not None:
            victim.refuse("evicted", linger=False)  # its slot is needed now
            return True
        if self.lingering:  # answered already, but maybe still sending: after the stalled ones
            next(iter(self.lingering)).close_now()
            return True
        if self.idle:
            next(iter(self.idle)).close_now()
            return True
        return False

    def _oldest_evictable(self) -> GuardedHttpToolsProtocol | None:
        """The longest-waiting connection that has sent part of its headers, or nothing yet for
        EVICTABLE_AFTER_S: one just accepted whose request is still in the kernel's buffer is
        not taken for a stalled one."""
        fresh_since = self.loop.time() - self.evictable_after_s
        for protocol, since in self.waiting.items():
            if protocol._header_bytes or since <= fresh_since:
                return protocol
        return None

    def _arm(self) -> None:
        oldest = next(iter(self.waiting.values()), None)
        if oldest is not None:
            self._timer = self.loop.call_at(oldest + self.limits.header_timeout_s, self._expire)

    def _expire(self) -> None:
        self._timer = None
        started_before = self.loop.time() - self.limits.header_timeout_s
        late = []
        for protocol, since in self.waiting.items():
            if since > started_before:
                break
            late.append(protocol)
        for protocol in late:
            protocol.refuse("header_timeout")
        self._arm()


_guards: WeakKeyDictionary[ServerState, ConnectionGuard] = WeakKeyDictionary()


def _drop_pending_input(transport: asyncio.Transport, limit: int = 1 << 20) -> None:
    """Read and drop what the kernel holds for this socket (non-blocking, bounded): closing a
    socket with unread input sends a reset, which makes the client's kernel drop the answer we
    just wrote before the client reads it."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        fd = sock.fileno()
        while limit > 0 and (chunk := os.read(fd, 65536)):  # the fd is non-blocking
            limit -= len(chunk)
    except OSError:  # BlockingIOError: nothing more to read; or already closed
        pass


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the header timeout, header size and connection cap
    described above; pass the class as uvicorn's ``http``."""

    limits: ClassVar[ConnectionLimits | None] = None  # from the settings on first use

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        guard = _guards.get(self.server_state)
        if guard is None:
            cls = type(self)
            if cls.limits is None:
                cls.limits = ConnectionLimits.from_settings(get_settings())
            guard = _guards[self.server_state] = ConnectionGuard(
                cls.limits, self.loop, direct_answers_of(self.app))
            logger.info("connection limits", extra=vars(cls.limits))
        self._guard = guard
        self._phase = WAITING
        self._in_body = False  # between a request's headers and its end: bytes are body
        self._header_bytes = 0  # of the request being received, while not in a body
        self._max_header_bytes = guard.limits.max_header_bytes
        self._linger: asyncio.TimerHandle | None = None

    # --- connection life ---

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self._guard
        while guard.over_capacity(len(self.connections)):  # once, unless others linger too
            if not guard.make_room():
                self.refuse("over_capacity")
                return
        guard.wait(self, self.loop.time())

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.forget(self)
        if self._phase is CLOSING:
            self._guard.closing -= 1
        if self._linger is not None:
            self._linger.cancel()
        self._phase = CLOSED
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_body:
            super().data_received(data)
            return
        phase = self._phase
        if phase is LINGERING or phase is CLOSING:
            return  # answered: read and drop until the client closes
        room = self._max_header_bytes - self._header_bytes
        if len(data) <= room:
            self._header_bytes += len(data)
            if phase is not IDLE:
                super().data_received(data)
                return
            # Keep-alive: the next request's clock starts at this first byte, but one whose
            # headers come whole (the usual case) is never entered in the waiting list.
            self._guard.idle.pop(self, None)
            since = self.loop.time()
            super().data_received(data)
            if self._phase is IDLE:
                self._guard.wait(self, since)
            return
        if phase is IDLE:
            self._guard.idle.pop(self, None)
            self._guard.wait(self, self.loop.time())
        # Past the budget: feed only what fits. If that finished the headers, the rest is body
        # (or the next request) and is fed as usual; if not, the headers are too large.
        view = memoryview(data)
        self._header_bytes += room  # > 0 until a header block completes (and resets it)
        super().data_received(view[:room])  # type: ignore[arg-type]
        if self.transport.is_closing() or self._phase is CLOSED:
            return  # answered 400, or upgraded to a WebSocket
        if self._header_bytes:
            self.refuse("header_too_large")
        else:
            self.data_received(view[room:])  # type: ignore[arg-type]

    def refuse(self, reason: str, *, linger: bool = True) -> None:
        """Answer ``reason``'s status and stop reading requests; close once the client has
        read the answer and closed (at most LINGER_S later), or at once without ``linger``."""
        if self._phase in (LINGERING, CLOSING, CLOSED):
            return
        self._guard.forget(self)
        if self.transport.is_closing():  # already answered (a 400) and closing
            return
        self._in_body = False
        _REFUSED[reason].inc()
        self.transport.write(self._refusal(_REFUSALS[reason], _EXPLANATIONS[reason]))
        if not linger:
            self.close_now()
            return
        self._phase = LINGERING
        self._guard.lingering[self] = None
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the client sees the end, closes, and we are done
        self._linger = self.loop.call_later(LINGER_S, self.close_now)

    def close_now(self) -> None:
        """Close (the answer written so far is still sent); the slot counts as free at once."""
        if self._phase is CLOSING or self._phase is CLOSED:
            return
        self._guard.forget(self)
        self._guard.closing += 1
        self._phase = CLOSING
        _drop_pending_input(self.transport)
        self.transport.close()

    def _refusal(self, status: int, explanation: str) -> bytes:
        body = explanation.encode("ascii")
        lines = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            lines += [name, b": ", value, b"\r\n"]
        if status == 503:
            lines.append(b"retry-after: %d\r\n" % RETRY_AFTER_S)
        lines += [b"content-type: text/plain; charset=utf-8\r\n",
                  b"content-length: %d\r\n" % len(body), b"connection: close\r\n\r\n", body]
        return b"".join(lines)

    def shutdown(self) -> None:
        if self._phase is LINGERING:
            self.close_now()
        elif self._phase is not CLOSING:
            super().shutdown()

    def handle_websocket_upgrade(self) -> None:
        self._guard.forget(self)
        self._phase = CLOSED  # the WebSocket protocol owns the transport from here
        super().handle_websocket_upgrade()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGIApp) -> None:
        """A request's turn (at its headers, or after the one before it on this connection):
        the hot routes run their direct answer, the rest uvicorn's ASGI cycle."""
        direct = self._guard.direct
        run = direct.task_for(cycle, app) if direct is not None else None
        if run is None:
            super()._start_asgi_task(cycle, app)
            return
        task = self.loop.create_task(run)
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    # --- parser callbacks ---

    def on_headers_complete(self) -> None:
        self._header_bytes = 0
        self._in_body = True
        if self._phase is WAITING:
            del self._guard.waiting[self]
        self._phase = ACTIVE
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if (self._phase is ACTIVE and not self._in_body and self.cycle.response_complete
                and not self.transport.is_closing()):
            if self._header_bytes:  # part of the next request is here: its clock starts now
                self._guard.wait(self, self.loop.time())
            else:
                self._phase = IDLE
                self._guard.idle[self] = None
