"""The Open Inference Protocol through a client nobody here wrote: NVIDIA's tritonclient.http
against a real `lab2prod serve`. Health, metadata, inference in JSON and binary form, a pinned
version, and the errors the client expects, all with the model's own answers as reference.

The registry: v1 (the test model, production) and v2 (the same recipe, another seed: it answers
some digits differently, so a pin that is ignored shows)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from support.models import direct_predictions, held_out_digits, trained_checkpoint
from support.registry import publish
from support.servers import ServeProcess
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.slow
MODEL = "mnist-cnn"


@pytest.fixture(scope="module")
def checkpoints(model_cache: Path) -> dict[str, Path]:
    return {version: trained_checkpoint(model_cache, seed=seed)
            for version, seed in (("v1", 0), ("v2", 1))}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, checkpoints: dict[str, Path]
           ) -> Iterator[ServeProcess]:
    folder = tmp_path_factory.mktemp("v2-tritonclient")
    registry = folder / "models"
    publish(registry, checkpoints["v1"])
    publish(registry, checkpoints["v2"], aliases=())
    with ServeProcess(registry, folder) as running:
        yield running


@pytest.fixture
def client(server: ServeProcess) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


def pixels_input(images: np.ndarray, *, binary: bool, datatype: str = "UINT8",
                 flat: bool = True) -> triton.InferInput:
    array = images.reshape(len(images), -1) if flat else images
    array = array.astype(np.float32 if datatype == "FP32" else np.uint8)
    tensor = triton.InferInput("pixels", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def outputs(*, binary: bool) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(name, binary_data=binary)
            for name in ("probabilities", "digit")]


def test_the_server_and_the_model_are_live_ready_and_describe_themselves(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL)
    server = client.get_server_metadata()
    assert server["name"] == "lab2prod" and "binary_tensor_data" in server["extensions"]
    model = client.get_model_metadata(MODEL)
    assert model["name"] == MODEL and model["versions"] == ["v1", "v2"]
    assert model["inputs"] == [{"name": "pixels", "datatype": "UINT8", "shape": [-1, 784]}]
    assert model["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        {"name": "digit", "datatype": "INT64", "shape": [-1]},
    ]
    assert client.get_model_metadata(MODEL, "v2")["versions"] == ["v1", "v2"]


def test_a_batch_of_64_digits_in_json_gets_the_models_own_answers(client, checkpoints):
    images, _ = held_out_digits(64)
    result = client.infer(MODEL, [pixels_input(images, binary=False)],
                          outputs=outputs(binary=False), request_id="batch-64")
    probabilities, digits = result.as_numpy("probabilities"), result.as_numpy("digit")
    assert probabilities.shape == (64, 10) and probabilities.dtype == np.float32
    assert digits.dtype == np.int64
    assert (digits == direct_predictions(checkpoints["v1"], images)).all()
    assert (probabilities.argmax(axis=1) == digits).all()
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == (
        MODEL, "v1", "batch-64")


def test_binary_inputs_and_outputs_carry_the_same_answers_as_json(client, checkpoints):
    images, _ = held_out_digits(64)
    as_json = client.infer(MODEL, [pixels_input(images, binary=False)],
                           outputs=outputs(binary=False))
    for tensor in (pixels_input(images, binary=True, flat=False),
                   pixels_input(images, binary=True, datatype="FP32")):
        as_binary = client.infer(MODEL, [tensor], outputs=outputs(binary=True))
        for name in ("probabilities", "digit"):
            assert (as_binary.as_numpy(name) == as_json.as_numpy(name)).all(), name
            assert as_binary.get_output(name)["parameters"]["binary_data_size"] > 0
    compressed = client.infer(MODEL, [pixels_input(images, binary=True)],
                              outputs=outputs(binary=True), response_compression_algorithm="gzip")
    assert (compressed.as_numpy("probabilities") == as_json.as_numpy("probabilities")).all()
    # No outputs named: tritonclient asks for every output in binary (binary_data_output).
    default = client.infer(MODEL, [pixels_input(images, binary=True)])
    assert (default.as_numpy("digit") == direct_predictions(checkpoints["v1"], images)).all()


def test_one_output_asked_for_is_the_only_one_answered(client):
    images, _ = held_out_digits(3)
    result = client.infer(MODEL, [pixels_input(images, binary=True)],
                          outputs=[triton.InferRequestedOutput("digit", binary_data=False)])
    assert [output["name"] for output in result.get_response()["outputs"]] == ["digit"]
    assert result.as_numpy("probabilities") is None


def test_a_version_in_the_path_pins_the_answering_version(client, checkpoints):
    images, _ = held_out_digits(1000)
    v1, v2 = (direct_predictions(checkpoints[v], images) for v in ("v1", "v2"))
    disputed = images[np.flatnonzero(v1 != v2)[:64]]
    assert len(disputed) >= 8, "the two seeds should disagree on some digits"
    pinned = client.infer(MODEL, [pixels_input(disputed, binary=True)], model_version="v2",
                          outputs=outputs(binary=True))
    assert pinned.get_response()["model_version"] == "v2"
    assert (pinned.as_numpy("digit") == direct_predictions(checkpoints["v2"], disputed)).all()
    assert client.is_model_ready(MODEL, "v2")  # loaded by its first request
    unpinned = client.infer(MODEL, [pixels_input(disputed, binary=True)])
    assert (unpinned.as_numpy("digit") == direct_predictions(checkpoints["v1"], disputed)).all()


def test_answers_are_counted_under_the_version_that_gave_them(client, server):
    images, _ = held_out_digits(2)
    client.infer(MODEL, [pixels_input(images, binary=True)], model_version="v2")
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert ('lab2prod_http_requests_total{method="POST",model_version="v2",'
            'route="/v2/models/{model}/versions/{version}/infer",status="200"}') in metrics


@pytest.mark.parametrize(("call", "status"), [
    ("unknown model", "404"),
    ("unknown version", "404"),
    ("783 values a digit", "400"),
    ("INT32 pixels", "400"),
    ("pixels out of range", "400"),
])
def test_the_errors_a_client_expects(client, call: str, status: str):
    images, _ = held_out_digits(1)
    flat = images.reshape(1, -1)
    requests = {
        "unknown model": lambda: client.infer("resnet50", [pixels_input(images, binary=True)]),
        "unknown version": lambda: client.infer(MODEL, [pixels_input(images, binary=True)],
                                                model_version="v9"),
        "783 values a digit": lambda: client.infer(MODEL, [_input(flat[:, :783], "UINT8")]),
        "INT32 pixels": lambda: client.infer(MODEL, [_input(flat.astype(np.int32), "INT32")]),
        "pixels out of range": lambda: client.infer(
            MODEL, [_input(flat.astype(np.float32) + 300, "FP32")]),
    }
    with pytest.raises(InferenceServerException) as refused:
        requests[call]()
    assert refused.value.status() == status
    assert refused.value.message()  # the protocol's {"error": ...}, read by the client


def test_unknown_models_and_versions_are_not_ready_and_have_no_metadata(client):
    assert not client.is_model_ready("resnet50")
    assert not client.is_model_ready(MODEL, "v9")
    for call in (lambda: client.get_model_metadata("resnet50"),
                 lambda: client.get_model_metadata(MODEL, "v9")):
        with pytest.raises(InferenceServerException) as refused:
            call()
        assert refused.value.status() == "404"


def _input(array: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput("pixels", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=True)
    return tensor
