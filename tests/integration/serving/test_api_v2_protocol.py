"""The Open Inference Protocol (v2) on the real app, beside /predict: the same cache, routing and
metrics, the binary form over HTTP, and the protocol's errors with the right statuses.

The registry: v1 (production) and, where a test needs two versions, v2 (candidate); both
untrained CNNs with different weights, so their answers differ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from prometheus_client import REGISTRY
from support.app import serving, settings_for, wait_until
from support.models import held_out_digits
from support.registry import publish

INFER = "/v2/models/mnist-cnn/infer"


@pytest.fixture
def two_versions(registry_dir: Path, checkpoints: dict[str, Path]) -> Path:
    publish(registry_dir, checkpoints["v2"], aliases=("candidate",))
    return registry_dir


def infer_body(images: np.ndarray, **fields: object) -> dict:
    return {"inputs": [{"name": "pixels", "shape": [len(images), 784], "datatype": "UINT8",
                        "data": images.reshape(-1).tolist()}], **fields}


def probabilities(answer) -> np.ndarray:
    (output,) = [o for o in answer.json()["outputs"] if o["name"] == "probabilities"]
    return np.float32(output["data"]).reshape(output["shape"])


async def test_v2_and_predict_share_one_cache_entry_per_digit_and_give_the_same_answer(
    registry_dir,
):
    images, _ = held_out_digits(2)
    async with serving(settings_for(registry_dir)) as (_, client):
        first = await client.post("/predict", json={"pixels": images[0].tolist()})
        both = await client.post(INFER, json=infer_body(images))
        second = await client.post("/predict", json={"pixels": images[1].tolist()})
    assert first.headers["x-cache"] == "miss"
    assert both.status_code == 200 and both.headers["x-cache-hits"] == "1"  # the first digit
    assert second.headers["x-cache"] == "hit"  # computed by the v2 request
    rows = probabilities(both)
    assert rows.tobytes() == np.float32([first.json()["probabilities"],
                                         second.json()["probabilities"]]).tobytes()


async def test_a_path_version_pins_and_the_plain_path_follows_the_traffic_policy(two_versions):
    settings = settings_for(two_versions, canary_alias="candidate", canary_percent=100)
    body = infer_body(held_out_digits(1)[0])
    async with serving(settings) as (_, client):
        unpinned = await client.post(INFER, json=body)
        pinned = await client.post("/v2/models/mnist-cnn/versions/v1/infer", json=body)
        by_alias = await client.post("/v2/models/mnist-cnn/versions/production/infer", json=body)
        canary = await client.post("/predict", json={"pixels": [0] * 784})
    assert canary.headers["x-model-version"] == "v2"  # /predict and v2 route the same way
    assert (unpinned.headers["x-model-version"], unpinned.json()["model_version"]) == ("v2", "v2")
    assert pinned.json()["model_version"] == by_alias.json()["model_version"] == "v1"
    assert not np.array_equal(probabilities(unpinned), probabilities(pinned))


async def test_shadow_copies_are_sent_for_unpinned_v2_requests(two_versions):
    settings = settings_for(two_versions, shadow_alias="candidate", shadow_percent=100)
    images, _ = held_out_digits(4)

    def copies() -> float:
        return sum(REGISTRY.get_sample_value("lab2prod_shadow_predictions_total", {
            "model_version": "v1", "shadow_version": "v2", "outcome": outcome}) or 0.0
            for outcome in ("agree", "disagree"))

    before = copies()
    async with serving(settings) as (_, client):
        answer = await client.post(INFER, json=infer_body(images))
        await wait_until(lambda: copies() - before >= 4)
    assert answer.headers["x-model-version"] == "v1"


async def test_answers_are_counted_under_the_version_that_gave_them(two_versions):
    labels = {"route": "/v2/models/{model}/versions/{version}/infer", "method": "POST",
              "status": "200", "model_version": "v2"}
    before = REGISTRY.get_sample_value("lab2prod_http_requests_total", labels) or 0.0
    async with serving(settings_for(two_versions)) as (_, client):
        await client.post("/v2/models/mnist-cnn/versions/candidate/infer",
                          json=infer_body(held_out_digits(1)[0]))
    assert REGISTRY.get_sample_value("lab2prod_http_requests_total", labels) == before + 1


async def test_the_binary_form_over_http(registry_dir):
    images, _ = held_out_digits(3)
    head = orjson.dumps({"inputs": [{"name": "pixels", "shape": [3, 28, 28], "datatype": "UINT8",
                                     "parameters": {"binary_data_size": 3 * 784}}],
                         "parameters": {"binary_data_output": True}})
    async with serving(settings_for(registry_dir)) as (_, client):
        as_json = await client.post(INFER, json=infer_body(images))
        answer = await client.post(INFER, content=head + images.tobytes(), headers={
            "Inference-Header-Content-Length": str(len(head)),
            "Content-Type": "application/octet-stream"})
        short = await client.post(INFER, content=head + images.tobytes()[:-1], headers={
            "Inference-Header-Content-Length": str(len(head))})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/octet-stream"
    json_length = int(answer.headers["inference-header-content-length"])
    outputs = orjson.loads(answer.content[:json_length])["outputs"]
    assert [o["parameters"]["binary_data_size"] for o in outputs] == [3 * 10 * 4, 3 * 8]
    rows = np.frombuffer(answer.content[json_length:json_length + 120], "<f4").reshape(3, 10)
    assert rows.tobytes() == probabilities(as_json).tobytes()
    assert short.status_code == 400 and "2351 bytes after the JSON" in short.json()["error"]


async def test_a_large_answer_is_gzipped_only_for_a_client_that_accepts_it(registry_dir):
    body = infer_body(held_out_digits(64)[0])
    async with serving(settings_for(registry_dir)) as (_, client):
        asked = await client.post(INFER, json=body, headers={"Accept-Encoding": "gzip"})
        plain = await client.post(INFER, json=body, headers={"Accept-Encoding": "identity"})
    assert asked.headers["content-encoding"] == "gzip"
    assert "content-encoding" not in plain.headers
    assert asked.json() == plain.json()


@pytest.mark.parametrize(("case", "path", "body", "headers", "status", "message"), [
    ("an unknown model", "/v2/models/resnet/infer", {}, {}, 404, "unknown model 'resnet'"),
    ("an unknown version", "/v2/models/mnist-cnn/versions/v9/infer", {}, {}, 404, "'v9'"),
    ("a name no version can have", "/v2/models/mnist-cnn/versions/v-1!/infer", {}, {}, 404,
     "'v-1!'"),
    ("not JSON", INFER, b"{", {}, 400, "not valid JSON"),
    ("too many digits", INFER, infer_body(np.zeros((5, 28, 28), np.uint8)), {}, 413,
     "at most 4"),
    ("a body over MAX_UPLOAD_BYTES", INFER, b"x" * 20_000, {}, 413, "MAX_UPLOAD_BYTES"),
    ("a compressed body", INFER, b"\x1f\x8b", {"Content-Encoding": "gzip"}, 415,
     "uncompressed"),
    ("a metadata path that does not exist", "/v2/models/mnist-cnn/config", None, {}, 404,
     "Not Found"),
])
async def test_errors_are_the_protocols_with_the_right_status(
    registry_dir, case, path, body, headers, status, message
):
    settings = settings_for(registry_dir, batch_max_items=4, max_upload_bytes=10_000)
    async with serving(settings) as (_, client):
        if body is None:
            answer = await client.get(path)
        elif isinstance(body, bytes):
            answer = await client.post(path, content=body, headers=headers)
        else:
            answer = await client.post(path, json=body, headers=headers)
    assert answer.status_code == status
    assert list(answer.json()) == ["error"] and message in answer.json()["error"]


async def test_without_a_model_the_server_is_live_but_not_ready(registry_dir):
    async with serving(settings_for(registry_dir, load_model=False)) as (_, client):
        live = await client.get("/v2/health/live")
        ready = await client.get("/v2/health/ready")
        infer = await client.post(INFER, json=infer_body(np.zeros((1, 28, 28), np.uint8)))
        metadata = await client.get("/v2/models/mnist-cnn")
    assert (live.status_code, live.json()) == (200, {"live": True})
    assert ready.status_code == infer.status_code == metadata.status_code == 503
    assert "retry-after" in infer.headers and "LOAD_MODEL=false" in infer.json()["error"]


async def test_metadata_lists_the_versions_and_a_version_is_ready_once_loaded(two_versions):
    async with serving(settings_for(two_versions)) as (_, client):
        metadata = (await client.get("/v2/models/mnist-cnn/versions/candidate")).json()
        before = await client.get("/v2/models/mnist-cnn/versions/v2/ready")
        await client.post("/v2/models/mnist-cnn/versions/v2/infer",
                          json=infer_body(np.zeros((1, 28, 28), np.uint8)))
        after = await client.get("/v2/models/mnist-cnn/versions/candidate/ready")
        default = await client.get("/v2/models/mnist-cnn/ready")
    assert metadata["versions"] == ["v1", "v2"] and metadata["platform"] == "pytorch"
    assert before.status_code == 503 and "loads on its first inference" in before.json()["error"]
    assert (after.status_code, after.json()) == (200, {"name": "mnist-cnn", "ready": True})
    assert default.status_code == 200
