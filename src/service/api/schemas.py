"""Request and response shapes, for the OpenAPI document (/docs) and for clients.

The hot routes do not validate bodies through these models (784 floats through pydantic costs
more than the forward pass); ``api.inputs`` parses them with orjson and numpy. The request
models state the same rules in JSON Schema, so that a body the schema calls valid is one the
service accepts; what a schema cannot say (an upload must decode to an image with a digit in
it) is in the descriptions, and answered with a declared 4xx. Routes refer to the request
models (``PREDICT_REQUEST_DOC``, ``BATCH_REQUEST_DOC``); ``api.openapi`` puts their definitions
in ``components/schemas``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.api.inputs import MAX_FORM_FIELDS, UPLOAD_CONTENT_TYPES
from service.ml.preprocess import IMAGE_PIXELS, IMAGE_SIDE

COMPONENTS = "#/components/schemas/"

# JSON Schema's "number" excludes true and false, which the service refuses too.
Pixel = Annotated[float, Field(ge=0, le=255)]
FlatPixels = Annotated[list[Pixel], Field(min_length=IMAGE_PIXELS, max_length=IMAGE_PIXELS)]
PixelRow = Annotated[list[Pixel], Field(min_length=IMAGE_SIDE, max_length=IMAGE_SIDE)]
PixelRows = Annotated[list[PixelRow], Field(min_length=IMAGE_SIDE, max_length=IMAGE_SIDE)]


# Sent to POST /predict and /classify as JSON: one 28x28 digit, MNIST convention (light ink on
# dark). Other fields are ignored.
class PixelsIn(BaseModel):
    pixels: FlatPixels | PixelRows = Field(
        description="784 numbers, or 28 rows of 28, each in 0..255 (light ink on dark); "
        "fractions are rounded to the nearest level.",
        examples=[[0] * IMAGE_PIXELS],
    )


# Sent to POST /predict/batch. Its most items is a setting: api.openapi states this instance's.
class BatchIn(BaseModel):
    items: list[PixelsIn] = Field(
        min_length=1, description="Digits to classify, answered in the same order."
    )


UPLOAD_RULES = (
    "An image of one digit: PNG, JPEG, WebP, BMP or GIF (one frame), any size up to "
    "MAX_UPLOAD_BYTES (5 MiB by default) and MAX_IMAGE_PIXELS (25 million by default), dark ink "
    "on light paper or the reverse. A part type other than these formats' (or "
    "application/octet-stream) is answered 415. What a schema cannot say: the bytes must decode "
    "to such an image, with a digit that stands out from the background. An empty file is "
    "answered 400, bytes that are not a readable image 422 (415 for an image of another format), "
    "a blank image or one without contrast 422, a larger one 413: each with the error body."
)


# Sent to POST /predict and /classify as multipart/form-data: the image in the field "file".
# Other fields are ignored, up to the multipart parser's limit (maxProperties).
class UploadIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"maxProperties": 1 + MAX_FORM_FIELDS})

    file: bytes = Field(description=UPLOAD_RULES)


REQUEST_MODELS: tuple[type[BaseModel], ...] = (PixelsIn, BatchIn, UploadIn)


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"{COMPONENTS}{model.__name__}"}


# One answer of POST /predict (and each entry of a batch).
class PredictionOut(BaseModel):
    digit: int = Field(description="The predicted class index (the digit for MNIST).")
    confidence: float = Field(description="The probability of that class, 0..1.")
    probabilities: list[float] = Field(description="One probability per class, summing to 1.")
    model_version: str = Field(description="The registry version that answered, e.g. 'v3'.")


# The answer of POST /predict/batch.
class BatchOut(BaseModel):
    predictions: list[PredictionOut]


# Every 4xx/5xx body.
class ErrorOut(BaseModel):
    detail: str = Field(description="What was wrong, and how to send it instead.")
    request_id: str | None = Field(description="Also in the X-Request-ID header and the logs.")


# GET /health: the process is alive.
class HealthOut(BaseModel):
    status: str = "ok"


# GET /ready: whether to send traffic here, and the state of each dependency.
class ReadyOut(BaseModel):
    status: str = Field(
        description="'ready', 'degraded' (serving, a dependency is down or slow), 'not ready' "
        "or 'draining' (shutting down)."
    )
    model: dict[str, Any]
    cache: dict[str, Any]
    queue: dict[str, Any]
    checks: dict[str, str] = Field(default_factory=dict, description="Other dependencies.")


# GET /model-info: what is being served and where it came from.
class ModelInfoOut(BaseModel):
    model: str
    alias: str
    version: str | None = None
    loaded: bool
    loaded_at: str | None = Field(None, description="When this version was loaded (UTC).")
    runtime: str | None = Field(None, description="The runtime variant answering, e.g. onnx-int8.")
    runtime_requested: str | None = Field(None, description="RUNTIME: auto or a variant name.")
    device: str | None = None
    verification: dict[str, Any] | None = Field(
        None, description="The runtime checked against eager's answers on this machine at load: "
        "agreement, disagreements, accuracy drop, max probability difference, digits, seconds.",
    )
    runtime_fallbacks: list[dict[str, str]] = Field(
        default_factory=list, description="Variants of the release's chain passed over here, why."
    )
    architecture: str | None = Field(None, description="The model's architecture, e.g. mnist-cnn.")
    class_names: list[str] | None = Field(None, description="Class i's name, in output order.")
    normalization: dict[str, float] | None = Field(
        None, description="The mean and std inputs are normalised with (the training's)."
    )
    weights_sha256: str | None = Field(None, description="SHA-256 of the served weights.")
    card: dict[str, Any] | None = None


# The window GET /drift describes: the version's latest computed inputs.
class DriftWindowOut(BaseModel):
    size: int = Field(description="DRIFT_WINDOW: inputs compared once full.")
    filled: int = Field(description="Inputs in the window now (cache hits are not counted).")
    shared: bool = Field(description="True: the window every replica fills through Redis; "
                         "false: this instance's own (no REDIS_URL, or Redis unreachable).")


# The reference GET /drift compares with, recorded by the release.
class DriftReferenceOut(BaseModel):
    digits: int = Field(description="Evaluation digits the reference was recorded on.")


# One signal of GET /drift: the version's window of live inputs against its release reference.
class SignalDriftOut(BaseModel):
    test: Literal["chi-square", "kolmogorov-smirnov"] = Field(
        description="chi-square test of homogeneity (classes) or two-sample Kolmogorov-Smirnov."
    )
    psi: float = Field(description="Population stability index over the reference's bins.")
    statistic: float = Field(description="The test's statistic (chi-square, or KS distance).")
    p_value: float = Field(description="The test's p-value against the reference.")
    level: Literal["ok", "watch", "alert"] = Field(
        description="alert: PSI >= 0.25 and p < 0.002; watch: PSI >= 0.1 and p < 0.002."
    )
    reference_mean: float | None = Field(description="Continuous signals: mean at release.")
    window_mean: float | None = Field(description="Continuous signals: mean in the window.")


# GET /drift: whether a version's live inputs still look like its evaluation split at release.
class DriftOut(BaseModel):
    model_version: str = Field(description="The version described, e.g. 'v3'.")
    verdict: Literal["no reference", "filling", "ok", "watch", "alert"] = Field(
        description="'no reference': published without one, no figures; 'filling': the window "
        "is not full yet (figures so far, no verdict); else the worst signal's level."
    )
    alert: bool | None = Field(description="Whether the full window alerts; null until full.")
    window: DriftWindowOut
    reference: DriftReferenceOut | None = Field(description="null without a reference.")
    rule: str = Field(description="The alert rule, in words (docs/drift.md argues it).")
    signals: dict[str, SignalDriftOut] = Field(
        description="By signal: predicted_class, confidence, mean_ink, ink_box, lit_fraction "
        "(empty without a reference or before the first input)."
    )


# --- the OpenAPI entries routes declare ---------------------------------------------------------

PREDICT_REQUEST_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "JSON pixels, an image uploaded as multipart/form-data in the field "
        "'file', or an image as the whole body (its Content-Type one of the image types).",
        "content": {
            "application/json": {"schema": ref(PixelsIn)},
            "multipart/form-data": {
                "schema": ref(UploadIn),
                "encoding": {"file": {"contentType": ", ".join(UPLOAD_CONTENT_TYPES)}},
            },
            **{
                image_type: {"schema": {"type": "string", "format": "binary"}}
                for image_type in UPLOAD_CONTENT_TYPES
            },
        },
    }
}
BATCH_REQUEST_DOC: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": ref(BatchIn)}}}
}


def header(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A response header the answer always carries."""
    return {"description": description, "required": True, "schema": schema}


RETRY_AFTER = header("Seconds to wait before trying again.", {"type": "integer", "minimum": 0})
X_MODEL_VERSION = header("The registry version that answered, e.g. v3.",
                         {"type": "string", "pattern": "^v[0-9]+$"})
VERSION_REF = {"type": "string", "pattern": "^(v[0-9]{1,9}|[A-Za-z][A-Za-z0-9_.-]{0,63})$"}
# Request parameters of the routes that answer with a model: pinning and sticky canaries.
ROUTING_PARAMETERS: dict[str, Any] = {"parameters": [
    {"name": "X-Model-Version", "in": "header", "required": False, "schema": VERSION_REF,
     "description": "Pin the version that answers: a version (v3) or an alias (candidate). "
     "Unknown: 404 listing the known ones; one that cannot be loaded: 503 with the reason."},
    {"name": "version", "in": "query", "required": False, "schema": VERSION_REF,
     "description": "The same pin as X-Model-Version (the header wins when both are sent)."},
    {"name": "X-Client-Id", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "Makes the canary split sticky: the same id always gets the same version."},
]}
X_CACHE = header(
    "hit: answered from the prediction cache; miss: computed for this request.",
    {"type": "string", "enum": ["hit", "miss"]},
)
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Empty or malformed body: not JSON, an empty file, a broken multipart body.",
    401: "Unauthorized.",
    403: "Forbidden.",
    404: "Not found: for a pinned model version, the message lists the known versions and "
    "aliases.",
    413: "Body, image or batch over its limit (MAX_UPLOAD_BYTES, MAX_IMAGE_PIXELS, "
    "BATCH_MAX_ITEMS).",
    415: "Unsupported Content-Type, file part type or image format.",
    422: "Not one valid digit; the message says why (e.g. a pixel out of 0..255, no 'pixels' "
    "field, an image that does not decode or shows no digit).",
    500: "The model failed on this input, or a bug: the log has the details under the request id.",
    503: "Busy (inference queue full), timed out, or no model on this instance: retry after "
    "Retry-After seconds.",
}


def error_responses(
    *statuses: int, descriptions: Mapping[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """The refusals a route answers, each with the error body (and 503 with Retry-After);
    ``descriptions`` words some of them for that route."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        described = (descriptions or {}).get(status, ERROR_DESCRIPTIONS[status])
        entry: dict[str, Any] = {"model": ErrorOut, "description": described}
        if status == 503:
            entry["headers"] = {"Retry-After": RETRY_AFTER}
        responses[status] = entry
    return responses
