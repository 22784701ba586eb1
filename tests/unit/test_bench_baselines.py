"""Each baseline server of the benchmark starts on the checkpoint (or on the int8 ONNX file ours
serves) and answers one request with the same prediction as the model loaded directly."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from support.models import fresh_checkpoint

from service.bench.servers import Server, ServerSpec, free_port
from service.ml.checkpoint import load_checkpoint
from service.ml.preprocess import normalize

pytestmark = pytest.mark.slow  # three subprocess servers
BASELINES = Path(__file__).resolve().parents[2] / "scripts" / "baselines"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return fresh_checkpoint(tmp_path_factory.mktemp("baselines") / "model.safetensors", seed=3)


@pytest.mark.parametrize("script", ["tutorial.py", "threadpool.py", "litserve_server.py"])
def test_baseline_starts_and_answers_one_prediction(script, checkpoint, tmp_path):
    port = free_port()
    pixels = np.random.default_rng(0).integers(0, 256, 784).astype(np.uint8)
    spec = ServerSpec(script, [sys.executable, str(BASELINES / script), "--checkpoint",
                               str(checkpoint), "--port", str(port)], port)
    with Server(spec, cpu=0, log_dir=tmp_path) as server:
        server.wait_ready(120)
        request = urllib.request.Request(
            f"{spec.url}/predict", data=json.dumps({"pixels": pixels.tolist()}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=30) as reply:
            answer = json.loads(reply.read())
    model = load_checkpoint(checkpoint).model
    with torch.no_grad():
        expected = model(normalize(pixels.reshape(1, 28, 28))).exp()[0].numpy()
    assert answer["digit"] == int(expected.argmax())
    np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-5)


@pytest.mark.parametrize("script", ["tutorial.py", "threadpool.py", "litserve_server.py"])
def test_baseline_on_the_int8_onnx_file_answers_as_that_file_does(script, checkpoint, tmp_path):
    import onnxruntime

    from service.inference.export import ensure_artifact

    onnx = ensure_artifact(load_checkpoint(checkpoint), "onnx-int8")
    port = free_port()
    pixels = np.random.default_rng(1).integers(0, 256, 784).astype(np.uint8)
    spec = ServerSpec(script, [sys.executable, str(BASELINES / script), "--runtime", "onnx-int8",
                               "--onnx", str(onnx), "--port", str(port)], port)
    with Server(spec, cpu=0, log_dir=tmp_path) as server:
        server.wait_ready(120)
        request = urllib.request.Request(
            f"{spec.url}/predict", data=json.dumps({"pixels": pixels.tolist()}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=30) as reply:
            answer = json.loads(reply.read())
        imported = " ".join(Path(f"/proc/{pid}/maps").read_text() for pid in server.pids())
    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"digits": normalize(pixels.reshape(1, 28, 28)).numpy()})[0][0]
    assert answer["digit"] == int(expected.argmax())
    np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-5)
    if script != "litserve_server.py":  # LitServe imports torch itself
        assert "libtorch" not in imported, "the same-runtime rows carry no torch"


def test_a_baseline_refuses_a_runtime_without_its_file():
    finished = subprocess.run([sys.executable, str(BASELINES / "tutorial.py"), "--runtime",
                               "onnx-int8"], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2 and "--runtime onnx-int8 needs --onnx" in finished.stderr
