"""Probabilities -> the answers clients read: the JSON of one prediction, rendered once, and the
Open Inference Protocol (v2) response.

The model layer (``inference.pool``) returns class probabilities; this is where they become the
wire format. The same prediction bytes are cached, sent by /predict, joined by /predict/batch and
prefixed with an id by /ws/predict; the v2 routes read the cached ones back
(``probabilities_of``), so both protocols share one cache entry per digit.
"""

from __future__ import annotations

import numpy as np
import orjson

from service.api.v2_inputs import OUTPUT_DATATYPES, PROBABILITIES, RequestedOutput

# Binary outputs are little-endian, row major (the binary tensor data extension).
BINARY_DTYPES = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8")}


def prediction_json(probabilities: np.ndarray, version: str) -> bytes:
    """``{"digit", "confidence", "probabilities", "model_version"}`` for one [C] row."""
    digit = int(probabilities.argmax())
    return orjson.dumps(
        {
            "digit": digit,
            "confidence": probabilities[digit],
            "probabilities": probabilities,
            "model_version": version,
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def digit_of(prediction: bytes) -> int:
    """The predicted class of an encoded prediction (for comparing a cached answer)."""
    return int(orjson.loads(prediction)["digit"])


def probabilities_of(prediction: bytes) -> np.ndarray:
    """The float32 [C] row of an encoded prediction. orjson writes each float32 as the shortest
    decimal that reads back to it, so this is the row that was encoded, bit for bit."""
    return np.asarray(orjson.loads(prediction)["probabilities"], dtype=np.float32)


def v2_response(
    rows: np.ndarray, outputs: tuple[RequestedOutput, ...], *, model_name: str, version: str,
    request_id: str | None,
) -> tuple[bytes, int | None]:
    """The v2 inference response for probability rows [N, C]: (body, None) when every output
    is in the JSON; else (the JSON followed by the binary outputs' bytes in the order listed,
    the JSON's length for Inference-Header-Content-Length)."""
    tensors: list[dict[str, object]] = []
    blobs: list[bytes] = []
    for output in outputs:
        datatype = OUTPUT_DATATYPES[output.name]
        array = rows if output.name == PROBABILITIES else rows.argmax(axis=1)
        tensor: dict[str, object] = {
            "name": output.name, "datatype": datatype, "shape": list(array.shape)}
        if output.binary:
            blob = array.astype(BINARY_DTYPES[datatype], copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = np.ascontiguousarray(array).reshape(-1)
        tensors.append(tensor)
    head: dict[str, object] = {"model_name": model_name, "model_version": version}
    if request_id is not None:
        head["id"] = request_id
    head["outputs"] = tensors
    encoded = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return encoded, None
    return b"".join([encoded, *blobs]), len(encoded)


def v2_error(message: str) -> bytes:
    """The protocol's error body, ``{"error": ...}``."""
    return orjson.dumps({"error": message})
