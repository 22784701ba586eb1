"""The gate turns a run's records and the policy into a verdict, criterion by criterion."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from support.models import fresh_checkpoint

from service.ml.checkpoint import load_checkpoint
from service.ml.data import load_dataset
from service.ml.evaluate import accuracy, confusion_matrix, per_class
from service.ml.preprocess import normalize
from service.ml.records import encode_classes
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
    min_accuracy=0.9, min_class_recall=0.8, regression_alpha=0.01, accuracy_drop_bound=0.015,
    class_recall_drop_bound=0.08,
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


def paired(
    changes: dict[int, tuple[int, int]], support: dict[int, int] | None = None,
    both_wrong: int = 2,
) -> dict[str, Any]:
    """evaluation.json's champion, candidate and predictions for two models that differ on
    the digits given: class -> (b, c), b digits the champion alone gets right and c digits the
    candidate alone gets right, over ``support`` digits a class (100 by default; 10 classes)."""
    sizes = {label: (support or {}).get(label, 100) for label in range(10)}
    labels = np.concatenate([np.full(size, label) for label, size in sizes.items()])
    candidate, champion = labels.copy(), labels.copy()
    start = 0
    for label, size in sizes.items():
        b, c = changes.get(label, (0, 0))
        wrong = (label + 1) % 10
        candidate[start : start + b] = wrong
        champion[start + b : start + b + c] = wrong
        candidate[start + b + c : start + b + c + both_wrong] = wrong
        champion[start + b + c : start + b + c + both_wrong] = wrong
        start += size

    def scored(predictions: np.ndarray) -> dict[str, Any]:
        matrix = confusion_matrix(labels, predictions, 10)
        return {**metrics(accuracy(labels, predictions), [0.9] * 10),
                "per_class": per_class(matrix, [str(i) for i in range(10)])}

    return {
        "candidate": scored(candidate),
        "champion": scored(champion),
        "predictions": {"size": len(labels), "labels": encode_classes(labels),
                        "candidate": encode_classes(candidate),
                        "champion": encode_classes(champion)},
    }


def spread(total_b: int, total_c: int) -> dict[int, tuple[int, int]]:
    """b and c dealt out over the ten classes as evenly as they go."""
    return {label: (total_b // 10 + (label < total_b % 10), total_c // 10 + (label < total_c % 10))
            for label in range(10)}


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


def test_a_seed_noise_sized_difference_against_the_champion_is_released(tmp_path, recorded_run):
    # reseeding alone moved accuracy by 0.007 on 1000 digits: 16 digits lost, 9 won
    run = write_run(tmp_path, recorded_run, **paired(spread(16, 9)))
    verdict = gate(run, champion="v3")
    assert verdict.passed, format_failures(verdict)
    overall = by_name(verdict)["no_accuracy_regression"]
    assert overall.measured == "drop 0.0070, p 0.115"
    assert "b 16 champion right & candidate wrong, c 9 candidate right & champion wrong" in (
        overall.detail)
    assert "on 1000 digits" in overall.detail and "champion v3" in overall.detail


def test_identical_predictions_show_no_drop(tmp_path, recorded_run):
    verdict = gate(write_run(tmp_path, recorded_run, **paired({})), champion="v3")
    assert by_name(verdict)["no_accuracy_regression"].measured == "drop 0.0000, p 1"
    assert by_name(verdict)["no_class_recall_regression"].passed


def test_a_significantly_worse_candidate_is_refused_with_its_counts_and_p_value(
    tmp_path, recorded_run
):
    # 14 digits lost and 1 won: a 1.3-point drop, inside the bound, but p = 16 / 2**15
    run = write_run(tmp_path, recorded_run, **paired(spread(14, 1)))
    verdict = gate(run, champion="v3")
    assert [c.name for c in verdict.failed] == ["no_accuracy_regression"]
    failed = verdict.failed[0]
    assert failed.measured == "drop 0.0130, p 0.000488"
    assert failed.required == "not significantly worse (one-sided p > 0.01) and drop <= 0.0150"
    assert "McNemar exact on 1000 digits: b 14" in failed.detail
    assert "c 1 candidate right" in failed.detail
    assert failed.detail.endswith("refused: significantly worse (p <= 0.01)")
    printed = format_failures(verdict)
    assert ("FAILED no_accuracy_regression: measured drop 0.0130, p 0.000488, required not "
            "significantly worse") in printed
    assert "b 14" in printed and "c 1 " in printed


def test_a_drop_beyond_the_practical_bound_is_refused_even_when_not_significant(
    tmp_path, recorded_run
):
    # 58 lost, 42 won: p 0.067 is no proof, but 1.6 points is more than the policy ships
    run = write_run(tmp_path, recorded_run, **paired(spread(58, 42)))
    verdict = gate(run, champion="v3")
    assert [c.name for c in verdict.failed] == ["no_accuracy_regression"]
    failed = verdict.failed[0]
    assert failed.measured == "drop 0.0160, p 0.0666"
    assert failed.detail.endswith("refused: drop 0.0160 beyond the bound 0.0150")


def test_one_class_significantly_worse_is_refused_after_the_correction_across_classes(
    tmp_path, recorded_run
):
    # class 3 (300 digits) loses 20 and wins 2: recall drop 0.06 is inside the bound, but
    # p = 254 / 2**22, times 10 classes after Holm, is still far below alpha; the other
    # classes win digits back, so overall the candidate is not worse
    changes = {label: (0, 2) for label in range(10)}
    changes[3] = (20, 2)
    run = write_run(tmp_path, recorded_run, **paired(changes, support={3: 300}))
    verdict = gate(run, champion="v1")
    assert [c.name for c in verdict.failed] == ["no_class_recall_regression"]
    failed = verdict.failed[0]
    assert failed.measured == "class 3: drop 0.0600, Holm p 0.000606"
    assert ("class 3 (b 20, c 2 of 300 digits, p 6.06e-05, Holm p 0.000606): significantly "
            "worse (Holm p <= 0.01)") in failed.detail
    assert "Holm over 10 classes, champion v1" in failed.detail
    assert failed.required == ("per class: not significantly worse (Holm-adjusted one-sided p > "
                               "0.01) and recall drop <= 0.0800")


def test_a_class_only_significant_before_the_correction_is_released(tmp_path, recorded_run):
    # 7 of 100 digits lost, none won: p = 2**-7 < 0.01 alone, but 0.078 across ten classes
    run = write_run(tmp_path, recorded_run, **paired({5: (7, 0), 6: (0, 3)}))
    verdict = gate(run, champion="v1")
    assert verdict.passed, format_failures(verdict)
    per_class = by_name(verdict)["no_class_recall_regression"]
    assert per_class.measured == "class 5: drop 0.0700, Holm p 0.0781"
    assert "no class significantly worse (smallest Holm p 0.0781, class 5)" in per_class.detail


def test_a_class_recall_drop_beyond_the_bound_is_refused(tmp_path, recorded_run):
    # class 2 (40 digits) loses 4: recall drop 0.10, p 1/16 is no proof on so few digits
    run = write_run(tmp_path, recorded_run, **paired({2: (4, 0)}, support={2: 40}))
    verdict = gate(run, champion="v1")
    assert [c.name for c in verdict.failed] == ["no_class_recall_regression"]
    assert verdict.failed[0].measured == "class 2: drop 0.1000, Holm p 0.625"
    assert "drop 0.1000 beyond the bound 0.0800" in verdict.failed[0].detail


def test_a_model_worse_in_every_class_names_the_three_surest_and_counts_the_rest(
    tmp_path, recorded_run
):
    changes = {label: (40 + label, 0) for label in range(10)}
    run = write_run(tmp_path, recorded_run, **paired(changes))
    per_class = by_name(gate(run, champion="v1"))["no_class_recall_regression"]
    assert not per_class.passed
    assert per_class.measured.startswith("class 9: drop 0.4900")
    assert per_class.detail.count("(b ") == 3
    assert "class 9 (b 49, c 0 of 100 digits" in per_class.detail
    assert "; and 7 more classes; Holm over 10 classes" in per_class.detail


def test_regression_is_refused_when_the_champion_was_not_evaluated_in_the_run(
    tmp_path, recorded_run
):
    verdict = gate(write_run(tmp_path, recorded_run), champion="v2")
    failed = {c.name for c in verdict.failed}
    assert failed == {"no_accuracy_regression", "no_class_recall_regression"}
    assert "holds no champion metrics" in by_name(verdict)["no_accuracy_regression"].detail


def test_regression_is_refused_when_the_per_digit_predictions_were_not_recorded(
    tmp_path, recorded_run
):
    recorded = paired(spread(0, 0))
    recorded["predictions"]["champion"] = None
    verdict = gate(write_run(tmp_path, recorded_run, **recorded), champion="v2")
    assert {c.name for c in verdict.failed} == {"no_accuracy_regression",
                                                 "no_class_recall_regression"}
    detail = by_name(verdict)["no_class_recall_regression"].detail
    assert "no per-digit predictions" in detail and "re-run evaluate.ipynb" in detail


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
    assert runtime.required.startswith("RUNTIME=auto: the fastest variant (an inexact one only "
                                       "at 1.25x an exact one) with agreement >=")
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


def test_runtimes_ranked_with_another_speedup_for_inexact_variants_refuse_the_release(
    tmp_path, recorded_run
):
    run_dir = write_run(tmp_path, recorded_run)
    gate(run_dir)
    records = read_records(run_dir)
    records.serving["runtimes"]["min_inexact_speedup"] = 1.0
    verdict = decide(POLICY, notebooks=[NotebookOutcome("train", "t"),
                                        NotebookOutcome("evaluate", "e")],
                     records=records, champion_version=None)
    assert [c.name for c in verdict.failed] == ["serving_runtime"]
    assert verdict.failed[0].detail == ("ranked with min_inexact_runtime_speedup 1.0, not the "
                                        "policy's 1.25")


def test_a_run_whose_serving_checks_did_not_run_is_refused(tmp_path, recorded_run):
    verdict = decide(POLICY, notebooks=[NotebookOutcome("train", "t"),
                                        NotebookOutcome("evaluate", "e")],
                     records=read_records(write_run(tmp_path, recorded_run)),
                     champion_version=None)
    assert {c.name for c in verdict.failed} == {"serving_parity", "serving_runtime"}
    assert "serving.json missing" in verdict.failed[0].detail
