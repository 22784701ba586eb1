"""The Open Inference Protocol (KServe v2 REST) beside our own routes: health, metadata, infer.

The same pool, batchers, cache and metrics as /predict answer it. A version in the path pins it
(an alias too, as ``X-Model-Version`` does); ``/v2/models/{model}/infer`` is routed like an
unpinned /predict (traffic policy, canary, shadow, MODEL_ALIAS). Answers carry
``X-Model-Version``; errors are the protocol's ``{"error": ...}`` (``api.errors``). The infer
routes are hot: served as fast routes (routes/fast.py), ahead of the middleware stack
(``app.HotRoutes``).
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

import service
from service.api.deps import (
    REF_PATTERN,
    PoolDep,
    SettingsDep,
    choose_version,
    get_app_settings,
    get_cache,
    get_shadow,
    route_for,
)
from service.api.encoding import v2_response
from service.api.errors import ServiceUnavailable
from service.api.inputs import InputError, read_body
from service.api.routes.fast import FastRoute
from service.api.serving import predict_rows
from service.api.v2_inputs import (
    DIGIT,
    HEADER_LENGTH,
    INPUT,
    OUTPUT_DATATYPES,
    PROBABILITIES,
    parse_infer_request,
)
from service.api.v2_schemas import (
    INFER_RESPONSES,
    V2LiveOut,
    V2ModelMetadataOut,
    V2ModelReadyOut,
    V2ReadyOut,
    V2ServerMetadataOut,
    v2_errors,
    v2_infer_doc,
)
from service.inference.pool import ModelPool, ServedVersion, VersionNotFound
from service.ml.preprocess import IMAGE_PIXELS
from service.settings import Settings

router = APIRouter(prefix="/v2", tags=["v2 protocol"])
JSON, BINARY = "application/json", "application/octet-stream"
EXTENSIONS = ["binary_tensor_data"]
# Runtime variant -> the protocol's platform name; the rest run the PyTorch model itself.
PLATFORMS = {"onnx": "onnxruntime_onnx", "onnx-int8": "onnxruntime_onnx",
             "torchscript": "pytorch_libtorch"}


@router.get("/health/live", response_model=V2LiveOut, summary="v2: the server is live")
async def v2_live() -> Response:
    return Response(b'{"live":true}', media_type=JSON)


@router.get("/health/ready", response_model=V2ReadyOut, responses=v2_errors(503),
            summary="v2: the default model is loaded and warm")
async def v2_ready(request: Request, pool: PoolDep) -> Response:
    if request.app.state.drain.draining:  # SIGTERM: leaving the rotation (docs/hardening.md)
        raise ServiceUnavailable("not ready: draining, this server is shutting down")
    default = pool.default
    if default is None or not default.batcher.running:
        raise ServiceUnavailable("not ready: the default model is not loaded and warm yet")
    return Response(b'{"ready":true}', media_type=JSON)


@router.get("", response_model=V2ServerMetadataOut, summary="v2: server metadata")
async def v2_server_metadata() -> Response:
    body = {"name": "lab2prod", "version": service.__version__, "extensions": EXTENSIONS}
    return Response(orjson.dumps(body), media_type=JSON)


@router.get("/models/{model}", response_model=V2ModelMetadataOut,
            responses=v2_errors(404, 503), summary="v2: model metadata (inputs, outputs)")
async def v2_model_metadata(model: str, pool: PoolDep, settings: SettingsDep) -> Response:
    """The served version's metadata (the default alias's)."""
    check_model(model, settings)
    return _metadata(pool, settings, pool.default)


@router.get("/models/{model}/versions/{version}", response_model=V2ModelMetadataOut,
            responses=v2_errors(404, 503), summary="v2: model metadata of a version")
async def v2_model_version_metadata(
    model: str, version: str, pool: PoolDep, settings: SettingsDep
) -> Response:
    check_model(model, settings)
    return _metadata(pool, settings, pool.lookup(await _resolve(pool, version)))


@router.get("/models/{model}/ready", response_model=V2ModelReadyOut,
            responses=v2_errors(404, 503), summary="v2: the model's default version is ready")
async def v2_model_ready(model: str, pool: PoolDep, settings: SettingsDep) -> Response:
    check_model(model, settings)
    return _ready(model, pool.default, settings.model_alias)


@router.get("/models/{model}/versions/{version}/ready", response_model=V2ModelReadyOut,
            responses=v2_errors(404, 503), summary="v2: a version is loaded and ready")
async def v2_model_version_ready(
    model: str, version: str, pool: PoolDep, settings: SettingsDep
) -> Response:
    """503 for a version that is not loaded: a version loads on its first inference request."""
    check_model(model, settings)
    name = await _resolve(pool, version)
    return _ready(model, pool.lookup(name), name)


@router.post("/models/{model}/infer", response_class=Response, responses=INFER_RESPONSES,
             openapi_extra=v2_infer_doc(versioned=False), summary="v2: infer")
async def v2_infer(request: Request) -> Response:
    """Routed like an unpinned /predict: the traffic policy, else MODEL_ALIAS."""
    return await infer(request, None)


@router.post("/models/{model}/versions/{version}/infer", response_class=Response,
             responses=INFER_RESPONSES, openapi_extra=v2_infer_doc(versioned=True),
             summary="v2: infer with a version (or alias)")
async def v2_infer_version(request: Request) -> Response:
    """Pinned to the version in the path, as X-Model-Version pins /predict."""
    return await infer(request, request.path_params["version"])


async def infer(request: Request, version: str | None) -> Response:
    """Route, read and check the request, predict every digit (cache, then one submission to
    the version's batcher), answer in the protocol's JSON or binary form."""
    settings = await get_app_settings(request)
    check_model(request.path_params["model"], settings)
    served, route = await choose_version(request, route_for(request, _pin(version)))
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise InputError(f"Content-Encoding {encoding!r} is not supported; send the body "
                         "uncompressed", 415)
    body = await read_body(request, settings.max_upload_bytes)
    inference = parse_infer_request(body, request.headers.get(HEADER_LENGTH),
                                    max_items=settings.batch_max_items)
    digits = list(inference.digits)
    rows, hits = await predict_rows(
        digits, served=served, cache=await get_cache(request), timeout_s=settings.request_timeout_s
    )
    if route.shadow is not None:
        (await get_shadow(request)).copy(route.shadow, digits, served,
                                         rows.argmax(axis=1).tolist())
    content, json_length = v2_response(rows, inference.outputs, model_name=settings.model_name,
                                       version=served.version, request_id=inference.id)
    headers = {"X-Model-Version": served.version, "X-Cache-Hits": str(hits)}
    if json_length is None:
        return Response(content, media_type=JSON, headers=headers)
    headers["Inference-Header-Content-Length"] = str(json_length)
    return Response(content, media_type=BINARY, headers=headers)


def is_infer_path(path: str) -> bool:
    """Whether a request path is one of the infer routes' (api.app's GZip reads it)."""
    return path.startswith("/v2/models/") and path.endswith("/infer")


def check_model(model: str, settings: Settings) -> None:
    if model != settings.model_name:
        raise HTTPException(404, f"unknown model {model[:80]!r}; this server serves "
                                 f"{settings.model_name!r}")


def _pin(version: str | None) -> str | None:
    if version is not None and not REF_PATTERN.match(version):
        raise VersionNotFound(f"no model version {version[:80]!r}: a version is v<N> (v3), an "
                              "alias a name such as production")
    return version


async def _resolve(pool: ModelPool, version: str) -> str:
    """A version or alias in the path -> the version (404 when the registry has none such)."""
    _pin(version)
    return await pool.resolve_fresh(version)


def _ready(model: str, served: ServedVersion | None, name: str) -> Response:
    if served is None or not served.batcher.running:
        raise ServiceUnavailable(f"{model} {name} is not loaded; a version loads on its first "
                                 "inference request", retry_after=2)
    return Response(orjson.dumps({"name": model, "ready": True}), media_type=JSON)


def _metadata(pool: ModelPool, settings: Settings, served: ServedVersion | None) -> Response:
    """Inputs and outputs; the platform and class count of ``served`` (the default version's
    when it is not loaded)."""
    described = served or pool.default
    classes = len(described.model.class_names) if described else -1
    runtime = served.model.runtime_name if served else None
    body = {
        "name": settings.model_name,
        "versions": pool.versions,
        "platform": PLATFORMS.get(runtime or "", "pytorch"),
        "inputs": [{"name": INPUT, "datatype": "UINT8", "shape": [-1, IMAGE_PIXELS]}],
        "outputs": [
            {"name": PROBABILITIES, "datatype": OUTPUT_DATATYPES[PROBABILITIES],
             "shape": [-1, classes]},
            {"name": DIGIT, "datatype": OUTPUT_DATATYPES[DIGIT], "shape": [-1]},
        ],
    }
    return Response(orjson.dumps(body), media_type=JSON)


# Served first (routes/fast.py); the router's entries document the same endpoints. Their answers
# may be large (a batch's probabilities): app.HotRoutes serves them through GZip.
FAST_ROUTES = [
    FastRoute("/v2/models/{model}/infer", v2_infer, methods=["POST"]),
    FastRoute("/v2/models/{model}/versions/{version}/infer", v2_infer_version, methods=["POST"]),
]
