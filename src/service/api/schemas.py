"""Request and response shapes, for the OpenAPI docs and for clients.

The hot routes do not validate bodies through these models (784 floats through pydantic costs
more than the forward pass); ``api.inputs`` parses them with orjson and numpy to the same rules.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


# Sent to POST /predict as JSON: one 28x28 digit, MNIST convention (light ink on dark).
class PixelsIn(BaseModel):
    pixels: list[float] | list[list[float]] = Field(
        description="784 numbers, or 28 rows of 28, each in 0..255 (light ink on dark).",
        examples=[[0] * 784],
    )


# Sent to POST /predict/batch.
class BatchIn(BaseModel):
    items: list[PixelsIn] = Field(description="Digits to classify, answered in the same order.")


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
        description="'ready', 'degraded' (serving, a dependency is down) or 'not ready'."
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
    card: dict[str, Any] | None = None


PREDICT_REQUEST_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PixelsIn.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "An image of one digit: PNG, JPEG, WebP, BMP or GIF, "
                            "any size, dark on light or light on dark.",
                        }
                    },
                }
            },
        },
    }
}
BATCH_REQUEST_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": BatchIn.model_json_schema()}},
    }
}
ERRORS_DOC: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "Empty or malformed body."},
    413: {"model": ErrorOut, "description": "Body, image or batch over its limit."},
    415: {"model": ErrorOut, "description": "Unsupported content or image type."},
    422: {"model": ErrorOut, "description": "Not one valid digit (the message says why)."},
    500: {"model": ErrorOut, "description": "The model failed; quote the request id."},
    503: {"model": ErrorOut, "description": "Busy or no model; see Retry-After."},
}
