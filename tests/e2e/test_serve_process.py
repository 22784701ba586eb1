"""End to end: a real `lab2prod serve` process on a free port, called over real HTTP."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from PIL import Image
from support.docker import dockerfile_stage, exec_form
from support.models import fresh_checkpoint
from support.registry import publish
from support.servers import LAB2PROD, ServeProcess, free_port, lab2prod_env
from support.uploads import digit_png

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("e2e-serve")
    registry = folder / "models"
    publish(registry, fresh_checkpoint(folder / "v1.safetensors", seed=1))
    return registry


@pytest.fixture(scope="module")
def server(registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with ServeProcess(registry, tmp_path_factory.mktemp("serve"), ACCESS_LOG="true") as running:
        yield running


def test_predict_over_real_http_json_image_and_batch(server: ServeProcess):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        first = client.post(
            "/predict", json={"pixels": [0] * 784}, headers={"X-Request-ID": "e2e-1"}
        )
        again = client.post("/predict", content=orjson.dumps({"pixels": [[0] * 28] * 28}),
                            headers={"content-type": "application/json"})
        upload = {"file": ("one.png", digit_png(), "image/png")}
        image = client.post("/predict", files=upload)
        batch = client.post("/predict/batch", json={"items": [{"pixels": [9] * 784}] * 3})
        bad = client.post("/predict", json={"pixels": [0] * 10})
    assert first.status_code == 200, first.text
    assert set(first.json()) == {"digit", "confidence", "probabilities", "model_version"}
    assert first.headers["x-request-id"] == "e2e-1" and first.headers["x-cache"] == "miss"
    assert again.headers["x-cache"] == "hit" and again.json() == first.json()
    assert image.status_code == 200 and image.json()["model_version"] == "v1"
    assert [p["model_version"] for p in batch.json()["predictions"]] == ["v1"] * 3
    assert bad.status_code == 422 and bad.json()["request_id"] == bad.headers["x-request-id"]


def test_ops_endpoints_over_real_http(server: ServeProcess):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        client.post("/predict", json={"pixels": [1] * 784})
        health = client.get("/health")
        ready = client.get("/ready").json()
        info = client.get("/model-info")
        not_modified = client.get("/model-info", headers={"If-None-Match": info.headers["etag"]})
        metrics = client.get("/metrics").text
        docs = client.get("/docs")
    assert health.json() == {"status": "ok"}
    assert ready["status"] == "ready" and ready["model"]["version"] == "v1"
    assert info.json()["version"] == "v1" and not_modified.status_code == 304
    assert ('lab2prod_http_requests_total{method="POST",model_version="v1",route="/predict",'
            'status="200"}') in metrics
    assert "lab2prod_batch_size_bucket" in metrics and "lab2prod_model_info" in metrics
    assert docs.status_code == 200


def test_logs_are_json_lines_carrying_the_request_id(server: ServeProcess):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        client.post("/predict", json={"pixels": [2] * 784}, headers={"X-Request-ID": "trace-e2e"})
    deadline = time.monotonic() + 5
    while b"trace-e2e" not in server.log.read_bytes():
        assert time.monotonic() < deadline, "the access log never named the request id"
        time.sleep(0.05)
    lines = [orjson.loads(line) for line in server.log.read_bytes().splitlines() if line.strip()]
    mine = [line for line in lines if line.get("request_id") == "trace-e2e"]
    assert mine and mine[0]["route"] == "/predict" and mine[0]["status"] == 200
    assert any(line["message"] == "loaded model version" and line["version"] == "v1"
               for line in lines)


def test_the_served_model_follows_the_production_alias(registry: Path, tmp_path: Path):
    own = tmp_path / "models"
    publish(own, fresh_checkpoint(tmp_path / "a.safetensors", seed=1))
    running = ServeProcess(own, tmp_path)
    try:
        running.wait_ready()
        publish(own, fresh_checkpoint(tmp_path / "b.safetensors", seed=2))
        deadline = time.monotonic() + 20
        while True:
            answer = httpx.post(f"{running.url}/predict", json={"pixels": [5] * 784}, timeout=10)
            assert answer.status_code == 200
            if answer.json()["model_version"] == "v2":
                break
            assert time.monotonic() < deadline, "v2 never came into service"
            time.sleep(0.1)
    finally:
        code = running.stop()
    # uvicorn shuts down gracefully (lifespan exit), then re-raises SIGTERM for the exit status
    assert code in (0, -signal.SIGTERM)
    assert b'"message":"shutting down"' in running.log.read_bytes()


def test_two_worker_processes_serve_from_one_port(registry: Path, tmp_path: Path):
    running = ServeProcess(registry, tmp_path, "--workers", "2")
    try:
        running.wait_ready(timeout=120)
        with httpx.Client(base_url=running.url, timeout=10) as client:
            answers = [client.post("/predict", json={"pixels": [i] * 784}) for i in range(10)]
    finally:
        running.stop()
    assert [answer.status_code for answer in answers] == [200] * 10


def start_and_fail(registry: Path, workdir: Path) -> tuple[int, str]:
    process = subprocess.run(
        [LAB2PROD, "serve", "--port", str(free_port())],
        env=lab2prod_env(registry), cwd=workdir, capture_output=True, timeout=120,
    )
    return process.returncode, process.stderr.decode()


def test_without_a_model_serve_exits_and_says_to_run_release(tmp_path: Path):
    code, stderr = start_and_fail(tmp_path / "empty", tmp_path)
    assert code == 2
    assert "lab2prod release" in stderr and "no model" in stderr


def test_with_a_corrupt_checkpoint_serve_exits_and_says_which(tmp_path: Path):
    registry = tmp_path / "models"
    publish(registry, fresh_checkpoint(tmp_path / "a.safetensors", seed=3))
    stored = registry / "mnist-cnn" / "v1" / "model.safetensors"
    stored.write_bytes(stored.read_bytes()[: stored.stat().st_size // 2])
    code, stderr = start_and_fail(registry, tmp_path)
    assert code == 2
    assert "v1" in stderr and ("corrupt" in stderr or "truncated" in stderr)


def test_a_decompression_bomb_upload_does_not_hurt_the_server(server: ServeProcess):
    bomb = io.BytesIO()
    Image.new("1", (12_000, 12_000), 1).save(bomb, format="PNG", optimize=True)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        refused = client.post("/predict", files={"file": ("b.png", bomb.getvalue(), "image/png")})
        fine = client.post("/predict", json={"pixels": np.zeros(784, int).tolist()})
    assert refused.status_code == 413 and fine.status_code == 200


def test_the_images_healthcheck_command_passes_live_and_fails_without_a_server(
    server: ServeProcess,
):
    (healthcheck,) = dockerfile_stage("serve").arguments("HEALTHCHECK")
    command = exec_form(healthcheck)
    command[0] = sys.executable  # the image's `python`
    live = subprocess.run(command, env={"PORT": str(server.port)}, capture_output=True, timeout=30)
    dead = subprocess.run(
        command, env={"PORT": str(free_port())}, capture_output=True, timeout=30
    )
    assert live.returncode == 0, live.stderr.decode()
    assert dead.returncode != 0
