"""Each baseline server of the benchmark starts on the checkpoint and answers one request with
the same prediction as the checkpoint loaded directly."""

from __future__ import annotations

import json
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
