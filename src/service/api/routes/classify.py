"""POST /classify and GET /result/{inference_id}: submit a digit now, fetch its prediction later.

The job goes to RabbitMQ (``AMQP_URL``; ``lab2prod worker`` answers it) or, without a broker,
to an in-process queue that this API serves itself. The ``lifespan`` below starts and stops
that machinery (``service.queue.lifecycle``) and registers the ``broker`` and ``result_store``
readiness checks that GET /ready reports.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.responses import Response

from service.api.deps import SettingsDep, route_request
from service.api.errors import ServiceUnavailable
from service.api.inputs import digit_from_request
from service.api.schemas import (
    PREDICT_REQUEST_DOC,
    RETRY_AFTER,
    ROUTING_PARAMETERS,
    error_responses,
    header,
)
from service.inference.router import DEFAULT
from service.monitoring import metrics
from service.queue.broker import BrokerUnavailable
from service.queue.jobs import JobStatus
from service.queue.lifecycle import AsyncJobs, start_async, stop_async
from service.queue.results import ResultStoreUnavailable

router = APIRouter(tags=["async"])
JSON = "application/json"


# 202 from POST /classify: the job is queued (the broker confirmed it).
class ClassifyAccepted(BaseModel):
    inference_id: str = Field(description="A uuid4; poll GET /result/{inference_id}.")


# GET /result/{inference_id}: fields beyond the status appear when the status has them.
class JobResultOut(BaseModel):
    inference_id: str
    status: Literal["pending", "done", "failed"]
    predicted_class: int | None = Field(None, description="When done: the predicted digit.")
    confidence: float | None = Field(None, description="When done: its probability, 0..1.")
    model_version: str | None = Field(None, description="When done: the version that answered.")
    error: str | None = Field(None, description="When failed: what went wrong.")


@contextlib.asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """Start the broker, result store (and embedded worker); register their readiness checks."""
    jobs = await start_async(app, app.state.settings)
    app.state.ready_checks["broker"] = lambda: _broker_check(jobs)
    app.state.ready_checks["result_store"] = lambda: _store_check(jobs)
    try:
        yield
    finally:
        await stop_async(app)


async def _broker_check(jobs: AsyncJobs) -> str:
    status = await jobs.broker.status()
    if not status.ok:
        return f"unreachable: {status.error}"
    metrics.JOBS_QUEUE_DEPTH.labels(status.queue).set(status.depth or 0)
    metrics.JOBS_QUEUE_CONSUMERS.labels(status.queue).set(status.consumers or 0)
    if jobs.mode == "embedded" and jobs.worker is None:
        return "disabled"  # no broker and no model: /classify answers 503 saying so
    return "ok"


async def _store_check(jobs: AsyncJobs) -> str:
    return "ok" if await jobs.store.ping() else f"unreachable ({jobs.store.kind})"


async def get_jobs(request: Request) -> AsyncJobs:
    jobs: AsyncJobs | None = getattr(request.app.state, "jobs", None)
    if jobs is None:
        raise ServiceUnavailable("async jobs are starting or shutting down; retry shortly")
    return jobs


JobsDep = Annotated[AsyncJobs, Depends(get_jobs)]
LOCATION = header("Where to poll: /result/{inference_id}.", {"type": "string"})
RESULT_LINK = {
    "operationRef": "#/paths/~1result~1{inference_id}/get",
    "parameters": {"inference_id": "$response.body#/inference_id"},
    "description": "Poll the job's result with the id this answer carries.",
}
NOT_QUEUED = (
    "Not queued: the broker or the result store is unreachable, or this instance has no way to "
    "run jobs now; retry after Retry-After seconds."
)
UNKNOWN_JOB = "Unknown id, or its result expired (RESULT_TTL_S)."
STORE_DOWN = "The result store is unreachable; retry after Retry-After seconds."


@router.post(
    "/classify",
    status_code=202,
    response_model=ClassifyAccepted,
    responses={
        202: {"headers": {"Location": LOCATION}, "links": {"result": RESULT_LINK}},
        **error_responses(400, 404, 413, 415, 422, 500, 503, descriptions={
            500: "A bug (this route runs no model): the log has the details under the request "
            "id.", 503: NOT_QUEUED}),
    },
    openapi_extra={**PREDICT_REQUEST_DOC, **ROUTING_PARAMETERS},
    summary="Queue one digit for classification; poll GET /result/{inference_id}",
)
async def classify(request: Request, jobs: JobsDep, settings: SettingsDep) -> Response:
    """Same input as /predict; 202 only once the job is queued, 503 + Retry-After if it is not.

    A pinned version (`X-Model-Version`, `?version=`) or a canary's travels with the job; the
    worker answers with it. An unknown pinned version is refused 404 here when this instance
    loads models (an enqueue-only one cannot check it: the job's result then says failed)."""
    route = route_request(request)
    pool = request.app.state.pool
    if route.reason != DEFAULT and pool is not None:
        await pool.resolve_fresh(route.ref)  # 404 with the known versions when unknown
    digit = await digit_from_request(
        request, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels
    )
    try:
        inference_id = await jobs.submit(digit, None if route.reason == DEFAULT else route.ref)
    except BrokerUnavailable as exc:
        raise ServiceUnavailable(str(exc), retry_after=exc.retry_after_s) from None
    except ResultStoreUnavailable as exc:
        raise ServiceUnavailable(f"{exc}; nothing was queued", retry_after=1) from None
    return Response(
        orjson.dumps({"inference_id": inference_id}),
        status_code=202,
        media_type=JSON,
        headers={"Location": f"/result/{inference_id}"},
    )


@router.get(
    "/result/{inference_id}",
    response_model=JobResultOut,
    responses={
        202: {
            "model": JobResultOut,
            "description": "Still queued or running; retry after Retry-After seconds.",
            "headers": {"Retry-After": RETRY_AFTER},
        },
        **error_responses(404, 503, descriptions={404: UNKNOWN_JOB, 503: STORE_DOWN}),
    },
    summary="The job's status: done (200), failed (200), pending (202) or unknown (404)",
)
async def result(inference_id: str, jobs: JobsDep, settings: SettingsDep) -> Response:
    """Done: the prediction. Failed: the error. Pending: 202 with Retry-After. Unknown: 404."""
    try:
        record = await jobs.result(inference_id)
    except ResultStoreUnavailable as exc:
        raise ServiceUnavailable(str(exc), retry_after=1) from None
    if record is None:
        raise HTTPException(
            404,
            f"no job {inference_id!r}: unknown, or its result expired "
            f"(results are kept {settings.result_ttl_s} s, RESULT_TTL_S)",
        )
    pending = record.status is JobStatus.PENDING
    return Response(
        orjson.dumps(record.public()),
        status_code=202 if pending else 200,
        media_type=JSON,
        headers={"Retry-After": "1"} if pending else None,
    )
