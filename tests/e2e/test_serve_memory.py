"""A server of the exported ONNX graph never loads torch: its memory is the serving stack's
(about a quarter of a torch process's, docs/benchmarks), and torch comes only with a runtime that
runs it. No server loads scipy: the drift tests are computed without it (it was a third of the
server's memory)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from support.models import held_out_digits, trained_checkpoint
from support.registry import publish_release
from support.servers import ServeProcess

from service.inference.verification import RuntimeCriteria

pytestmark = pytest.mark.slow

# The bars only have to let int8 through for this briefly trained model: this file is about
# what the process loads, the agreement bars have tests of their own.
LENIENT = RuntimeCriteria(min_agreement=0.9, max_accuracy_drop=0.05)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("onnx-serving")
    images, labels = held_out_digits(500)
    registry = folder / "models"
    publish_release(registry, trained_checkpoint(folder), images, labels,
                    variants=("eager", "onnx-int8"), criteria=LENIENT)
    return registry


def loaded_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_a_server_of_the_int8_onnx_graph_answers_without_loading_torch(registry, tmp_path):
    with ServeProcess(registry, tmp_path, RUNTIME="onnx-int8", DEVICE="cpu") as server:
        answer = httpx.post(f"{server.url}/predict", json={"pixels": [0] * 784}, timeout=10)
        runtime = httpx.get(f"{server.url}/ready", timeout=10).json()["model"]["runtime"]
        drift = httpx.get(f"{server.url}/drift", timeout=10).json()  # the window's tests, run
        libraries = loaded_libraries(server.process.pid)
    assert answer.status_code == 200, answer.text
    assert runtime == "onnx-int8"
    assert drift["window"]["filled"] == 1 and {
        signal["test"] for signal in drift["signals"].values()
    } == {"chi-square", "kolmogorov-smirnov"}, drift
    assert "libonnxruntime" in libraries
    assert "libtorch" not in libraries, "serving the ONNX graph loaded torch"
    assert "/scipy" not in libraries, "the drift tests loaded scipy"


def test_a_runtime_that_runs_torch_loads_it(registry, tmp_path):
    with ServeProcess(registry, tmp_path, RUNTIME="eager", DEVICE="cpu") as server:
        answer = httpx.post(f"{server.url}/predict", json={"pixels": [0] * 784}, timeout=10)
        libraries = loaded_libraries(server.process.pid)
    assert answer.status_code == 200, answer.text
    assert "libtorch" in libraries
