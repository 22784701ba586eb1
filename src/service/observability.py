"""Structured JSON logs with a request id, and the middleware that records every request.

``RequestContextMiddleware`` is plain ASGI (no BaseHTTPMiddleware): it gives every request an id
(the client's ``X-Request-ID`` when it is sane, else a fresh one), returns it as ``X-Request-ID``,
puts it in every log line written while the request runs, records the request count and latency
by route template, status and the model version that answered (its ``X-Model-Version`` header;
``service.monitoring.metrics``), and turns an unhandled error into a JSON 500 carrying the id.
"""

from __future__ import annotations

import logging
import random
import re
import sys
import time
from contextvars import ContextVar
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.monitoring.metrics import observe_request

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
logger = logging.getLogger("service.http")

# --- logging ------------------------------------------------------------------------------------

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            payload["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["error"] = self.formatException(record.exc_info)
        return orjson.dumps(payload, default=str).decode()


def configure_logging(level: str = "info", json_logs: bool = True) -> None:
    """Route every logger (uvicorn's included) to one stderr handler; idempotent."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_lab2prod", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._lab2prod = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    handler.setFormatter(
        JsonFormatter() if json_logs else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True


# --- the request middleware ---------------------------------------------------------------------

_SANE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
_ERROR_HEADERS = [(b"content-type", b"application/json")]


def new_request_id() -> str:
    """16 hex digits: unique enough to find a request's log lines, not a secret. The random
    module's generator (reseeded in each forked child) costs no system call, unlike
    os.urandom's getrandom on every request."""
    return f"{random.getrandbits(64):016x}"


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's ``X-Request-ID`` when it is sane, else a fresh id."""
    for name, value in headers:
        if name == b"x-request-id":
            if _SANE_ID.match(value):
                return value.decode()
            break
    return new_request_id()


def internal_error(request_id: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The JSON 500 for an unhandled error: headers (without the id's) and body."""
    body = orjson.dumps({"detail": "internal server error", "request_id": request_id})
    return [*_ERROR_HEADERS, (b"content-length", b"%d" % len(body))], body


def answered_by(headers: list[tuple[bytes, bytes]]) -> str:
    """The model version an answer names in its ``X-Model-Version`` header ("" if none)."""
    for name, value in headers:
        if name == b"x-model-version":
            return value.decode()
    return ""


def record_request(scope: Scope, status: int, version: str, elapsed: float,
                   access_log: bool) -> None:
    """The request's metrics (by route template, status and answering version) and, with
    ``access_log``, its log line."""
    route = scope.get("route")
    template = getattr(route, "path", None) or "unmatched"
    observe_request(template, scope["method"], status, version, elapsed)
    if access_log:
        logger.info(
            "request",
            extra={
                "method": scope["method"], "path": scope["path"], "route": template,
                "status": status, "ms": round(elapsed * 1000, 3),
                "model_version": version or None,
            },
        )


class RequestContextMiddleware:
    """Request id, metrics, optional access log and a last-resort JSON 500 (pure ASGI)."""

    def __init__(self, app: ASGIApp, *, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope["headers"])
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        id_header = (b"x-request-id", request_id.encode())
        started = time.perf_counter()
        status = 500
        version = ""
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started, version
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = message.get("headers")
                if headers:
                    version = answered_by(headers)
                    message["headers"] = [*headers, id_header]
                else:
                    message["headers"] = [id_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unhandled error", extra={"path": scope.get("path")})
            if response_started:
                raise
            status = 500
            headers, body = internal_error(request_id)
            await send({"type": "http.response.start", "status": 500,
                        "headers": [*headers, id_header]})
            await send({"type": "http.response.body", "body": body})
        finally:
            record_request(scope, status, version, time.perf_counter() - started, self.access_log)
            request_id_var.reset(token)
