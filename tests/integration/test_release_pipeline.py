"""`lab2prod release` end to end: real papermill runs of the project's notebooks on a real kernel.

Every run happens in a fresh project folder (the repository's notebooks copied in, a test policy
with low absolute thresholds), through the console entry point, so paths are resolved against
that folder exactly as for a user. Parameters are tiny (300 training digits, 1 epoch, 200 test
digits); one pair of passing releases is shared by the tests that only read it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from support import REPO
from support.releases import (
    SETTINGS_ENV,
    TEST_POLICY,
    TINY,
    criteria,
    lab2prod,
    make_project,
    release,
)

from service.ml.checkpoint import load_checkpoint
from service.monitoring.reference import DriftReference
from service.registry import open_registry

pytestmark = pytest.mark.slow

POOR = ["-p", "lr", "0"]  # runs, learns nothing: the gate must refuse it
# Absolute criteria switched off, so only the comparison with the champion can refuse.
REGRESSION_ONLY_POLICY = TEST_POLICY.replace("min_accuracy: 0.3", "min_accuracy: 0.0")


def registry_snapshot(project: Path) -> dict[str, bytes]:
    root = project / "models"
    if not root.exists():
        return {}
    return {str(path.relative_to(root)): path.read_bytes()
            for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two passing releases with the same seed in one project: v1, then v2 against v1."""
    project = make_project(tmp_path_factory.mktemp("project"))
    first = release(project, "first", *TINY)
    assert first.returncode == 0, first.stderr[-3000:]
    after_first = open_registry(project / "models").aliases()
    second = release(project, "second", *TINY)
    assert second.returncode == 0, second.stderr[-3000:]
    return {"project": project, "first": first, "second": second, "after_first": after_first}


def test_a_passing_release_publishes_v1_and_moves_production(released):
    first = released["first"]
    assert "released mnist-cnn v1" in first.stdout
    assert released["after_first"] == {"production": "v1"}
    assert first.record["status"] == "released"
    assert first.record["champion"] is None
    assert first.record["gate"]["passed"]
    skipped = criteria(first.record)["no_accuracy_regression"]
    assert skipped["passed"] and "first release" in skipped["detail"]
    # what serving checks its runtime and watches its inputs against is published with it
    published = released["project"] / "models" / "mnist-cnn" / "v1"
    assert (published / "verification.safetensors").is_file()
    weights = load_checkpoint(published / "model.safetensors").metadata["weights_sha256"]
    assert DriftReference.find(published, weights) is not None


def test_a_second_passing_release_moves_production_to_v2_and_previous_to_v1(released):
    second = released["second"]
    assert "released mnist-cnn v2" in second.stdout
    registry = open_registry(released["project"] / "models")
    assert registry.versions() == ["v1", "v2"]
    assert registry.aliases() == {"production": "v2", "previous": "v1"}
    assert second.record["champion"]["version"] == "v1"
    assert second.record["release"]["aliases"] == {"production": "v2", "previous": "v1"}
    regression = criteria(second.record)["no_accuracy_regression"]
    assert regression["passed"] and regression["measured"] == "drop 0.0000, p 1"
    assert "b 0 champion right & candidate wrong, c 0" in regression["detail"]
    assert "champion v1" in regression["detail"]


def test_reruns_with_the_same_seed_produce_the_same_metrics(released):
    first, second = released["first"].record, released["second"].record

    def stable(metrics: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in metrics.items()
                if key not in ("latency_ms", "checkpoint")}

    assert stable(second["metrics"]["candidate"]) == stable(first["metrics"]["candidate"])
    # the champion (v1, the first run's model) re-evaluated in the second run: same numbers
    assert stable(second["metrics"]["champion"]) == stable(first["metrics"]["candidate"])
    losses = [[epoch["train_loss"], epoch["test_loss"], epoch["test_accuracy"]]
              for epoch in first["metrics"]["train"]["epochs"]]
    assert losses == [[epoch["train_loss"], epoch["test_loss"], epoch["test_accuracy"]]
                      for epoch in second["metrics"]["train"]["epochs"]]


def test_the_run_record_holds_the_lineage_and_the_verdict(released):
    project, record = released["project"], released["second"].record
    run_dir = project / "runs" / "second"
    assert record["parameters"]["requested"] == {"limit": 300, "epochs": 1, "test_limit": 200}
    assert record["parameters"]["train"]["lr"] == 1.0
    assert record["parameters"]["evaluate"]["champion_checkpoint"].endswith(
        "models/mnist-cnn/v1/model.safetensors")
    assert record["seed"] == 1
    assert set(record["git"]) == {"commit", "dirty"}
    assert record["data"]["fingerprint"].startswith("sha256:")
    assert record["data"]["evaluation"]["test_size"] == 200
    assert "torch" in record["library_versions"]
    assert record["metrics"]["candidate"]["accuracy"] >= 0.3
    for name in ("train_s", "evaluate_s", "render_s", "gate_s", "publish_s", "total_s"):
        assert record["timings"][name] > 0
    for artefact in record["artefacts"].values():
        assert (run_dir / artefact).is_file(), artefact
    assert (run_dir / "train.html").read_text().lstrip().lower().startswith("<!doctype html")
    assert [c["name"] for c in record["gate"]["criteria"]] == [
        "notebooks_executed", "run_records", "min_accuracy", "min_class_recall",
        "no_accuracy_regression", "no_class_recall_regression", "serving_parity",
        "serving_runtime", "champion_unchanged",
    ]
    for criterion in record["gate"]["criteria"]:
        assert set(criterion) == {"name", "passed", "measured", "required", "detail"}
    assert record["policy"]["sha256"].startswith("sha256:")


def test_the_model_card_is_the_runs_lineage(released):
    card = open_registry(released["project"] / "models").card("production")
    assert card["run_id"] == "second" and card["version"] == "v2"
    assert card["champion"]["version"] == "v1"
    assert card["gate"]["passed"]
    assert card["metrics"]["candidate"] == released["second"].record["metrics"]["candidate"]


def test_a_release_in_another_folder_uses_that_folders_registry_and_runs(released):
    project = released["project"]
    assert (project / "models" / "mnist-cnn" / "v2" / "model.safetensors").is_file()
    assert (project / "runs" / "second" / "train.ipynb").is_file()
    assert released["second"].record["run_dir"] == str((project / "runs" / "second").resolve())
    assert not (REPO / "runs" / "second").exists()


def test_rollback_restores_the_previous_version(released, tmp_path):
    project = tmp_path / "copy"
    shutil.copytree(released["project"] / "models", project / "models")
    done = lab2prod(project, "models", "rollback")
    assert done.returncode == 0, done.stderr
    assert open_registry(project / "models").aliases() == {"production": "v1", "previous": "v2"}
    listed = lab2prod(project, "models", "list").stdout.splitlines()
    assert listed[1].split()[:2] == ["v1", "production"]
    assert listed[2].split()[:2] == ["v2", "previous"]


def test_a_poor_model_is_refused_and_the_registry_is_unchanged(released):
    project = released["project"]
    before = registry_snapshot(project)
    refused = release(project, "poor", *TINY, *POOR)
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "release refused" in refused.stderr
    assert "FAILED min_accuracy: measured 0." in refused.stderr
    assert "required >= 0.3000" in refused.stderr
    assert refused.record["status"] == "refused"
    assert refused.record["release"] is None
    assert not criteria(refused.record)["min_accuracy"]["passed"]
    assert registry_snapshot(project) == before


def test_a_candidate_worse_than_the_champion_is_refused(released, tmp_path):
    project = released["project"]
    policy = tmp_path / "regression-only.yaml"
    policy.write_text(REGRESSION_ONLY_POLICY)
    before = registry_snapshot(project)
    refused = release(project, "worse", *TINY, *POOR, "--policy", str(policy))
    assert refused.returncode == 1, refused.stderr[-3000:]
    verdict = criteria(refused.record)
    assert verdict["min_accuracy"]["passed"]
    assert not verdict["no_accuracy_regression"]["passed"]
    regression = verdict["no_accuracy_regression"]
    assert "significantly worse (p <= 0.01)" in regression["detail"]
    assert "McNemar exact on 200 digits" in regression["detail"]
    assert "beyond the bound 0.0200" in regression["detail"]
    assert "FAILED no_accuracy_regression: measured drop 0." in refused.stderr
    assert refused.record["champion"]["version"] == "v2"
    assert refused.record["metrics"]["champion"]["accuracy"] == (
        released["second"].record["metrics"]["candidate"]["accuracy"])
    assert registry_snapshot(project) == before


def test_a_notebook_that_raises_refuses_the_release_and_is_kept(released):
    project = released["project"]
    before = registry_snapshot(project)
    refused = release(project, "raises", *TINY, "-p", "dataset", "no-such-dataset")
    assert refused.returncode == 1
    assert "FAILED notebooks_executed" in refused.stderr
    run_dir = project / "runs" / "raises"
    executed = nbformat.read(run_dir / "train.ipynb", as_version=4)
    errors = [output for cell in executed.cells if cell.cell_type == "code"
              for output in cell.get("outputs", []) if output.output_type == "error"]
    assert errors and "no-such-dataset" in errors[0].evalue
    assert (run_dir / "train.html").is_file()
    assert not (run_dir / "evaluate.ipynb").exists()
    assert refused.record["notebooks"][1] == {"name": "evaluate", "executed": False, "error": None}
    assert registry_snapshot(project) == before


def test_an_unknown_parameter_is_an_error_that_lists_the_known_names(tmp_path):
    project = make_project(tmp_path / "project")
    done = lab2prod(project, "release", "-p", "epoch", "2", "--run-id", "typo")
    assert done.returncode == 2
    assert "unknown parameter epoch" in done.stderr
    assert "epochs" in done.stderr and "test_limit" in done.stderr
    assert not (project / "runs" / "typo").exists()
    bad_alias = lab2prod(project, "release", "--alias", "v3", "--run-id", "alias")
    assert bad_alias.returncode == 2
    assert "alias 'v3' is not allowed" in bad_alias.stderr
    assert not (project / "runs").exists()
    assert not (project / "models").exists()


def test_the_retrain_wrapper_runs_in_its_checkout_logs_to_runs_and_passes_the_exit_code(tmp_path):
    project = make_project(tmp_path / "checkout")
    (project / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "retrain.sh", project / "scripts" / "retrain.sh")
    env = {key: value for key, value in os.environ.items() if key not in SETTINGS_ENV}
    env["LAB2PROD"] = str(Path(sys.executable).with_name("lab2prod"))
    done = subprocess.run([str(project / "scripts" / "retrain.sh"), "-p", "epoch", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    logs = list((project / "runs").glob("retrain-*.log"))
    assert len(logs) == 1
    logged = logs[0].read_text()
    assert "unknown parameter epoch" in logged and "retrain.sh: exit 2" in logged
