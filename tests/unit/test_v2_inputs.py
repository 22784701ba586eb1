"""v2 protocol requests: JSON or JSON + binary tensors -> uint8 digits and the outputs asked for,
or a 400 (413 past the batch limit) that says what was wrong."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from service.api.inputs import InputError
from service.api.v2_inputs import RequestedOutput, parse_infer_request, split_body

MAX_ITEMS = 8


def digits(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 28, 28)).astype(np.uint8)


def request(data: object = None, *, shape: object = (1, 784), datatype: str = "UINT8",
            **fields: object) -> dict:
    tensor: dict = {"name": "pixels", "shape": list(shape), "datatype": datatype}
    if data is not None:
        tensor["data"] = data
    tensor.update(fields.pop("tensor", {}))
    return {"inputs": [tensor], **fields}


def parse(document: dict, tensor_bytes: bytes | None = None):
    head = orjson.dumps(document)
    if tensor_bytes is None:
        return parse_infer_request(head, None, max_items=MAX_ITEMS)
    return parse_infer_request(head + tensor_bytes, str(len(head)), max_items=MAX_ITEMS)


def refusal(document: dict, tensor_bytes: bytes | None = None, *, status: int = 400) -> str:
    with pytest.raises(InputError) as refused:
        parse(document, tensor_bytes)
    assert refused.value.status_code == status
    return refused.value.message


def test_flat_nested_fp32_and_binary_forms_of_the_same_digits_agree():
    images = digits(3)
    flat = parse(request(images.reshape(3, -1).ravel().tolist(), shape=(3, 784))).digits
    nested = parse(request(images.tolist(), shape=(3, 28, 28))).digits
    rows = parse(request(images.reshape(3, -1).tolist(), shape=(3, 784))).digits
    near = np.where(images == 255, 254.8, images + 0.2)  # each rounds to its level
    fractions = parse(request(near.ravel().tolist(), shape=(3, 784), datatype="FP32")).digits
    as_uint8 = parse(request(shape=(3, 784), tensor={"parameters": {"binary_data_size": 2352}}),
                     images.tobytes()).digits
    as_fp32 = parse(request(shape=(3, 28, 28), datatype="FP32",
                            tensor={"parameters": {"binary_data_size": 9408}}),
                    images.astype("<f4").tobytes()).digits
    for parsed in (flat, nested, rows, fractions, as_uint8, as_fp32):
        assert parsed.dtype == np.uint8 and parsed.shape == (3, 28, 28)
        assert np.array_equal(parsed, images)


def test_fp32_fractions_round_to_the_nearest_level_and_whole_floats_are_uint8_integers():
    values = [0.4, 0.6, 254.5, 255.0] + [0.0] * 780
    parsed = parse(request(values, datatype="FP32")).digits.ravel()
    assert parsed[:4].tolist() == [0, 1, 254, 255]  # round half to even, as /predict does
    assert parse(request([3.0] * 784)).digits.ravel()[0] == 3  # JSON's 3.0 is the integer 3


def test_every_output_is_answered_in_json_unless_the_request_says_binary():
    pixels = [0] * 784
    assert parse(request(pixels)).outputs == (
        RequestedOutput("probabilities", False), RequestedOutput("digit", False))
    everything_binary = parse(request(pixels, parameters={"binary_data_output": True}))
    assert {output.binary for output in everything_binary.outputs} == {True}
    chosen = parse(request(pixels, parameters={"binary_data_output": True}, outputs=[
        {"name": "digit", "parameters": {"binary_data": False}}, {"name": "probabilities"}]))
    assert chosen.outputs == (
        RequestedOutput("digit", False), RequestedOutput("probabilities", True))


def test_the_request_id_is_kept_and_unknown_parameters_are_ignored():
    parsed = parse(request([0] * 784, id="abc", parameters={"priority": 1, "timeout": 5}))
    assert parsed.id == "abc"
    assert parse(request([0] * 784)).id is None


@pytest.mark.parametrize(("case", "document", "message"), [
    ("not an object", [1, 2], "JSON object"),
    ("no inputs", {"outputs": []}, '"inputs" must be a list'),
    ("another input", request([0] * 784) | {"inputs": [{"name": "image"}]}, "one input"),
    ("two inputs", {"inputs": [request([0] * 784)["inputs"][0]] * 2}, "one input"),
    ("INT32", request([0] * 784, datatype="INT32"), "datatype 'INT32'"),
    ("783 values", request([0] * 783), "holds 783 values"),
    ("shape [784]", request([0] * 784, shape=(784,)), "send [N, 784]"),
    ("shape [28, 28]", request([0] * 784, shape=(28, 28)), "send [N, 784]"),
    ("shape [1, 785]", request([0] * 785, shape=(1, 785)), "send [N, 784]"),
    ("no digits", request([], shape=(0, 784)), "N >= 1"),
    ("a shape of strings", request([0] * 784, shape=("1", "784")), "send [N, 784]"),
    ("nested unlike the shape", request([[0] * 28] * 28, shape=(1, 784)), "shaped [28, 28]"),
    ("ragged", request([[0] * 784, [0] * 783], shape=(2, 784)), "must be a list of 1568"),
    ("no data", request(), 'has no "data"'),
    ("UINT8 over 255", request([256] + [0] * 783), "is 256"),
    ("UINT8 fractions", request([0.5] + [0] * 783), "whole numbers"),
    ("FP32 over 255", request([0.0] * 783 + [255.5], datatype="FP32"), "value 783"),
    ("FP32 negative", request([-0.1] + [0.0] * 783, datatype="FP32"), "is -0.1"),
    ("booleans", request([True] * 784), "must be a list of 784 integers"),
    ("strings", request(["0"] * 784), "must be a list of 784 integers"),
    ("an id that is a number", request([0] * 784, id=7), '"id"'),
    ("parameters that are a list", request([0] * 784, parameters=[]), '"parameters"'),
    ("binary_data_output not a flag", request([0] * 784, parameters={"binary_data_output": 1}),
     "true or false"),
    ("an unknown output", request([0] * 784, outputs=[{"name": "logits"}]),
     "unknown output 'logits'; this model's outputs are probabilities, digit"),
    ("an output twice", request([0] * 784, outputs=[{"name": "digit"}] * 2), "twice"),
    ("no outputs in a list", request([0] * 784, outputs=[]), "non-empty list"),
    ("binary_data_size without bytes",
     request(tensor={"parameters": {"binary_data_size": 784}}), "says 784"),
])
def test_a_malformed_json_request_is_refused_saying_what_is_wrong(case, document, message):
    assert message in refusal(document)


def test_nan_and_infinity_in_fp32_binary_data_are_refused():
    for bad in (np.nan, np.inf):
        values = np.zeros(784, "<f4")
        values[5] = bad
        binary = request(datatype="FP32", tensor={"parameters": {"binary_data_size": 3136}})
        message = refusal(binary, values.tobytes())
        assert "value 5" in message


@pytest.mark.parametrize(("case", "size", "tensor_bytes", "message"), [
    ("fewer bytes than announced", 784, bytes(700), "700 bytes after the JSON"),
    ("more bytes than announced", 784, bytes(800), "800 bytes after the JSON"),
    ("a size that is not the shape's", 700, bytes(700), "take 784 bytes"),
    ("FP32 sized as UINT8", 784, bytes(784), "take 3136 bytes"),
    ("a size that is a string", "784", bytes(784), "is '784'"),
    ("a negative size", -1, b"", "is -1"),
])
def test_binary_data_whose_sizes_disagree_is_refused(case, size, tensor_bytes, message):
    datatype = "FP32" if "FP32" in case else "UINT8"
    document = request(datatype=datatype, tensor={"parameters": {"binary_data_size": size}})
    assert message in refusal(document, tensor_bytes)


def test_binary_data_needs_the_input_to_say_so_and_not_to_send_data_too():
    assert "no \"binary_data_size\"" in refusal(request([0] * 784), bytes(784))
    both = request([0] * 784, tensor={"parameters": {"binary_data_size": 784}})
    assert "both" in refusal(both, bytes(784))


@pytest.mark.parametrize("header", ["0", "-5", "abc", "1e3", "99999", ""])
def test_an_inference_header_length_that_is_not_the_jsons_is_refused(header):
    body = orjson.dumps(request([0] * 784))
    with pytest.raises(InputError) as refused:
        parse_infer_request(body, header, max_items=MAX_ITEMS)
    assert refused.value.status_code == 400
    assert "Inference-Header-Content-Length" in refused.value.message


def test_the_header_length_splits_json_from_tensor_bytes():
    assert split_body(b'{"a":1}xyz', "7") == (b'{"a":1}', b"xyz")
    assert split_body(b'{"a":1}', None) == (b'{"a":1}', b"")
    assert "not valid JSON" in refusal_of(b'{"a":1}xyz', None)
    assert "body is empty" in refusal_of(b"  ", None)


def refusal_of(body: bytes, header: str | None) -> str:
    with pytest.raises(InputError) as refused:
        parse_infer_request(body, header, max_items=MAX_ITEMS)
    return refused.value.message


def test_more_digits_than_the_limit_are_refused_with_413():
    message = refusal(request([0] * 784 * 9, shape=(9, 784)), status=413)
    assert "at most 8" in message and "BATCH_MAX_ITEMS" in message
    assert len(parse(request([0] * 784 * 8, shape=(8, 784))).digits) == 8
