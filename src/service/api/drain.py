"""A graceful drain on SIGTERM: leave the load balancer's rotation before the listener closes.

Closing the listener at once drops more than in-flight requests: a client that already wrote
its next request on a kept-alive connection gets a reset and no answer. So on SIGTERM, for
``drain_grace_s`` seconds, this process keeps serving everything (new connections too: a load
balancer that has not noticed yet still gets answers) while

- GET /ready answers 503 ``draining``, so a load balancer probing it stops sending here, and
- every answer carries ``Connection: close``, so a client with a kept-alive connection opens
  its next one elsewhere instead of writing into a socket about to close.

Then uvicorn's own graceful shutdown: the listener closes, in-flight requests finish (within
``IN_FLIGHT_TIMEOUT_S``), the lifespan exits, and the process exits 0. ``DRAIN_GRACE_S=0``
skips the grace; SIGINT (Ctrl-C) never waits for it; a second SIGTERM changes nothing (a
supervisor that signals the whole process group must not cut the grace short).

Each process drains itself: the handler is installed by the app's lifespan, which runs in every
process, and with ``--workers N`` uvicorn's supervisor forwards its SIGTERM to each worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import signal
import threading
from collections.abc import Awaitable, Iterator
from types import FrameType
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

# What uvicorn's graceful shutdown (timeout_graceful_shutdown) gives in-flight requests after
# the grace. From SIGTERM to exit takes at most drain_grace_s + this: an orchestrator's grace
# period (terminationGracePeriodSeconds, stop_grace_period) must exceed it (test_deploy_*).
IN_FLIGHT_TIMEOUT_S = 10


class Drain:
    """This process's drain: ``draining`` turns true on SIGTERM; ``grace_s`` later the server
    is told to stop."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server_handler: Any = None  # the SIGTERM handler we stood in front of
        self._timer: asyncio.TimerHandle | None = None

    @contextlib.contextmanager
    def on_sigterm(self) -> Iterator[None]:
        """While inside: SIGTERM starts the drain instead of stopping the server at once.

        Only in front of a server's own handler (uvicorn's, installed before the lifespan
        starts): without one, SIGTERM keeps its default meaning (e.g. the app under a test
        client, in a thread or in pytest's main thread)."""
        current = signal.getsignal(signal.SIGTERM)
        if threading.current_thread() is not threading.main_thread() or not callable(current):
            yield
            return
        self._loop = asyncio.get_running_loop()
        self._server_handler = current
        signal.signal(signal.SIGTERM, self._on_signal)
        try:
            yield
        finally:
            if self._timer is not None:
                self._timer.cancel()
            if signal.getsignal(signal.SIGTERM) == self._on_signal:
                signal.signal(signal.SIGTERM, current)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # A signal handler may interrupt anything, the logging module's lock included: only
        # flip the flag here (answers change at once) and leave the rest to the event loop.
        if self.draining:
            return
        self.draining = True
        assert self._loop is not None
        # in a context of its own, not that of the request the signal happened to interrupt
        self._loop.call_soon_threadsafe(self._begin, context=contextvars.Context())

    def _begin(self) -> None:
        logger.info("draining: /ready answers 503, connections close after their answer",
                    extra={"drain_grace_s": self.grace_s})
        assert self._loop is not None
        self._timer = self._loop.call_later(self.grace_s, self._stop_server)

    def _stop_server(self) -> None:
        logger.info("drained: closing the listener, finishing in-flight requests",
                    extra={"in_flight_timeout_s": IN_FLIGHT_TIMEOUT_S})
        server = getattr(self._server_handler, "__self__", None)
        if hasattr(server, "should_exit"):
            # uvicorn's Server: what its handler does, minus re-raising SIGTERM once stopped,
            # so that a drained process exits 0 rather than "killed by SIGTERM" (143).
            server.should_exit = True
        else:
            self._server_handler(signal.SIGTERM, None)


class CloseWhileDraining:
    """ASGI middleware: while draining, every HTTP answer says ``Connection: close`` (uvicorn
    then closes the connection once the answer is sent)."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Returns the inner app's coroutine instead of awaiting it: no extra frame per request
        # on the hot path while not draining.
        if not self.drain.draining or scope["type"] != "http":
            return self.app(scope, receive, send)
        return self.app(scope, receive, _closing(send))


def _closing(send: Send) -> Send:
    async def send_closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(name, value) for name, value in message.get("headers", ())
                       if name.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return send_closing
