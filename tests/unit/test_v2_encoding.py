"""v2 protocol answers from probability rows: JSON, or JSON then binary outputs, and the cached
/predict answers read back into the very rows they were made from."""

from __future__ import annotations

import numpy as np
import orjson

from service.api.encoding import prediction_json, probabilities_of, v2_error, v2_response
from service.api.v2_inputs import RequestedOutput

BOTH_JSON = (RequestedOutput("probabilities", False), RequestedOutput("digit", False))


def rows(count: int, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(0, 4, (count, 10))
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def test_a_cached_prediction_reads_back_as_the_same_float32_row_bit_for_bit():
    for row in rows(2000):
        assert probabilities_of(prediction_json(row, "v1")).tobytes() == row.tobytes()


def test_json_outputs_carry_shape_datatype_and_row_major_data_in_the_order_asked():
    probabilities = rows(3)
    body, json_length = v2_response(probabilities, BOTH_JSON[::-1], model_name="mnist-cnn",
                                    version="v4", request_id="r1")
    assert json_length is None
    answer = orjson.loads(body)
    assert answer["model_name"] == "mnist-cnn"
    assert (answer["model_version"], answer["id"]) == ("v4", "r1")
    digit, probs = answer["outputs"]
    assert digit == {"name": "digit", "datatype": "INT64", "shape": [3],
                     "data": probabilities.argmax(axis=1).tolist()}
    assert (probs["name"], probs["datatype"], probs["shape"]) == ("probabilities", "FP32", [3, 10])
    assert np.array_equal(np.float32(probs["data"]).reshape(3, 10), probabilities)


def test_binary_outputs_follow_the_json_in_order_and_the_json_length_is_returned():
    probabilities = rows(4)
    outputs = (RequestedOutput("digit", True), RequestedOutput("probabilities", True))
    body, json_length = v2_response(probabilities, outputs, model_name="m", version="v1",
                                    request_id=None)
    answer = orjson.loads(body[:json_length])
    assert "id" not in answer
    sizes = [output["parameters"]["binary_data_size"] for output in answer["outputs"]]
    assert sizes == [4 * 8, 4 * 10 * 4] and len(body) == json_length + sum(sizes)
    assert all("data" not in output for output in answer["outputs"])
    tail = body[json_length:]
    assert np.array_equal(np.frombuffer(tail[:32], "<i8"), probabilities.argmax(axis=1))
    assert np.frombuffer(tail[32:], "<f4").tobytes() == probabilities.tobytes()


def test_json_and_binary_outputs_mix_and_only_binary_ones_take_bytes():
    probabilities = rows(2)
    outputs = (RequestedOutput("probabilities", False), RequestedOutput("digit", True))
    body, json_length = v2_response(probabilities, outputs, model_name="m", version="v1",
                                    request_id=None)
    json_part = orjson.loads(body[:json_length])
    assert json_part["outputs"][0]["data"] and "parameters" not in json_part["outputs"][0]
    assert np.array_equal(np.frombuffer(body[json_length:], "<i8"), probabilities.argmax(axis=1))


def test_the_error_body_is_the_protocols():
    assert orjson.loads(v2_error("no such model")) == {"error": "no such model"}
