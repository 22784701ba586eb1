"""The Open Inference Protocol's (KServe v2) request and response shapes, for the OpenAPI
document: what schemas.py is for our own routes.

The infer routes parse bodies themselves (``api.v2_inputs``); the request models state the same
rules in JSON Schema. What a schema cannot say is in the descriptions: that ``data`` holds as
many values as ``shape`` says, that an output is asked for once, and the binary form (the JSON,
then raw tensor bytes) as a whole. ``api.openapi`` puts the request models in
``components/schemas`` and fills in this instance's MODEL_NAME and BATCH_MAX_ITEMS.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, RootModel

from service.api.schemas import RETRY_AFTER, X_MODEL_VERSION, header, ref
from service.api.v2_inputs import HEADER_LENGTH, INPUT

OutputName = Literal["probabilities", "digit"]
Uint8 = Annotated[int, Field(ge=0, le=255)]
Fp32 = Annotated[float, Field(ge=0, le=255)]
BatchSize = Annotated[int, Field(ge=1, description="N, the number of digits.")]


# The shape of the input: N digits of 784 values, or of 28 rows of 28. The largest N is a
# setting (BATCH_MAX_ITEMS): api.openapi states this instance's.
FlatShape = tuple[BatchSize, Literal[784]]
RowsShape = tuple[BatchSize, Literal[28], Literal[28]]


class V2ShapeIn(RootModel[FlatShape | RowsShape]):
    pass


# An input's parameters in the JSON form. binary_data_size belongs to the binary form (its
# input's data follows the JSON); others are ignored.
class V2TensorParametersIn(BaseModel):
    binary_data_size: None = Field(None, description="Only in the binary form.")


DATA_RULES = (
    "in 0..255, light ink on dark as in MNIST, row major: as many as the shape says (N x 784), "
    "flat or nested as the shape."
)


# What the input 'pixels' has in the JSON form, whatever its datatype.
class _PixelsIn(BaseModel):
    name: Literal["pixels"]
    shape: V2ShapeIn
    parameters: V2TensorParametersIn | None = None


# The input 'pixels' as UINT8 values in the JSON.
class V2Uint8PixelsIn(_PixelsIn):
    datatype: Literal["UINT8"]
    data: list[Uint8 | list[Uint8 | list[Uint8]]] = Field(description=f"Integers {DATA_RULES}")


# The input 'pixels' as FP32 values in the JSON (fractions are rounded to the nearest level).
class V2Fp32PixelsIn(_PixelsIn):
    datatype: Literal["FP32"]
    data: list[Fp32 | list[Fp32 | list[Fp32]]] = Field(description=f"Numbers {DATA_RULES}")


# The request's parameters (binary tensor data extension); others are ignored.
class V2RequestParametersIn(BaseModel):
    binary_data_output: bool | None = Field(
        None, description="Every output as binary data after the JSON, unless it says otherwise."
    )


# An output's parameters (binary tensor data extension); others are ignored.
class V2OutputParametersIn(BaseModel):
    binary_data: bool | None = Field(
        None, description="This output as binary data after the JSON (little-endian)."
    )


# An output asked for: each at most once.
class V2RequestedOutputIn(BaseModel):
    name: OutputName
    parameters: V2OutputParametersIn | None = None


# Sent to POST /v2/models/{model}/infer as JSON: the protocol's inference request.
class V2InferenceRequestIn(BaseModel):
    id: str | None = Field(None, description="Returned as the response's id.")
    parameters: V2RequestParametersIn | None = None
    inputs: list[Annotated[V2Uint8PixelsIn | V2Fp32PixelsIn, Field(discriminator="datatype")]] = (
        Field(min_length=1, max_length=1, description=f"The one input, {INPUT!r}.")
    )
    outputs: list[V2RequestedOutputIn] | None = Field(
        None, min_length=1, max_length=2,
        description="The outputs to answer, in this order (each once); all when left out.",
    )


# --- answers ------------------------------------------------------------------------------------


class V2BinaryParametersOut(BaseModel):
    binary_data_size: int = Field(description="Bytes of this output after the JSON.")


# One output of an inference response.
class V2OutputTensorOut(BaseModel):
    name: OutputName
    datatype: Literal["FP32", "INT64"]
    shape: list[int] = Field(description="[N, classes] for probabilities, [N] for digit.")
    data: list[float] | None = Field(None, description="Row major; absent when binary.")
    parameters: V2BinaryParametersOut | None = Field(None, description="Present when binary.")


# The answer of POST .../infer (as JSON, or its JSON part).
class V2InferenceResponseOut(BaseModel):
    model_name: str
    model_version: str = Field(description="The registry version that answered, e.g. v3.")
    id: str | None = Field(None, description="The request's id, when it had one.")
    outputs: list[V2OutputTensorOut]


class V2TensorMetadataOut(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for the batch dimension.")


# GET /v2/models/{model}: the model's versions, runtime family, inputs and outputs.
class V2ModelMetadataOut(BaseModel):
    name: str
    versions: list[str] = Field(description="Versions a request may name in its path.")
    platform: str = Field(description="The runtime family serving it here.")
    inputs: list[V2TensorMetadataOut]
    outputs: list[V2TensorMetadataOut]


# GET /v2: the server and the protocol extensions it supports.
class V2ServerMetadataOut(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2LiveOut(BaseModel):
    live: bool


class V2ReadyOut(BaseModel):
    ready: bool


class V2ModelReadyOut(BaseModel):
    name: str
    ready: bool


# Every 4xx/5xx body under /v2, as the protocol has it.
class V2ErrorOut(BaseModel):
    error: str = Field(description="What was wrong, and how to send it instead.")


# --- the OpenAPI entries routes declare ---------------------------------------------------------

V2_ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "A malformed inference request: the message says what (JSON, shape, datatype, a value "
    "out of 0..255, sizes of binary data, an unknown output).",
    404: "No such model (this server serves MODEL_NAME) or version.",
    413: "Body over MAX_UPLOAD_BYTES, or more digits than BATCH_MAX_ITEMS.",
    415: "A compressed body (Content-Encoding): send it uncompressed.",
    500: "The model failed on this input: the log has the details under the request id.",
    503: "Not ready (no model loaded, or the version cannot be loaded now), busy or timed out: "
    "retry after Retry-After seconds.",
}


def v2_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The refusals a v2 route answers, each with the protocol's error body."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": V2ErrorOut, "description": V2_ERROR_DESCRIPTIONS[status]}
        if status == 503:
            entry["headers"] = {"Retry-After": RETRY_AFTER}
        responses[status] = entry
    return responses


MODEL_PARAMETER = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"},
                   "description": "The model's name (MODEL_NAME)."}
VERSION_PARAMETER = {
    "name": "version", "in": "path", "required": True, "schema": {"type": "string"},
    "description": "A version (v3) or an alias (production): the version that answers.",
}
BINARY_BODY = (
    "The binary tensor data extension: the JSON inference request, its input carrying "
    "`parameters.binary_data_size` instead of `data`, then that many bytes of the tensor "
    "(UINT8, or FP32 little-endian, row major); the header Inference-Header-Content-Length "
    "gives the JSON's length."
)


def v2_infer_doc(*, versioned: bool) -> dict[str, Any]:
    """The request side of an infer operation: its path parameters, header and bodies."""
    return {
        "parameters": [
            MODEL_PARAMETER, *([VERSION_PARAMETER] if versioned else []),
            {"name": "Inference-Header-Content-Length", "in": "header", "required": False,
             "schema": {"type": "integer", "minimum": 1},
             "description": "With binary data after the JSON: the JSON's length in bytes."},
        ],
        "requestBody": {
            "required": True,
            "description": "The protocol's inference request: JSON, or JSON followed by binary "
            "tensor data. The Content-Type is not needed: the header above tells them apart.",
            "content": {
                "application/json": {"schema": ref(V2InferenceRequestIn)},
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary", "description": BINARY_BODY}
                },
            },
        },
    }


INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The outputs asked for: JSON, or (when any output is binary) the JSON "
        "followed by the binary outputs' bytes in the order listed.",
        "content": {
            "application/json": {"schema": ref(V2InferenceResponseOut)},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
        "headers": {
            "X-Model-Version": X_MODEL_VERSION,
            "X-Cache-Hits": header("How many digits came from the prediction cache.",
                                   {"type": "integer", "minimum": 0}),
            HEADER_LENGTH.title(): {
                "description": "The JSON's length, when binary outputs follow it.",
                "required": False, "schema": {"type": "integer", "minimum": 1},
            },
        },
    },
    **v2_errors(400, 404, 413, 415, 500, 503),
}
# The models the entries above refer to with $ref (api.openapi puts them in components).
V2_MODELS: tuple[type[BaseModel], ...] = (V2InferenceRequestIn, V2InferenceResponseOut)
