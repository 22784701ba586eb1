"""An Open Inference Protocol (KServe v2) inference request -> validated digits and the outputs
asked for. What the v2 routes read from clients, as ``inputs`` is for our own routes.

The request is a JSON object, optionally followed by the inputs' raw bytes (the binary tensor
data extension: the ``Inference-Header-Content-Length`` header gives the JSON's length, and a
binary input says its size in its ``binary_data_size`` parameter). This model has one input,
``pixels``: UINT8 or FP32 values 0..255 in MNIST orientation (light ink on dark), shape [N, 784]
or [N, 28, 28], flat or nested as the shape; FP32 fractions are rounded to the nearest level,
as /predict does. Its outputs are ``probabilities`` (FP32 [N, C]) and ``digit`` (INT64 [N]).
Every refusal is an ``InputError``: 400, or 413 past BATCH_MAX_ITEMS rows.

The protocol: https://github.com/kserve/open-inference-protocol (inference_rest.md); the
extension: Triton's docs/protocol/extension_binary_data.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import orjson

from service.api.inputs import InputError
from service.ml.preprocess import IMAGE_PIXELS, IMAGE_SIDE

INPUT = "pixels"
PROBABILITIES, DIGIT = "probabilities", "digit"
OUTPUTS = (PROBABILITIES, DIGIT)  # in the order answered when a request names none
OUTPUT_DATATYPES = {PROBABILITIES: "FP32", DIGIT: "INT64"}
# The input's datatypes and their binary layout (little-endian, as the extension specifies).
INPUT_DATATYPES = {"UINT8": np.dtype("u1"), "FP32": np.dtype("<f4")}
ROW_SHAPES = ((IMAGE_PIXELS,), (IMAGE_SIDE, IMAGE_SIDE))  # one digit: what follows N in a shape
HEADER_LENGTH = "inference-header-content-length"
BAD = 400


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool  # answered as bytes after the JSON (binary_data), else in the JSON


@dataclass(frozen=True, slots=True)
class InferRequest:
    digits: np.ndarray  # uint8 [N, 28, 28]
    outputs: tuple[RequestedOutput, ...]
    id: str | None


def parse_infer_request(
    body: bytes, header_length: str | None, *, max_items: int
) -> InferRequest:
    """A v2 inference request's body (and its Inference-Header-Content-Length, if sent)."""
    head, tensor_bytes = split_body(body, header_length)
    document = _load(head)
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InputError(f'"id" is {request_id!r}; it must be a string', BAD)
    parameters = _parameters(document, "the request")
    binary_output = bool(_flag(parameters, "binary_data_output", "the request"))
    tensor = _the_input(document.get("inputs"))
    digits = digits_from_tensor(tensor, tensor_bytes, max_items=max_items,
                                may_hold_bools=b"true" in head or b"false" in head)
    return InferRequest(digits, requested_outputs(document.get("outputs"), binary_output),
                        request_id)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(the JSON, the tensors' bytes after it): all JSON unless the header says otherwise."""
    if header_length is None:
        return body, b""
    length = header_length.strip()
    if not length.isdigit() or not 0 < int(length) <= len(body):
        raise InputError(
            f"Inference-Header-Content-Length is {header_length[:40]!r}; it must be the length "
            f"in bytes of the JSON that starts the body (1..{len(body)} for this body)", BAD,
        )
    return body[: int(length)], body[int(length) :]


def digits_from_tensor(
    tensor: dict[str, Any], tensor_bytes: bytes, *, max_items: int, may_hold_bools: bool = True
) -> np.ndarray:
    """The ``pixels`` input (its JSON object, and the binary part of the body) -> uint8
    [N, 28, 28]."""
    datatype = tensor.get("datatype")
    if datatype not in INPUT_DATATYPES:
        raise InputError(
            f"input {INPUT!r} has datatype {datatype!r}; send UINT8 (or FP32) values 0..255", BAD
        )
    shape = _shape(tensor.get("shape"), max_items)
    rows = shape[0]
    parameters = _parameters(tensor, f"input {INPUT!r}")
    size = parameters.get("binary_data_size")
    if size is None:
        if tensor_bytes:
            raise InputError(
                f"the body has {len(tensor_bytes)} bytes after the JSON but input {INPUT!r} has "
                'no "binary_data_size" parameter saying they are its data', BAD,
            )
        if "data" not in tensor:
            raise InputError(
                f'input {INPUT!r} has no "data"; send its values in "data", or as binary data '
                'after the JSON with a "binary_data_size" parameter', BAD,
            )
        values = _values_from_json(tensor["data"], datatype, shape, may_hold_bools)
    else:
        values = _values_from_bytes(tensor, tensor_bytes, datatype, rows, size)
    return _pixels(values, datatype).reshape(rows, IMAGE_SIDE, IMAGE_SIDE)


def requested_outputs(requested: object, binary_default: bool) -> tuple[RequestedOutput, ...]:
    """The request's ``outputs`` (every output when absent), each answered in JSON or binary."""
    if requested is None:
        return tuple(RequestedOutput(name, binary_default) for name in OUTPUTS)
    if not isinstance(requested, list) or not requested:
        raise InputError(
            f'"outputs" must be a non-empty list of {{"name": ...}} objects naming some of '
            f"{', '.join(OUTPUTS)} (or be left out for all of them)", BAD,
        )
    outputs: list[RequestedOutput] = []
    for item in requested:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in OUTPUTS:
            raise InputError(
                f"unknown output {name!r}; this model's outputs are {', '.join(OUTPUTS)}", BAD
            )
        if any(output.name == name for output in outputs):
            raise InputError(f"output {name!r} is requested twice", BAD)
        parameters = _parameters(item, f"output {name!r}")
        binary = _flag(parameters, "binary_data", f"output {name!r}")
        outputs.append(RequestedOutput(name, binary_default if binary is None else binary))
    return tuple(outputs)


# --- the parts ----------------------------------------------------------------------------------


def _load(head: bytes) -> dict[str, Any]:
    if not head.strip():
        raise InputError(
            'the request body is empty; send a v2 inference request {"inputs": [{"name": '
            '"pixels", "shape": [1, 784], "datatype": "UINT8", "data": [...]}]}', BAD,
        )
    try:
        document = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise InputError(
            f"the inference request is not valid JSON ({exc}); with binary data after it, send "
            "its length in Inference-Header-Content-Length", BAD,
        ) from None
    if not isinstance(document, dict):
        raise InputError('the inference request must be a JSON object {"inputs": [...]}', BAD)
    return document


def _parameters(owner: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = owner.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InputError(f'"parameters" of {what} must be a JSON object', BAD)
    return parameters  # others (Triton's priority, timeout, sequence_id ...) are ignored


def _flag(parameters: dict[str, Any], name: str, what: str) -> bool | None:
    value = parameters.get(name)
    if value is not None and not isinstance(value, bool):
        raise InputError(f"parameter {name!r} of {what} must be true or false", BAD)
    return value


def _the_input(inputs: object) -> dict[str, Any]:
    if not isinstance(inputs, list) or not inputs:
        raise InputError(
            f'"inputs" must be a list holding the one input of this model, {INPUT!r}', BAD
        )
    names = [item.get("name") if isinstance(item, dict) else item for item in inputs]
    if names != [INPUT]:
        raise InputError(
            f"this model takes one input, {INPUT!r}; the request has {names!r}"[:300], BAD
        )
    return inputs[0]  # type: ignore[no-any-return]


def _shape(shape: object, max_items: int) -> list[int]:
    """A shape [N, 784] or [N, 28, 28] (whole numbers, N >= 1), checked against the limit."""
    sizes = shape if isinstance(shape, list) else []
    whole = all(
        isinstance(size, int | float) and not isinstance(size, bool) and float(size).is_integer()
        for size in sizes
    )
    if not sizes or not whole or tuple(sizes[1:]) not in ROW_SHAPES or sizes[0] < 1:
        raise InputError(
            f"input {INPUT!r} has shape {str(shape)[:80]}; send [N, 784] or [N, 28, 28] for N "
            "digits (N >= 1), e.g. [1, 784] for one", BAD,
        )
    if sizes[0] > max_items:
        raise InputError(
            f"input {INPUT!r} holds {sizes[0]:g} digits; at most {max_items} per request "
            "(split the batch, or raise BATCH_MAX_ITEMS)", 413,
        )
    return [int(size) for size in sizes]


def _values_from_json(
    data: object, datatype: str, shape: list[int], may_hold_bools: bool
) -> np.ndarray:
    """``data``, flat or nested as ``shape``, as a flat array of int or float values."""
    count = math.prod(shape)
    if isinstance(data, list) and len(data) == count and datatype == "UINT8" \
            and not may_hold_bools:
        # The usual body, flat ints in 0..255: one C loop that also checks type and range
        # (bytearray's, a third of array("B")'s time: docs/benchmarks/overhead.md).
        try:
            return np.frombuffer(bytearray(data), dtype=np.uint8)
        except (TypeError, ValueError):
            pass  # the checks below say what is wrong
    try:
        array = np.array(data) if isinstance(data, list) else None
    except (ValueError, TypeError, OverflowError):
        array = None  # ragged nesting, or numbers numpy cannot hold
    if array is None or array.dtype.kind not in "iuf" \
            or (may_hold_bools and _holds_bool(data, array.ndim)):
        number = "integers" if datatype == "UINT8" else "numbers"
        raise InputError(
            f'"data" of input {INPUT!r} must be a list of {count} {number} in 0..255 ({datatype}),'
            " flat or nested as its shape", BAD,
        )
    if (array.ndim > 1 and list(array.shape) != shape) or array.size != count:
        raise InputError(
            f'"data" of input {INPUT!r} holds {array.size} values shaped {list(array.shape)}; '
            f"its shape {shape} needs {count}, flat or nested as the shape", BAD,
        )
    return array.reshape(-1)


def _values_from_bytes(
    tensor: dict[str, Any], tensor_bytes: bytes, datatype: str, rows: int, size: object
) -> np.ndarray:
    dtype = INPUT_DATATYPES[datatype]
    expected = rows * IMAGE_PIXELS * dtype.itemsize
    if "data" in tensor:
        raise InputError(
            f'input {INPUT!r} has both "data" and "binary_data_size"; send one of them', BAD
        )
    if isinstance(size, bool) or not isinstance(size, int | float) or size != expected:
        raise InputError(
            f"binary_data_size of input {INPUT!r} is {size!r}; {rows} digits of {datatype} take "
            f"{expected} bytes", BAD,
        )
    if len(tensor_bytes) != size:
        raise InputError(
            f"the body has {len(tensor_bytes)} bytes after the JSON; input {INPUT!r} says "
            f"{size} (binary_data_size), and Inference-Header-Content-Length must be the "
            "JSON's length", BAD,
        )
    return np.frombuffer(tensor_bytes, dtype=dtype)


def _pixels(values: np.ndarray, datatype: str) -> np.ndarray:
    """Flat values -> uint8, refusing what is not a pixel level: 0..255, finite, and for UINT8
    whole (3.0 is the integer 3, as JSON Schema has it)."""
    if values.dtype == np.uint8:
        return values
    bad = (values < 0) | (values > 255)
    if values.dtype.kind == "f":
        bad |= ~np.isfinite(values)
        if datatype == "UINT8":
            bad |= values != np.floor(values)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        rule = "whole numbers in 0..255" if datatype == "UINT8" else "in 0..255"
        raise InputError(
            f"value {index} of input {INPUT!r} is {values[index].item()!r}; {datatype} pixels "
            f"must be {rule} (light ink on dark, as in MNIST)", BAD,
        )
    if values.dtype.kind == "f":
        values = np.rint(values)
    return values.astype(np.uint8)


def _holds_bool(data: Any, ndim: int) -> bool:
    """JSON true/false would pass numpy as 1/0: refuse them, as /predict does."""
    values = data
    for _ in range(max(ndim - 1, 0)):
        values = chain.from_iterable(values)
    return bool in set(map(type, values))
