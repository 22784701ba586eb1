"""POST /predict and POST /predict/batch: route -> validated digits -> cache -> batcher -> JSON.

Each request is routed to a version (``deps.choose_version``: pinned, canary or the default
alias) and answered by it; the ``X-Model-Version`` header and the body's ``model_version`` name
it. A shadowed request is copied to the shadow version after its answer is ready.

These two are the hot path, so ``FAST_ROUTES`` serves them as plain Starlette routes ahead of
the documented ``router`` ones (routes/fast.py says why and how).
"""

from __future__ import annotations

import functools

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.api.deps import choose_version, get_app_settings, get_cache, get_shadow
from service.api.encoding import digit_of
from service.api.inputs import (
    digit_from_payload,
    digits_from_batch_json,
    payload_from_request,
    read_body,
)
from service.api.routes.fast import FastRoute
from service.api.schemas import (
    BATCH_REQUEST_DOC,
    PREDICT_REQUEST_DOC,
    ROUTING_PARAMETERS,
    X_CACHE,
    X_MODEL_VERSION,
    BatchOut,
    PredictionOut,
    error_responses,
    header,
)
from service.api.serving import predict_digits, predict_payload

router = APIRouter(tags=["predict"])
JSON = "application/json"
X_CACHE_ALL = header(
    "hit when every item came from the prediction cache, else miss.",
    {"type": "string", "enum": ["hit", "miss"]},
)
X_CACHE_HITS = header("How many items came from the cache.", {"type": "integer", "minimum": 0})


@router.post(
    "/predict",
    response_model=PredictionOut,
    responses={
        200: {"headers": {"X-Cache": X_CACHE, "X-Model-Version": X_MODEL_VERSION}},
        **error_responses(400, 404, 413, 415, 422, 500, 503),
    },
    openapi_extra={**PREDICT_REQUEST_DOC, **ROUTING_PARAMETERS},
    summary="Classify one digit (JSON pixels or an uploaded image)",
)
async def predict(request: Request) -> Response:
    """JSON `{"pixels": [...]}` or multipart field `file`; headers `X-Cache: hit|miss` and
    `X-Model-Version`. Pin a version with `X-Model-Version: v3` or `?version=v3`."""
    served, route = await choose_version(request)
    cache, settings = await get_cache(request), await get_app_settings(request)
    payload = await payload_from_request(request, max_bytes=settings.max_upload_bytes)
    parse = functools.partial(
        digit_from_payload, max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_image_pixels,
    )
    body, hit, digit = await predict_payload(
        payload, parse, served=served, cache=cache, timeout_s=settings.request_timeout_s,
    )
    if route.shadow is not None and digit is not None:
        (await get_shadow(request)).copy(route.shadow, [digit], served, [digit_of(body)])
    return Response(body, media_type=JSON, headers={
        "X-Cache": "hit" if hit else "miss", "X-Model-Version": served.version})


@router.post(
    "/predict/batch",
    response_model=BatchOut,
    responses={
        200: {"headers": {"X-Cache": X_CACHE_ALL, "X-Cache-Hits": X_CACHE_HITS,
                          "X-Model-Version": X_MODEL_VERSION}},
        **error_responses(400, 404, 413, 422, 500, 503),
    },
    openapi_extra={**BATCH_REQUEST_DOC, **ROUTING_PARAMETERS},
    summary="Classify several digits sent as JSON pixels, answered in order",
)
async def predict_batch(request: Request) -> Response:
    """`{"items": [{"pixels": [...]}, ...]}` -> `{"predictions": [...]}` in the same order.

    `X-Cache: hit` when every item came from the cache; `X-Cache-Hits` counts those that did.
    One version answers every item (pinned, canary or default, as for /predict)."""
    served, route = await choose_version(request)
    cache, settings = await get_cache(request), await get_app_settings(request)
    digits = digits_from_batch_json(
        await read_body(request, settings.max_upload_bytes), settings.batch_max_items
    )
    bodies, hits = await predict_digits(
        digits, served=served, cache=cache, timeout_s=settings.request_timeout_s
    )
    if route.shadow is not None:
        (await get_shadow(request)).copy(route.shadow, digits, served, list(map(digit_of, bodies)))
    headers = {"X-Cache": "hit" if hits == len(bodies) else "miss", "X-Cache-Hits": str(hits),
               "X-Model-Version": served.version}
    body = b'{"predictions":[' + b",".join(bodies) + b"]}"
    return Response(body, media_type=JSON, headers=headers)


# Served first (see the module docstring); the router's entries document the same endpoints.
FAST_ROUTES = [
    FastRoute("/predict", predict, methods=["POST"]),
    FastRoute("/predict/batch", predict_batch, methods=["POST"]),
]
