"""GET /health, /ready, /model-info, /metrics, /docs; LOAD_MODEL=false; start-up refusals."""

from __future__ import annotations

import re

import pytest
from support.app import serving, settings_for
from support.registry import publish

from service.inference.pool import VersionNotFound, VersionUnavailable


async def test_health_and_ready_say_the_model_is_loaded_and_warm(registry_dir):
    async with serving(settings_for(registry_dir)) as (_, client):
        health = await client.get("/health")
        ready = await client.get("/ready")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    # published without a verification set (as versions before runtime selection were): nothing
    # to measure agreement on, so the runtime is reported and the agreement is unknown
    assert body["model"] == {"loaded": True, "warm": True, "version": "v1", "runtime": "eager",
                             "agreement": None, "loaded_versions": ["v1"], "alias_failures": {}}
    assert body["cache"]["redis"] == "disabled"
    assert body["queue"]["max"] == 1024


async def test_model_info_is_cacheable_and_revalidates_with_304(registry_dir):
    async with serving(settings_for(registry_dir)) as (_, client):
        info = await client.get("/model-info")
        etag = info.headers["etag"]
        same = await client.get("/model-info", headers={"If-None-Match": etag})
        other = await client.get("/model-info", headers={"If-None-Match": '"stale"'})
    assert info.status_code == 200
    body = info.json()
    assert (body["model"], body["alias"], body["version"], body["loaded"]) == (
        "mnist-cnn", "production", "v1", True,
    )
    assert body["card"]["source"] == "tests" and body["card"]["version"] == "v1"
    assert body["runtime"] == "eager" and body["class_names"] == [str(d) for d in range(10)]
    assert info.headers["cache-control"] == "no-cache"
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == etag
    assert other.status_code == 200


def sample(metrics: str, name: str, **labels: str) -> float:
    for line in metrics.splitlines():
        named = line.startswith(name + "{") or line.startswith(name + " ")
        if named and all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels} in /metrics")


async def test_metrics_count_requests_batches_cache_and_name_the_model(registry_dir):
    async with serving(settings_for(registry_dir)) as (_, client):
        before = (await client.get("/metrics")).text
        for _ in range(2):
            await client.post("/predict", json={"pixels": [3] * 784})
        after = (await client.get("/metrics")).text
    route = {"route": "/predict", "method": "POST", "status": "200"}
    assert sample(after, "lab2prod_http_requests_total", **route) - _or_zero(
        before, "lab2prod_http_requests_total", **route
    ) == 2
    assert sample(after, "lab2prod_http_request_duration_seconds_count", **route) >= 2
    assert sample(after, "lab2prod_batch_size_count") >= 1
    assert sample(after, "lab2prod_inference_seconds_count") >= 1
    assert sample(after, "lab2prod_cache_requests_total", tier="memory", result="hit") >= 1
    assert sample(after, "lab2prod_queue_depth") == 0
    assert sample(after, "lab2prod_model_info", version="v1", runtime="eager") == 1
    assert sample(after, "lab2prod_cache_degraded", tier="redis") == 0


def _or_zero(metrics: str, name: str, **labels: str) -> float:
    try:
        return sample(metrics, name, **labels)
    except AssertionError:
        return 0.0


async def test_docs_describe_both_request_forms_and_the_response_fields(registry_dir):
    async with serving(settings_for(registry_dir)) as (_, client):
        docs = await client.get("/docs")
        spec = (await client.get("/openapi.json")).json()
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    predict = spec["paths"]["/predict"]["post"]
    assert {"application/json", "multipart/form-data"} <= set(predict["requestBody"]["content"])
    response = predict["responses"]["200"]["content"]["application/json"]["schema"]
    schema = spec["components"]["schemas"][response["$ref"].rsplit("/", 1)[1]]
    assert set(schema["properties"]) == {"digit", "confidence", "probabilities", "model_version"}
    for path in ("/predict/batch", "/health", "/ready", "/model-info", "/metrics"):
        assert path in spec["paths"]


async def test_without_a_model_or_a_broker_predict_says_so_and_the_instance_is_not_ready(tmp_path):
    settings = settings_for(tmp_path / "empty-registry", load_model=False)
    async with serving(settings) as (_, client):
        predict = await client.post("/predict", json={"pixels": [0] * 784})
        ready = await client.get("/ready")
        info = await client.get("/model-info")
    assert predict.status_code == 503
    assert "LOAD_MODEL=false" in predict.json()["detail"]
    assert ready.status_code == 503  # nothing to answer with: no model, no broker to queue on
    assert ready.json()["model"] == {"loaded": False, "required": False}
    assert info.json()["loaded"] is False


async def test_start_up_without_a_model_fails_and_says_to_run_release(tmp_path):
    with pytest.raises(VersionNotFound, match=re.escape("lab2prod release")):
        async with serving(settings_for(tmp_path / "empty-registry")):
            pass


async def test_start_up_with_a_corrupt_checkpoint_fails_and_says_which(tmp_path, checkpoints):
    registry = tmp_path / "models"
    publish(registry, checkpoints["v1"])
    stored = registry / "mnist-cnn" / "v1" / "model.safetensors"
    data = bytearray(stored.read_bytes())
    data[-100:] = b"\0" * 100  # flip the tail of the weights
    stored.write_bytes(bytes(data))
    with pytest.raises(VersionUnavailable, match="corrupt") as refused:
        async with serving(settings_for(registry)):
            pass
    assert "v1" in str(refused.value) and "lab2prod" in str(refused.value)
