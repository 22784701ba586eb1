"""The drain on SIGTERM, in this process: in front of a server's own handler, draining at once,
the server told to stop once after the grace; answers meanwhile say Connection: close."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from service.api.drain import CloseWhileDraining, Drain


class FakeServer:
    """What the drain needs of uvicorn's Server: a SIGTERM handler and ``should_exit``."""

    def __init__(self) -> None:
        self.should_exit = False
        self.signals: list[int] = []

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.signals.append(sig)
        self.should_exit = True


@contextlib.contextmanager
def serving(server: FakeServer) -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, server.handle_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


async def until(condition: Any, timeout: float = 10) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def test_sigterm_drains_for_the_grace_then_stops_the_server():
    server, drain = FakeServer(), Drain(grace_s=0.3)
    with serving(server):
        with drain.on_sigterm():
            os.kill(os.getpid(), signal.SIGTERM)
            await until(lambda: drain.draining)
            assert not server.should_exit, "still serving during the grace"
            waited = await until(lambda: server.should_exit)
        assert waited >= 0.2
        assert server.signals == [], "stopped as on a signal, without the signal (exit 0)"
        assert signal.getsignal(signal.SIGTERM) == server.handle_exit, "handed back"


async def test_a_second_sigterm_neither_restarts_nor_cuts_the_grace():
    server, drain = FakeServer(), Drain(grace_s=0.5)
    with serving(server), drain.on_sigterm():
        os.kill(os.getpid(), signal.SIGTERM)
        await until(lambda: drain.draining)
        signalled = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. the whole process group was signalled
        await asyncio.sleep(0.05)
        assert not server.should_exit
        await until(lambda: server.should_exit)
        assert time.monotonic() - signalled < 5


async def test_with_no_grace_the_server_stops_at_once():
    server, drain = FakeServer(), Drain(grace_s=0)
    with serving(server), drain.on_sigterm():
        os.kill(os.getpid(), signal.SIGTERM)
        await until(lambda: server.should_exit, timeout=2)


async def test_without_a_server_handler_sigterm_keeps_its_meaning():
    drain = Drain(grace_s=5)
    before = signal.getsignal(signal.SIGTERM)
    assert not callable(before), "pytest leaves SIGTERM at its default"
    with drain.on_sigterm():
        assert signal.getsignal(signal.SIGTERM) == before


async def answers(app: Any, scope_type: str = "http") -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": scope_type, "path": "/predict"}, receive, send)
    return sent


async def keep_alive_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"connection", b"keep-alive")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def test_answers_say_connection_close_only_while_draining():
    drain = Drain(grace_s=5)
    app = CloseWhileDraining(keep_alive_app, drain)
    normal = await answers(app)
    drain.draining = True
    draining = await answers(app)
    assert normal[0]["headers"][-1] == (b"connection", b"keep-alive")
    assert draining[0]["headers"] == [(b"content-type", b"application/json"),
                                      (b"connection", b"close")]
    assert draining[1] == normal[1]
