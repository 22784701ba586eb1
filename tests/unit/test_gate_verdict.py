"""The gate turns a run's records and the policy into a verdict, criterion by criterion."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from support.models import fresh_checkpoint

from service.ml.checkpoint import load_checkpoint
from service.ml.data import load_dataset
from service.ml.preprocess import normalize
from service.release.checks import run_serving_checks
from service.release.gate import (
    Criteria,
    NotebookOutcome,
    Policy,
    decide,
    format_failures,
    read_records,
)

SAMPLE = 16
POLICY = Policy(criteria=Criteria(
    min_accuracy=0.9, min_class_recall=0.8, max_accuracy_drop=0.01, max_class_recall_drop=0.05,
))
CRITERIA_ORDER = [
    "notebooks_executed", "run_records", "min_accuracy", "min_class_recall",
    "no_accuracy_regression", "no_class_recall_regression", "serving_parity", "serving_runtime",
]


def metrics(accuracy: float, recalls: list[float], support: int = 10) -> dict[str, Any]:
    return {
        "checkpoint": "model.safetensors",
        "accuracy": accuracy,
        "loss": 0.1,
        "ece": 0.01,
        "per_class": [
            {"class": str(i), "precision": 0.9, "recall": r, "support": support}
            for i, r in enumerate(recalls)
        ],
        "confusion_matrix": [[0] * len(recalls) for _ in recalls],
        "latency_ms": {"batch_1": 1.0, "batch_32": 2.0},
    }


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A checkpoint plus the sample a notebook would record for it (first test digits)."""
    run_dir = tmp_path_factory.mktemp("run")
    fresh_checkpoint(run_dir / "model.safetensors", seed=0)
    dataset = load_dataset("mnist-5k", test_limit=64)
    model = load_checkpoint(run_dir / "model.safetensors").model
    with torch.inference_mode():
        probabilities = model(normalize(dataset.test_images[:SAMPLE])).exp()
    evaluation = {
        "dataset": dataset.describe(),
        "candidate": metrics(0.95, [0.9] * 10),
        "champion": None,
        "sample": {
            "size": SAMPLE,
            "labels": dataset.test_labels[:SAMPLE].tolist(),
            "predictions": probabilities.argmax(1).tolist(),
            "probabilities": probabilities.tolist(),
        },
    }
    return {"dir": run_dir, "evaluation": evaluation}


def write_run(tmp_path: Path, recorded: dict[str, Any], **changes: Any) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    weights = (recorded["dir"] / "model.safetensors").read_bytes()
    (run_dir / "model.safetensors").write_bytes(weights)
    (run_dir / "train.json").write_text(json.dumps({"checkpoint": "model.safetensors", "seed": 1}))
    evaluation = copy.deepcopy(recorded["evaluation"])
    evaluation.update(changes)
    (run_dir / "evaluation.json").write_text(json.dumps(evaluation))
    return run_dir


def gate(run_dir: Path, champion: str | None = None, failed: str | None = None,
         runtime: str = "auto", variants: tuple[str, ...] = ("eager",)):
    """The pipeline's order: the serving checks on a usable run, then the gate's verdict."""
    notebooks = [
        NotebookOutcome("train", str(run_dir / "train.ipynb"), error=failed),
        NotebookOutcome("evaluate", str(run_dir / "evaluate.ipynb"), ran=failed is None),
    ]
    records = read_records(run_dir)
    if records.usable:
        records.serving = run_serving_checks(
            run_dir, records.checkpoint, records.evaluation,
            criteria=POLICY.criteria.runtime_criteria(), parity_device="cpu",
            serving_runtime=runtime, serving_device="cpu", variants=list(variants),
        )
    return decide(POLICY, notebooks=notebooks, records=records, champion_version=champion)


def by_name(verdict) -> dict[str, Any]:
    return {criterion.name: criterion for criterion in verdict.criteria}


def test_first_release_passes_on_absolute_criteria_alone(tmp_path, recorded_run):
    verdict = gate(write_run(tmp_path, recorded_run))
    assert verdict.passed, format_failures(verdict)
    assert [c.name for c in verdict.criteria] == CRITERIA_ORDER
    regression = by_name(verdict)["no_accuracy_regression"]
    assert regression.passed and regression.measured is None
    assert "first release" in regression.detail


def test_serving_parity_replays_the_recorded_sample_through_the_serving_runtime(
    tmp_path, recorded_run
):
    parity = by_name(gate(write_run(tmp_path, recorded_run)))["serving_parity"]
    assert parity.passed
    assert parity.measured == 0
    assert f"{SAMPLE}/{SAMPLE}" in parity.detail and "load_runtime" in parity.detail


def test_release_is_refused_when_accuracy_is_below_the_minimum(tmp_path, recorded_run):
    verdict = gate(write_run(tmp_path, recorded_run, candidate=metrics(0.89, [0.9] * 10)))
    assert not verdict.passed
    assert [c.name for c in verdict.failed] == ["min_accuracy"]
    assert verdict.failed[0].measured == 0.89
    assert verdict.failed[0].required == ">= 0.9000"


def test_release_is_refused_when_one_class_recall_is_below_the_minimum(tmp_path, recorded_run):
    recalls = [0.9] * 10
    recalls[7] = 0.75
    verdict = gate(write_run(tmp_path, recorded_run, candidate=metrics(0.95, recalls)))
    failed = by_name(verdict)["min_class_recall"]
    assert not verdict.passed and not failed.passed
    assert failed.measured == 0.75
    assert "class 7 0.7500" in failed.detail


def test_classes_without_test_digits_are_not_judged_on_recall(tmp_path, recorded_run):
    candidate = metrics(0.95, [0.9] * 10)
    candidate["per_class"][3].update(recall=0.0, support=0)
    verdict = gate(write_run(tmp_path, recorded_run, candidate=candidate))
    assert by_name(verdict)["min_class_recall"].passed


def test_release_is_refused_when_accuracy_drops_beyond_the_tolerance_against_the_champion(
    tmp_path, recorded_run
):
    run = write_run(tmp_path, recorded_run, candidate=metrics(0.95, [0.9] * 10),
                    champion=metrics(0.97, [0.9] * 10))
    verdict = gate(run, champion="v3")
    assert [c.name for c in verdict.failed] == ["no_accuracy_regression"]
    failed = verdict.failed[0]
    assert failed.measured == pytest.approx(0.02)
    assert failed.required == "drop <= 0.0100"
    assert "champion v3 0.9700" in failed.detail


def test_a_drop_within_the_tolerance_is_released(tmp_path, recorded_run):
    run = write_run(tmp_path, recorded_run, candidate=metrics(0.95, [0.9] * 10),
                    champion=metrics(0.955, [0.92] * 10))
    verdict = gate(run, champion="v3")
    assert verdict.passed, format_failures(verdict)
    assert by_name(verdict)["no_accuracy_regression"].measured == pytest.approx(0.005)


def test_release_is_refused_when_one_class_regresses_against_the_champion(tmp_path, recorded_run):
    candidate_recalls = [0.9] * 10
    candidate_recalls[2] = 0.84
    run = write_run(tmp_path, recorded_run, candidate=metrics(0.96, candidate_recalls),
                    champion=metrics(0.95, [0.9] * 10))
    verdict = gate(run, champion="v1")
    assert [c.name for c in verdict.failed] == ["no_class_recall_regression"]
    assert verdict.failed[0].measured == pytest.approx(0.06)
    assert "class 2 0.8400 vs 0.9000" in verdict.failed[0].detail


def test_regression_is_refused_when_the_champion_was_not_evaluated_in_the_run(
    tmp_path, recorded_run
):
    verdict = gate(write_run(tmp_path, recorded_run), champion="v2")
    failed = {c.name for c in verdict.failed}
    assert failed == {"no_accuracy_regression", "no_class_recall_regression"}
    assert "holds no champion metrics" in by_name(verdict)["no_accuracy_regression"].detail


def test_a_failing_notebook_refuses_the_release_and_nothing_is_measured(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    verdict = gate(run_dir, failed="cell 3 raised DataError: unknown dataset 'nope'")
    assert not verdict.passed
    executed = by_name(verdict)["notebooks_executed"]
    assert not executed.passed
    assert "DataError" in executed.detail and "train.ipynb" in executed.detail
    assert "evaluate: not run" in executed.detail
    assert all(not c.passed for c in verdict.criteria)
    assert by_name(verdict)["min_accuracy"].detail.startswith("not measured")


def test_serving_parity_fails_when_the_notebook_recorded_other_predictions(tmp_path, recorded_run):
    sample = copy.deepcopy(recorded_run["evaluation"]["sample"])
    sample["predictions"][5] = (sample["predictions"][5] + 1) % 10
    verdict = gate(write_run(tmp_path, recorded_run, sample=sample))
    parity = by_name(verdict)["serving_parity"]
    assert [c.name for c in verdict.failed] == ["serving_parity"]
    assert parity.measured == 1
    assert f"{SAMPLE - 1}/{SAMPLE}" in parity.detail


def test_serving_parity_fails_when_the_sample_is_not_the_first_test_digits(tmp_path, recorded_run):
    sample = copy.deepcopy(recorded_run["evaluation"]["sample"])
    sample["labels"] = sample["labels"][::-1]
    parity = by_name(gate(write_run(tmp_path, recorded_run, sample=sample)))["serving_parity"]
    assert not parity.passed
    assert "first test digits" in parity.detail


def test_serving_parity_fails_when_the_checkpoint_cannot_be_loaded(tmp_path, recorded_run):
    run_dir = write_run(tmp_path, recorded_run)
    checkpoint = run_dir / "model.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:-1000])
    parity = by_name(gate(run_dir))["serving_parity"]
    assert not parity.passed
    assert "CheckpointError" in parity.detail


def test_missing_records_refuse_the_release(tmp_path, recorded_run):
    run_dir = write_run(tmp_path, recorded_run)
    (run_dir / "evaluation.json").unlink()
    verdict = gate(run_dir)
    records = by_name(verdict)["run_records"]
    assert not records.passed and "evaluation.json missing" in records.measured
    assert by_name(verdict)["min_accuracy"].measured is None


def test_failures_are_printed_with_measured_and_required_values(tmp_path, recorded_run):
    verdict = gate(write_run(tmp_path, recorded_run, candidate=metrics(0.5, [0.5] * 10)))
    printed = format_failures(verdict)
    assert "FAILED min_accuracy: measured 0.5, required >= 0.9000" in printed
    assert "FAILED min_class_recall: measured 0.5, required >= 0.8000" in printed
    assert "serving_parity" not in printed


def test_with_runtime_auto_the_fastest_variant_that_agrees_with_eager_is_recorded(
    tmp_path, recorded_run
):
    verdict = gate(write_run(tmp_path, recorded_run), variants=("eager", "onnx"))
    runtime = by_name(verdict)["serving_runtime"]
    assert runtime.passed and runtime.measured in {"onnx", "eager"}
    assert runtime.required.startswith("RUNTIME=auto: the fastest variant with agreement >=")
    assert "(RUNTIME=auto): " in runtime.detail and "64 evaluation digits" in runtime.detail


def test_a_named_runtime_that_misses_refuses_the_release_and_names_what_would_pass(
    tmp_path, recorded_run
):
    strict = POLICY.model_copy(update={"criteria": POLICY.criteria.model_copy(
        update={"max_runtime_probability_diff": 0.0})})
    run_dir = write_run(tmp_path, recorded_run)
    records = read_records(run_dir)
    records.serving = run_serving_checks(
        run_dir, records.checkpoint, records.evaluation,
        criteria=strict.criteria.runtime_criteria(), serving_runtime="onnx",
        serving_device="cpu", variants=["eager", "onnx"],
    )
    verdict = decide(strict, notebooks=[NotebookOutcome("train", "t"),
                                        NotebookOutcome("evaluate", "e")],
                     records=records, champion_version=None)
    assert [c.name for c in verdict.failed] == ["serving_runtime"]
    failed = verdict.failed[0]
    assert failed.measured == "onnx misses"
    assert "RUNTIME=onnx misses on this machine (max |dp|" in failed.detail
    assert "these pass: eager. Set RUNTIME=auto (serves eager)" in failed.detail


def test_runtimes_measured_against_other_bars_than_the_policy_refuse_the_release(
    tmp_path, recorded_run
):
    run_dir = write_run(tmp_path, recorded_run)
    gate(run_dir)
    records = read_records(run_dir)
    records.serving["runtimes"]["criteria"]["min_agreement"] = 0.5
    verdict = decide(POLICY, notebooks=[NotebookOutcome("train", "t"),
                                        NotebookOutcome("evaluate", "e")],
                     records=records, champion_version=None)
    assert [c.name for c in verdict.failed] == ["serving_runtime"]
    assert "measured against other bars" in verdict.failed[0].detail


def test_a_run_whose_serving_checks_did_not_run_is_refused(tmp_path, recorded_run):
    verdict = decide(POLICY, notebooks=[NotebookOutcome("train", "t"),
                                        NotebookOutcome("evaluate", "e")],
                     records=read_records(write_run(tmp_path, recorded_run)),
                     champion_version=None)
    assert {c.name for c in verdict.failed} == {"serving_parity", "serving_runtime"}
    assert "serving.json missing" in verdict.failed[0].detail
