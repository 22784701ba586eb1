"""Every refusal as JSON ``{"detail": ..., "request_id": ...}`` with the right status; under
/v2 (the Open Inference Protocol) as that protocol's ``{"error": ...}``, same status.

4xx for what the client sent (InputError carries its own status), 503 + Retry-After when the
service cannot take the request now (queue full, model not loaded, out of memory, timeout),
500 + request id when the model itself failed (the traceback is in the log under that id).
"""

from __future__ import annotations

import logging
import math

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from service.api.encoding import v2_error
from service.api.inputs import InputError
from service.api.serving import InferenceFailed, InferenceTimeout
from service.inference.batcher import BatcherClosed, QueueFull
from service.inference.pool import Overloaded, VersionNotFound, VersionUnavailable
from service.monitoring import metrics
from service.observability import request_id_var

logger = logging.getLogger(__name__)
V2_PATHS = "/v2"  # the protocol's routes (routes/v2.py), answered in its error format


class ServiceUnavailable(RuntimeError):
    """Raised by dependencies when this instance cannot serve the route now."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def error_response(
    status: int, detail: str, headers: dict[str, str] | None = None
) -> Response:
    body = orjson.dumps({"detail": detail, "request_id": request_id_var.get()})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _refuse(
    request: Request, status: int, detail: str, headers: dict[str, str] | None = None
) -> Response:
    """The error answer in the format of the protocol the request speaks."""
    path: str = request.scope["path"]
    if path == V2_PATHS or path.startswith(V2_PATHS + "/"):
        return Response(v2_error(detail), status_code=status, media_type="application/json",
                        headers=headers)
    return error_response(status, detail, headers)


async def _input_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InputError)
    return _refuse(request, exc.status_code, exc.message)


async def _queue_full(request: Request, exc: Exception) -> Response:
    metrics.REJECTED.labels("queue_full").inc()
    retry = getattr(exc, "retry_after", 1)
    return _refuse(request, 503, str(exc), {"Retry-After": str(retry)})


async def _unavailable(request: Request, exc: Exception) -> Response:
    reason = {
        BatcherClosed: "closed", Overloaded: "out_of_memory", InferenceTimeout: "timeout",
        ServiceUnavailable: "unavailable", VersionUnavailable: "version_unavailable",
    }.get(type(exc), "unavailable")
    metrics.REJECTED.labels(reason).inc()
    retry = max(1, math.ceil(getattr(exc, "retry_after", None) or 1))
    return _refuse(request, 503, str(exc), {"Retry-After": str(retry)})


async def _version_not_found(request: Request, exc: Exception) -> Response:
    return _refuse(request, 404, str(exc))


async def _inference_failed(request: Request, exc: Exception) -> Response:
    request_id = request_id_var.get()
    return _refuse(
        request, 500, f"{exc}; the log has the details under request id {request_id}"
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {}) or None
    return _refuse(request, exc.status_code, str(exc.detail), headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg')}"
        for error in exc.errors()
    )
    return _refuse(request, 422, problems or "invalid request")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(InputError, _input_error)
    app.add_exception_handler(QueueFull, _queue_full)
    for unavailable in (
        BatcherClosed, Overloaded, InferenceTimeout, ServiceUnavailable, VersionUnavailable
    ):
        app.add_exception_handler(unavailable, _unavailable)
    app.add_exception_handler(VersionNotFound, _version_not_found)
    app.add_exception_handler(InferenceFailed, _inference_failed)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
