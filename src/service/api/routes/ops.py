"""Operations: GET /health, /ready, /model-info and /metrics."""

from __future__ import annotations

import hashlib

import orjson
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from service.api.schemas import HealthOut, ModelInfoOut, ReadyOut, header
from service.observability import QUEUE_DEPTH

router = APIRouter(tags=["operations"])
JSON = "application/json"
OK = orjson.dumps({"status": "ok"})
CACHING = {
    "ETag": header("Names this exact body; send it back as If-None-Match.", {"type": "string"}),
    "Cache-Control": header("no-cache: keep it, but revalidate (cheap: 304).", {"type": "string"}),
}
IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "The ETag of a body you hold (or a comma-separated list, or *): 304 if current.",
    "schema": {"type": "string"},
}


@router.get("/health", response_model=HealthOut, summary="Liveness: the process answers")
async def health() -> Response:
    """Always 200 while the event loop runs; use /ready to decide whether to send traffic."""
    return Response(OK, media_type=JSON)


@router.get(
    "/ready",
    response_model=ReadyOut,
    responses={
        503: {
            "model": ReadyOut,
            "description": "Not ready: no warm model (or, enqueue-only, no reachable broker).",
        }
    },
    summary="Readiness: model loaded and warm; dependencies ok or degraded",
)
async def ready(request: Request) -> Response:
    """200 'ready' or 'degraded' (serving, but e.g. Redis is down); 503 'not ready'."""
    state = request.app.state
    model = state.model
    cache_status = state.cache.status()
    cache_status["redis"] = await state.cache.check()
    checks = {name: await check() for name, check in state.ready_checks.items()}
    batcher = state.batcher
    if model is None:  # LOAD_MODEL=false: an enqueue-only instance needs its broker, not a model
        model_status = {"loaded": False, "required": False}
        serving = checks.get("broker") == "ok"
    else:
        model_status = {"loaded": model.ready, "warm": model.ready, "version": model.version,
                        **model.runtime_summary()}
        serving = model.ready and batcher is not None and batcher.running
    degraded = cache_status["redis"] == "degraded" or any(
        value not in ("ok", "disabled") for value in checks.values()
    )
    status = "not ready" if not serving else "degraded" if degraded else "ready"
    body = {
        "status": status,
        "model": model_status,
        "cache": cache_status,
        "queue": {
            "depth": batcher.depth if batcher else 0,
            "max": state.settings.max_queue_size,
        },
        "checks": checks,
    }
    return Response(orjson.dumps(body), status_code=200 if serving else 503, media_type=JSON)


@router.get(
    "/model-info",
    response_model=ModelInfoOut,
    responses={
        200: {"headers": CACHING},
        304: {"description": "Not modified (If-None-Match matched the ETag).", "headers": CACHING},
    },
    openapi_extra={"parameters": [IF_NONE_MATCH]},
    summary="The served model's version and card summary (ETag, Cache-Control)",
)
async def model_info(request: Request) -> Response:
    """Version, runtime, device and the model card; cacheable, revalidate with If-None-Match."""
    state = request.app.state
    settings = state.settings
    info = (
        state.model.info()
        if state.model is not None
        else {"model": settings.model_name, "alias": settings.model_alias, "loaded": False}
    )
    body = orjson.dumps(info, option=orjson.OPT_SORT_KEYS)
    etag = f'"{hashlib.blake2b(body, digest_size=12).hexdigest()}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}  # store, but revalidate (cheap: 304)
    wanted = request.headers.get("if-none-match", "")
    if etag in (tag.strip() for tag in wanted.split(",")) or wanted.strip() == "*":
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=JSON, headers=headers)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "The Prometheus text exposition format.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(request: Request) -> Response:
    """Requests, latency, batch sizes, queue depth, cache by tier, model version."""
    state = request.app.state
    QUEUE_DEPTH.set(state.batcher.depth if state.batcher else 0)
    state.cache.status()  # refreshes the cache gauges
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
