"""POST /predict and POST /predict/batch: validated digits -> cache -> batcher -> JSON bytes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.api.deps import BatcherDep, CacheDep, ModelDep, SettingsDep
from service.api.inputs import digit_from_request, digits_from_batch_json, read_body
from service.api.schemas import (
    BATCH_REQUEST_DOC,
    ERRORS_DOC,
    PREDICT_REQUEST_DOC,
    BatchOut,
    PredictionOut,
)
from service.api.serving import predict_digit, predict_digits

router = APIRouter(tags=["predict"])
JSON = "application/json"
HIT = {"X-Cache": "hit"}
MISS = {"X-Cache": "miss"}


@router.post(
    "/predict",
    response_model=PredictionOut,
    responses=ERRORS_DOC,
    openapi_extra=PREDICT_REQUEST_DOC,
    summary="Classify one digit (JSON pixels or an uploaded image)",
)
async def predict(
    request: Request, model: ModelDep, batcher: BatcherDep, cache: CacheDep, settings: SettingsDep
) -> Response:
    """JSON `{"pixels": [...]}` or multipart field `file`; header `X-Cache: hit|miss`."""
    digit = await digit_from_request(
        request, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels
    )
    body, hit = await predict_digit(
        digit, model=model, batcher=batcher, cache=cache, timeout_s=settings.request_timeout_s
    )
    return Response(body, media_type=JSON, headers=HIT if hit else MISS)


@router.post(
    "/predict/batch",
    response_model=BatchOut,
    responses=ERRORS_DOC,
    openapi_extra=BATCH_REQUEST_DOC,
    summary="Classify several digits sent as JSON pixels, answered in order",
)
async def predict_batch(
    request: Request, model: ModelDep, batcher: BatcherDep, cache: CacheDep, settings: SettingsDep
) -> Response:
    """`{"items": [{"pixels": [...]}, ...]}` -> `{"predictions": [...]}` in the same order.

    `X-Cache: hit` when every item came from the cache; `X-Cache-Hits` counts those that did."""
    digits = digits_from_batch_json(
        await read_body(request, settings.max_upload_bytes), settings.batch_max_items
    )
    bodies, hits = await predict_digits(
        digits, model=model, batcher=batcher, cache=cache, timeout_s=settings.request_timeout_s
    )
    headers = {"X-Cache": "hit" if hits == len(bodies) else "miss", "X-Cache-Hits": str(hits)}
    body = b'{"predictions":[' + b",".join(bodies) + b"]}"
    return Response(body, media_type=JSON, headers=headers)
