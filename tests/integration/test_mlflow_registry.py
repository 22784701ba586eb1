"""MLflow as users run it: a real `mlflow server` (SQLite store, artefacts served through it) is
the registry (REGISTRY_URL=mlflow+http://...) and the tracking server (MLFLOW_TRACKING_URI) of
real `lab2prod release` runs, read by `lab2prod models` and followed by a real `lab2prod serve`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow.artifacts
import pytest
from support.mlflow_server import MlflowServer
from support.registry import assert_nothing_lost, race
from support.releases import TINY, criteria, lab2prod, make_project, release
from support.servers import ServeProcess, free_port

from service.registry import open_registry
from service.registry.base import file_digest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def released(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, Any]:
    """Two passing releases into the MLflow registry: the first while its tracking server is
    down (a port nothing listens on), the second tracked by the MLflow server."""
    project = make_project(tmp_path_factory.mktemp("project"))
    env = {"REGISTRY_URL": mlflow_server.registry_url}
    first = release(project, "first", *TINY, **env,
                    MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
    assert first.returncode == 0, first.stderr[-3000:]
    second = release(project, "second", *TINY, **env, MLFLOW_TRACKING_URI=mlflow_server.uri)
    assert second.returncode == 0, second.stderr[-3000:]
    return {"project": project, "env": env, "first": first, "second": second}


def mlflow_aliases(server: MlflowServer) -> dict[str, str]:
    return dict(server.client().get_registered_model("mnist-cnn").aliases)


def test_releases_publish_mlflow_versions_whose_numbers_are_ours(released, mlflow_server):
    first, second = released["first"], released["second"]
    assert "released mnist-cnn v1" in first.stdout and "released mnist-cnn v2" in second.stdout
    found = mlflow_server.client().search_model_versions("name='mnist-cnn'")
    assert {each.version: (each.tags["lab2prod.version"], each.tags["lab2prod.run_id"])
            for each in found} == {"1": ("v1", "first"), "2": ("v2", "second")}
    assert mlflow_aliases(mlflow_server) == {"production": "2", "previous": "1"}
    assert second.record["release"]["aliases"] == {"production": "v2", "previous": "v1"}
    assert second.record["champion"]["version"] == "v1"  # re-evaluated from MLflow's files
    assert criteria(second.record)["no_accuracy_regression"]["passed"]


def test_each_version_holds_its_card_checkpoint_runtimes_and_verification_set(
        released, mlflow_server, tmp_path):
    client = mlflow_server.client()
    source = client.get_model_version_download_uri("mnist-cnn", "2")
    local = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=source, dst_path=str(tmp_path), tracking_uri=mlflow_server.uri))
    run_dir = released["project"] / "runs" / "second"
    published = json.loads((run_dir / "serving.json").read_text())["artefacts"]
    assert "verification.safetensors" in published
    assert any(name.endswith(".onnx") for name in published)
    assert sorted(path.name for path in local.iterdir()) == sorted(
        ["model.safetensors", "model-card.json", *published])
    card = json.loads((local / "model-card.json").read_text())
    assert card["version"] == "v2" and card["run_id"] == "second"
    assert card == open_registry(mlflow_server.registry_url).card("production")
    checkpoint = file_digest(run_dir / "model.safetensors")
    tags = client.get_model_version("mnist-cnn", "2").tags
    assert card["checkpoint_sha256"] == tags["lab2prod.checkpoint_sha256"] == checkpoint
    assert tags["lab2prod.accuracy"] == str(card["metrics"]["candidate"]["accuracy"])
    assert tags["lab2prod.gate"] == "passed"


def test_models_list_and_show_read_the_mlflow_registry(released):
    project, env = released["project"], released["env"]
    listed = lab2prod(project, "models", "list", **env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[1].split()[:2] == ["v1", "previous"] and "first" in lines[1]
    assert lines[2].split()[:2] == ["v2", "production"] and "second" in lines[2]
    shown = lab2prod(project, "models", "show", "production", **env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["version"] == "v2"


def test_a_tracking_server_that_is_down_does_not_refuse_a_release(released):
    first = released["first"]
    assert first.record["status"] == "released"
    assert first.record["tracking"]["logged"] is False
    assert "no MLflow server answers" in first.record["tracking"]["error"]
    assert "not logged to MLflow" in first.stderr


def test_a_release_is_an_mlflow_run_with_parameters_metrics_artefacts_and_verdict(
        released, mlflow_server):
    second = released["second"]
    tracking = second.record["tracking"]
    assert tracking["logged"] and f"run {tracking['run_id']}" in second.stdout
    client = mlflow_server.client()
    run = client.get_run(tracking["run_id"])
    assert run.info.run_name == "second" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "mnist-cnn"
    params = run.data.params
    assert (params["train.epochs"], params["train.limit"], params["evaluate.test_limit"]) == (
        "1", "300", "200")
    candidate = second.record["metrics"]["candidate"]
    assert run.data.metrics["accuracy"] == candidate["accuracy"]
    assert {f"recall.{digit}" for digit in range(10)} <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1]
    assert run.data.metrics["gate.passed"] == 1.0 and run.data.tags["gate.passed"] == "true"
    assert run.data.tags["gate.no_accuracy_regression"].startswith("passed: measured drop")
    assert run.data.tags["lab2prod.version"] == "v2"
    artefacts = {each.path for each in client.list_artifacts(run.info.run_id)}
    assert {"train.ipynb", "evaluate.ipynb", "train.html", "evaluate.html", "run.json"
            } <= artefacts


def test_concurrent_publishes_and_promotions_through_mlflow_lose_no_version(mlflow_server,
                                                                           tmp_path):
    promoted = ("production", "stable")
    checkpoints = race(mlflow_server.registry_url, "race-cnn", tmp_path, 3, promoted)
    registry = open_registry(mlflow_server.registry_url, "race-cnn")
    assert_nothing_lost(registry, checkpoints, promoted)
    client = mlflow_server.client()
    assert not client.search_registered_models("name = 'race-cnn.lab2prod-lock'")


def test_serve_answers_from_mlflow_and_follows_a_rollback(released, mlflow_server, tmp_path):
    project, env = released["project"], released["env"]
    server = ServeProcess(mlflow_server.registry_url, tmp_path)  # polls every 0.2 s
    try:
        server.wait_ready(timeout=120)
        answer = httpx.post(f"{server.url}/predict", json={"pixels": [0] * 784}, timeout=10)
        assert answer.status_code == 200 and answer.json()["model_version"] == "v2"
        rolled = lab2prod(project, "models", "rollback", **env)
        assert rolled.returncode == 0, rolled.stderr
        assert mlflow_aliases(mlflow_server) == {"production": "1", "previous": "2"}
        rolled_at = time.monotonic()
        while True:
            answer = httpx.post(f"{server.url}/predict", json={"pixels": [0] * 784}, timeout=10)
            assert answer.status_code == 200
            if answer.json()["model_version"] == "v1":
                break
            assert time.monotonic() - rolled_at < 30, "v1 never came back into service"
            time.sleep(0.1)
    finally:
        server.stop()
        lab2prod(project, "models", "rollback", **env)  # back to v2 for whatever runs next
    lines = server.log.read_text().splitlines()
    assert all(line.startswith("{") for line in lines), "MLflow wrote into the JSON logs"
