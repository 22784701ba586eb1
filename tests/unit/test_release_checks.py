"""The serving checks of a release run write what the gate judges and what a version publishes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from service.inference.verification import VERIFICATION_FILE, RuntimeCriteria, VerificationSet
from service.ml.checkpoint import load_checkpoint
from service.ml.evaluate import EvaluateConfig, evaluate
from service.ml.records import EvaluationRecord
from service.monitoring.reference import DRIFT_REFERENCE_FILE, DriftReference
from service.monitoring.signals import digit_signals
from service.release.checks import SERVING_RECORD, run_serving_checks

CRITERIA = RuntimeCriteria(min_agreement=0.9, max_accuracy_drop=0.05)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_checkpoint):
    """A run folder as the notebooks leave it: checkpoint and evaluation record."""
    run_dir = tmp_path_factory.mktemp("run")
    checkpoint = shutil.copy(tiny_checkpoint, run_dir / "model.safetensors")
    record = evaluate(EvaluateConfig(run_dir=str(run_dir)), latency_repeats=1).record
    serving = run_serving_checks(run_dir, checkpoint, EvaluationRecord.model_validate(record),
                                 criteria=CRITERIA, parity_device="cpu", serving_device="cpu",
                                 variants=["eager", "onnx"])
    return run_dir, record, serving


def test_the_checks_are_written_next_to_the_notebooks_records(run):
    run_dir, _, serving = run
    assert json.loads((run_dir / SERVING_RECORD).read_text()) == serving
    assert serving["parity"]["mismatches"] == 0 and serving["parity"]["size"] > 0
    assert serving["runtimes"]["chosen"] == serving["runtimes"]["chain"][0]
    assert serving["runtimes"]["summary"].startswith(serving["runtimes"]["chosen"])


def test_the_verification_set_holds_the_evaluation_digits_and_eager_answers_for_these_weights(run):
    run_dir, record, _ = run
    checkpoint = load_checkpoint(run_dir / "model.safetensors")
    verification = VerificationSet.load(run_dir / VERIFICATION_FILE)
    assert verification.weights_sha256 == checkpoint.metadata["weights_sha256"]
    assert verification.criteria == CRITERIA
    assert len(verification.digits) == record["dataset"]["test_size"]
    predictions = verification.probabilities.argmax(axis=1)
    assert np.mean(predictions == verification.labels) == pytest.approx(
        record["candidate"]["accuracy"])


def test_the_drift_reference_holds_the_evaluation_digits_signals_for_these_weights(run):
    run_dir, record, serving = run
    checkpoint = load_checkpoint(run_dir / "model.safetensors")
    verification = VerificationSet.load(run_dir / VERIFICATION_FILE)
    reference = DriftReference.load(run_dir / serving["drift_reference"])
    assert reference.weights_sha256 == checkpoint.metadata["weights_sha256"]
    assert reference.digits == record["dataset"]["test_size"] == len(verification.digits)
    # the same digits with the same eager probabilities as the verification set
    signals = digit_signals(verification.digits, verification.probabilities)
    expected = DriftReference.build(signals, 10, reference.weights_sha256)
    assert reference.class_counts.tolist() == expected.class_counts.tolist()
    for name, recorded in expected.continuous.items():
        assert np.array_equal(reference.continuous[name].values, recorded.values), name


def test_the_artefacts_to_publish_are_the_chains_exported_files_and_the_serving_references(run):
    run_dir, _, serving = run
    exported = [name for name in serving["artefacts"] if name.endswith(".onnx")]
    assert bool(exported) == ("onnx" in serving["runtimes"]["chain"])
    assert serving["artefacts"][-2:] == [VERIFICATION_FILE, DRIFT_REFERENCE_FILE]
    assert all((run_dir / name).is_file() for name in serving["artefacts"])


def test_data_that_cannot_be_reproduced_is_recorded_as_the_reason_not_raised(tmp_path, run):
    run_dir, record, _ = run
    changed = EvaluationRecord.model_validate(json.loads(json.dumps(record)))
    changed.dataset.fingerprint = "sha256:" + "0" * 64
    serving = run_serving_checks(tmp_path, run_dir / "model.safetensors", changed,
                                 criteria=CRITERIA, variants=["eager"])
    assert "different mnist data than evaluate.ipynb" in serving["parity"]["error"]
    assert serving["runtimes"] == serving["parity"]
