"""A release as an MLflow run: what a run record becomes in MLflow, logged to MLflow's own SQLite
store (no server), and a tracking server that is down costing only a warning."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from support.servers import free_port

from service.release.tracking import run_metrics, run_params, run_tags, track_release


def run_record(run_dir: Path) -> dict[str, Any]:
    """A released run's record as run.json holds it (the fields tracking reads)."""
    epochs = [{"epoch": 1, "train_loss": 2.2, "test_loss": 1.8, "test_accuracy": 0.42},
              {"epoch": 2, "train_loss": 1.1, "test_loss": 0.9, "test_accuracy": 0.71}]
    per_class = [{"class": str(digit), "precision": 0.9, "recall": 0.5 + digit / 20,
                  "support": 20} for digit in range(10)]
    return {
        "run_id": "nightly-7", "status": "released", "run_dir": str(run_dir),
        "parameters": {"requested": {"epochs": 2},
                       "train": {"epochs": 2, "lr": 1.0, "augment": False, "dataset": "mnist-5k"},
                       "evaluate": {"test_limit": 200, "champion_checkpoint": ""}},
        "git": {"commit": "abc123", "dirty": False},
        "champion": {"version": "v1"},
        "registry": {"url": "models", "model": "mnist-cnn", "alias": "production"},
        "data": {"evaluation": {"name": "mnist-5k"}},
        "metrics": {
            "train": {"epochs": epochs, "test_accuracy": 0.71, "wall_seconds": 3.5},
            "candidate": {"accuracy": 0.72, "loss": 0.9, "per_class": per_class,
                          "latency_ms": {"batch_1": 1.5}, "confusion_matrix": [[1]]},
            "champion": {"accuracy": 0.70, "per_class": per_class},
        },
        "runtimes": {"chosen": "onnx"},
        "gate": {"passed": True, "criteria": [
            {"name": "min_accuracy", "passed": True, "measured": 0.72, "required": ">= 0.3"},
            {"name": "serving_runtime", "passed": True, "measured": "onnx", "required": "one"},
        ]},
        "release": {"version": "v2"},
        "artefacts": {"checkpoint": "model.safetensors", "train_notebook": "train.ipynb",
                      "train_html": "train.html", "evaluate_notebook": "evaluate.ipynb",
                      "evaluate_html": "evaluate.html", "train_record": "train.json",
                      "evaluation_record": "evaluation.json"},
        "timings": {"train_s": 14.2, "total_s": 46.2},
    }


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "runs" / "nightly-7"
    folder.mkdir(parents=True)
    for name in ("train.ipynb", "evaluate.ipynb", "train.html", "evaluate.html", "train.json",
                 "evaluation.json", "model.safetensors"):
        (folder / name).write_text(name)
    return folder


def test_parameters_are_the_notebooks_effective_ones(run_dir):
    assert run_params(run_record(run_dir)) == {
        "train.epochs": "2", "train.lr": "1.0", "train.augment": "False",
        "train.dataset": "mnist-5k", "evaluate.test_limit": "200",
        "evaluate.champion_checkpoint": ""}


def test_training_metrics_are_stepped_by_epoch_and_final_ones_include_per_class_recall(run_dir):
    metrics = run_metrics(run_record(run_dir))
    by_step = {(name, step): value for name, value, step in metrics}
    assert by_step[("train_loss", 1)] == 2.2 and by_step[("train_loss", 2)] == 1.1
    assert by_step[("test_accuracy", 2)] == 0.71
    assert by_step[("accuracy", 0)] == 0.72 and by_step[("champion.accuracy", 0)] == 0.70
    assert by_step[("recall.9", 0)] == 0.95 and by_step[("champion.recall.0", 0)] == 0.5
    assert by_step[("latency_ms.batch_1", 0)] == 1.5
    assert by_step[("train.wall_seconds", 0)] == 3.5 and by_step[("timings.total_s", 0)] == 46.2
    assert by_step[("gate.passed", 0)] == 1.0 and by_step[("gate.min_accuracy", 0)] == 1.0
    assert not any(name.startswith("confusion_matrix") for name, _, _ in metrics)


def test_the_gates_verdict_is_a_tag_per_criterion(run_dir):
    tags = run_tags(run_record(run_dir))
    assert tags["gate.passed"] == "true"
    assert tags["gate.min_accuracy"] == "passed: measured 0.72, required >= 0.3"
    assert tags["lab2prod.version"] == "v2" and tags["lab2prod.status"] == "released"
    assert tags["mlflow.source.git.commit"] == "abc123"


def test_a_release_is_logged_as_a_run_whose_id_run_json_records(mlflow_store, run_dir):
    experiment = f"tracked-{uuid.uuid4().hex[:8]}"
    record = run_record(run_dir)
    entry = track_release(mlflow_store, experiment, record, run_dir)
    assert entry == {"uri": mlflow_store, "experiment": experiment, "run_id": entry["run_id"],
                     "logged": True}
    assert json.loads((run_dir / "run.json").read_text())["tracking"] == entry
    client = MlflowClient(tracking_uri=mlflow_store)
    run = client.get_run(entry["run_id"])
    assert run.info.run_name == "nightly-7" and run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2"
    assert run.data.metrics["recall.3"] == 0.65
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert run.data.tags["gate.serving_runtime"].startswith("passed")
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == [
        "evaluate.html", "evaluate.ipynb", "evaluation.json", "run.json", "train.html",
        "train.ipynb", "train.json"]
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, "run.json",
                                                       str(run_dir.parent))).read_text())
    assert logged["tracking"]["run_id"] == run.info.run_id


def test_a_tracking_server_that_is_down_costs_a_warning_and_is_recorded(run_dir, caplog):
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, "lab2prod.release"):
        entry = track_release(uri, "mnist-cnn", run_record(run_dir), run_dir)
    assert time.monotonic() - started < 10
    assert entry["logged"] is False and entry["run_id"] is None
    assert "no MLflow server answers" in entry["error"]
    assert "check MLFLOW_TRACKING_URI" in entry["error"]
    assert "nightly-7 was not logged to MLflow" in caplog.text
