"""Operations: GET /health, /ready, /model-info and /metrics."""

from __future__ import annotations

import asyncio
import hashlib

import orjson
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from service.api.deps import pinned_ref
from service.api.readiness import HEALTHY, ReadinessChecks
from service.api.schemas import (
    ROUTING_PARAMETERS,
    HealthOut,
    ModelInfoOut,
    ReadyOut,
    error_responses,
    header,
)
from service.inference.pool import ModelPool

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
            "description": "Not ready: no warm model (or, enqueue-only, no reachable broker), "
            "or 'draining': shutting down after SIGTERM (docs/hardening.md).",
        }
    },
    summary="Readiness: model loaded and warm; dependencies ok or degraded; not draining",
)
async def ready(request: Request) -> Response:
    """200 'ready' or 'degraded' (serving, but e.g. Redis is down or slow, or an alias points at a
    version that cannot be served: `model.alias_failures` says why); 503 'not ready', or
    'draining' after SIGTERM. Each dependency check has READY_CHECK_TIMEOUT_S, all at once."""
    state = request.app.state
    pool: ModelPool | None = state.pool
    draining = state.drain.draining
    cache_status = state.cache.status()
    if draining:  # leaving: the dependencies no longer matter, answer at once
        checks: dict[str, str] = {}
    else:
        readiness: ReadinessChecks = state.readiness
        cache_status["redis"], checks = await asyncio.gather(
            readiness.bounded(state.cache.check, on_timeout="degraded"),
            readiness.run(state.ready_checks),
        )
    default = pool.default if pool is not None else None
    if pool is None:  # LOAD_MODEL=false: an enqueue-only instance needs its broker, not a model
        model_status: dict[str, object] = {"loaded": False, "required": False}
        serving = checks.get("broker") == "ok"
    else:
        model_status = pool.status()
        serving = default is not None and default.batcher.running
    degraded = cache_status["redis"] == "degraded" or bool(model_status.get("alias_failures")) \
        or any(value not in HEALTHY for value in checks.values())
    status = "draining" if draining else "not ready" if not serving \
        else "degraded" if degraded else "ready"
    body = {
        "status": status,
        "model": model_status,
        "cache": cache_status,
        "queue": {
            "depth": default.batcher.depth if default else 0,
            "max": state.settings.max_queue_size,
        },
        "checks": checks,
    }
    code = 200 if serving and not draining else 503
    return Response(orjson.dumps(body), status_code=code, media_type=JSON)


@router.get(
    "/model-info",
    response_model=ModelInfoOut,
    responses={
        200: {"headers": CACHING},
        304: {"description": "Not modified (If-None-Match matched the ETag).", "headers": CACHING},
        **error_responses(404, 422, 503, descriptions={
            404: "The pinned version or alias does not exist in the registry.",
            422: "The pin is neither a version (v3) nor an alias name.",
            503: "The pinned version cannot be loaded now, or the registry is unreachable: "
            "retry after Retry-After seconds. (Without a model, LOAD_MODEL=false, the answer "
            "is 200 with loaded: false.)",
        }),
    },
    openapi_extra={"parameters": [IF_NONE_MATCH, *ROUTING_PARAMETERS["parameters"][:2]]},
    summary="The served model's version and card summary (ETag, Cache-Control)",
)
async def model_info(request: Request) -> Response:
    """Version, runtime (verified on this machine), device and the model card of the default
    alias's version, or of the one pinned with X-Model-Version / ?version=; cacheable,
    revalidate with If-None-Match."""
    state = request.app.state
    settings = state.settings
    pool: ModelPool | None = state.pool
    if pool is None:
        info = {"model": settings.model_name, "alias": settings.model_alias, "loaded": False}
    else:
        ref = pinned_ref(request)
        if ref is not None and pool.lookup(ref) is None:
            await pool.get(ref)  # 404 / 503 like /predict for a pin that cannot be served
        info = pool.info(ref)
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
    """Requests, latency, batch sizes, queue depth, cache by tier, per model version."""
    state = request.app.state
    if state.pool is not None:
        state.pool.observe_queues()
    state.cache.status()  # refreshes the cache gauges
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
