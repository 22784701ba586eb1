"""Both notebooks run headless under papermill on a real `python3` kernel with tiny
parameters, and write the records of the notebook contract."""

import json
from pathlib import Path

import papermill as pm
import pytest

from service.ml.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
METRIC_KEYS = {
    "checkpoint",
    "accuracy",
    "loss",
    "ece",
    "per_class",
    "confusion_matrix",
    "latency_ms",
}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("papermill")
    run_dir = work / "run"
    pm.execute_notebook(
        str(NOTEBOOKS / "train.ipynb"),
        str(work / "train.out.ipynb"),
        parameters={"limit": 300, "epochs": 1, "augment": True, "run_dir": str(run_dir)},
        kernel_name="python3",
        cwd=str(work),
        progress_bar=False,
    )
    return work, run_dir


def test_train_notebook_writes_checkpoint_and_run_record(trained_run):
    work, run_dir = trained_run
    record = json.loads((run_dir / "train.json").read_text())
    assert record["params"]["limit"] == 300 and record["params"]["augment"] is True
    assert record["params"]["epochs"] == 1 and record["params"]["dataset"] == "mnist-5k"
    assert record["dataset"]["train_size"] == 300 and record["dataset"]["test_size"] == 1000
    assert record["dataset"]["split"]["method"] == "stratified"
    assert record["device"] == "cpu" and record["seed"] == 1
    assert record["checkpoint"] == "model.safetensors"
    [epoch] = record["metrics"]["epochs"]
    assert 0.0 <= epoch["test_accuracy"] <= 1.0 and epoch["images_per_second"] > 0
    assert record["metrics"]["test_accuracy"] == epoch["test_accuracy"]
    assert load_checkpoint(run_dir / "model.safetensors").metadata["params"] == record["params"]
    executed = json.loads((work / "train.out.ipynb").read_text())
    images = [
        output
        for cell in executed["cells"]
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    assert len(images) >= 3  # samples, augmented samples, curves


def test_evaluate_notebook_writes_the_evaluation_record(trained_run):
    work, run_dir = trained_run
    pm.execute_notebook(
        str(NOTEBOOKS / "evaluate.ipynb"),
        str(work / "evaluate.out.ipynb"),
        parameters={
            "run_dir": str(run_dir),
            "champion_checkpoint": str(run_dir / "model.safetensors"),
            "test_limit": 200,
            "sample_size": 16,
        },
        kernel_name="python3",
        cwd=str(work),
        progress_bar=False,
    )
    record = json.loads((run_dir / "evaluation.json").read_text())
    assert record["dataset"]["name"] == "mnist-5k" and record["dataset"]["test_size"] == 200
    assert set(record["candidate"]) == METRIC_KEYS
    assert record["candidate"]["checkpoint"] == str(run_dir / "model.safetensors")
    assert sum(row["support"] for row in record["candidate"]["per_class"]) == 200
    assert record["champion"]["accuracy"] == record["candidate"]["accuracy"]
    sample = record["sample"]
    assert sample["size"] == 16 and len(sample["labels"]) == 16
    assert len(sample["predictions"]) == 16 and len(sample["probabilities"][0]) == 10
    assert sample["predictions"] == [
        max(range(10), key=row.__getitem__) for row in sample["probabilities"]
    ]
    assert all(abs(sum(row) - 1.0) < 1e-4 for row in sample["probabilities"])
