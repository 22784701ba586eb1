"""The hot routes answered from uvicorn's request cycle, without ASGI's messages.

uvicorn serves a request as an ASGI cycle: a task runs the app with ``receive`` and ``send``,
and the cycle checks and writes each message the app sends; the app's own layers wrap ``send``
again (request id, drain). For POST /predict that machinery cost about as much as a bare
Starlette route's whole request (docs/benchmarks/overhead.md, round 5). ``DirectAnswers`` serves
the routes ``HotRoutes`` serves without GZip: the same endpoint, request context (id, metrics,
access log, the JSON 500), drain rule and exception handlers, and writes the answer to the
connection in one piece. The protocol (``api.protocol``) starts it in place of the ASGI cycle.

What needs the cycle still gets it: a body still arriving when the request's turn comes (a large
or slow upload), ``Expect: 100-continue``, a client that accepts gzip on a route whose answers
may be large, and any other request. Pipelining, keep-alive, flow control and shutdown stay
uvicorn's: the direct answer completes the same cycle object they follow. What the direct answer
does not apply is uvicorn's proxy-headers rewrite of the scope's client and scheme; nothing these
routes do reads either.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.routing import Route
from starlette.types import ASGIApp, Message
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from service.api.drain import Drain
from service.observability import (
    answered_by,
    internal_error,
    record_request,
    request_id_of,
    request_id_var,
)

if TYPE_CHECKING:
    from service.api.app import HotRoutes

logger = logging.getLogger("service.http")
_DISCONNECT: Message = {"type": "http.disconnect"}


class DirectAnswers:
    """Answers the hot routes' requests on uvicorn's cycle objects (see the module)."""

    def __init__(self, hot: HotRoutes, *, drain: Drain, access_log: bool) -> None:
        self.hot = hot
        self.drain = drain
        self.access_log = access_log

    def task_for(self, cycle: RequestResponseCycle, app: ASGIApp
                 ) -> Coroutine[Any, Any, None] | None:
        """What runs this request's cycle, when it is one of ours (None: uvicorn's ASGI run).
        Called as the request's headers complete, before its body is read."""
        scope = cycle.scope
        if scope["method"] != "POST" or scope["root_path"] or cycle.waiting_for_100_continue:
            return None
        found = self.hot.route_for(scope)
        if found is None or found[1]:  # not hot, or answered through GZip
            return None
        return self._answer(cycle, app, found[0])

    async def _answer(self, cycle: RequestResponseCycle, app: ASGIApp, route: Route) -> None:
        if cycle.more_body or cycle.disconnected:
            await cycle.run_asgi(app)  # the body is still arriving: the cycle reads it
            return
        scope = cycle.scope
        scope["app"] = self.hot.app
        request_id = request_id_of(scope["headers"])
        token = request_id_var.set(request_id)
        scope["state"]["request_id"] = request_id
        id_header = (b"x-request-id", request_id.encode())
        started = time.perf_counter()
        status, version = 500, ""
        try:
            request = Request(scope, _body_once(bytes(cycle.body)))
            try:
                response = await self.hot.respond(route, request)
                status, headers, body = response.status_code, response.raw_headers, response.body
            except Exception:
                logger.exception("unhandled error", extra={"path": scope["path"]})
                status = 500
                headers, body = internal_error(request_id)
            version = answered_by(headers)
            await self._write(cycle, status, [*headers, id_header], body)
        finally:
            cycle.on_response = lambda: None  # as uvicorn's run_asgi leaves a finished cycle
            record_request(scope, status, version, time.perf_counter() - started,
                           self.access_log)
            request_id_var.reset(token)

    async def _write(self, cycle: RequestResponseCycle, status: int,
                     headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """What the cycle's ``send`` writes for a start and a whole body, in one write."""
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()
        if cycle.disconnected:
            return
        if self.drain.draining:
            cycle.keep_alive = False
        content = [STATUS_LINE[status]]
        for name, value in (*cycle.default_headers, *headers):
            content += (name, b": ", value, b"\r\n")
        content.append(b"\r\n" if cycle.keep_alive else b"connection: close\r\n\r\n")
        content.append(body)
        cycle.response_started = cycle.response_complete = True
        cycle.transport.write(b"".join(content))
        cycle.message_event.set()
        if not cycle.keep_alive:
            cycle.transport.close()
        cycle.on_response()


def _body_once(body: bytes) -> Any:
    """An ASGI ``receive`` for a request whose whole body has arrived."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        return messages.pop() if messages else _DISCONNECT

    return receive


def direct_answers_of(app: Any) -> DirectAnswers | None:
    """The service's ``DirectAnswers`` under the wrappers uvicorn puts around the app (proxy
    headers, message logging); None for any other app."""
    for _ in range(8):
        direct = getattr(app, "direct", None)
        if isinstance(direct, DirectAnswers):
            return direct
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None
