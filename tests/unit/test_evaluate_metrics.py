"""Evaluation metrics on small cases worked out by hand, and the METRICS dict of the contract."""

import json
import math

import numpy as np
import pytest
import torch

from service.ml.checkpoint import load_checkpoint
from service.ml.data import load_dataset
from service.ml.evaluate import (
    EvaluateConfig,
    accuracy,
    confusion_matrix,
    evaluate,
    evaluate_checkpoint,
    expected_calibration_error,
    nll_loss,
    per_class,
    reliability,
    worst_mistakes,
    write_evaluation,
)
from service.ml.records import decode_classes, encode_classes

# Four digits, three classes: two right, two wrong.
LABELS = np.array([0, 1, 2, 2])
PROBS = np.array(
    [
        [0.90, 0.05, 0.05],  # right, confidence 0.90
        [0.20, 0.70, 0.10],  # right, confidence 0.70
        [0.60, 0.30, 0.10],  # wrong (says 0), confidence 0.60
        [0.05, 0.95, 0.00],  # wrong (says 1), confidence 0.95
    ]
)
METRIC_KEYS = {
    "checkpoint",
    "accuracy",
    "loss",
    "ece",
    "per_class",
    "confusion_matrix",
    "latency_ms",
}


def test_accuracy_and_loss_on_a_known_case():
    predictions = PROBS.argmax(axis=1)
    assert accuracy(LABELS, predictions) == 0.5
    with np.errstate(divide="ignore"):
        log_probs = np.log(PROBS)
    expected = -(math.log(0.9) + math.log(0.7) + math.log(0.1) + math.log(1e-300)) / 4
    assert nll_loss(np.maximum(log_probs, math.log(1e-300)), LABELS) == pytest.approx(expected)


def test_confusion_matrix_rows_are_true_classes_columns_predictions():
    matrix = confusion_matrix(LABELS, PROBS.argmax(axis=1), 3)
    assert matrix.tolist() == [[1, 0, 0], [0, 1, 0], [1, 1, 0]]


def test_per_class_precision_recall_support():
    matrix = confusion_matrix(LABELS, PROBS.argmax(axis=1), 3)
    rows = per_class(matrix, ["a", "b", "c"])
    assert rows == [
        {"class": "a", "precision": 0.5, "recall": 1.0, "support": 1},
        {"class": "b", "precision": 0.5, "recall": 1.0, "support": 1},
        {"class": "c", "precision": 0.0, "recall": 0.0, "support": 2},  # never predicted
    ]


def test_ece_is_the_weighted_gap_between_confidence_and_accuracy():
    # 15 bins of width 1/15: 0.60 -> bin 8, 0.70 -> bin 10, 0.90 -> bin 13, 0.95 -> bin 14.
    # Each bin holds one digit: |acc - conf| = |0 - 0.6|, |1 - 0.7|, |1 - 0.9|, |0 - 0.95|.
    assert expected_calibration_error(PROBS, LABELS) == pytest.approx((0.6 + 0.3 + 0.1 + 0.95) / 4)
    rows = reliability(PROBS, LABELS)
    assert len(rows) == 15 and sum(row["count"] for row in rows) == 4


def test_perfectly_confident_and_right_has_zero_ece():
    probs = np.eye(3)[[0, 1, 2]]
    assert expected_calibration_error(probs, np.array([0, 1, 2])) == 0.0


def test_worst_mistakes_are_the_most_confident_wrong_answers_first():
    assert worst_mistakes(PROBS, LABELS).tolist() == [3, 2]
    assert worst_mistakes(PROBS, LABELS, count=1).tolist() == [3]


def test_checkpoint_metrics_have_the_contract_fields(tiny_checkpoint, idx_data_dir):
    data = load_dataset("mnist", idx_data_dir, test_limit=50)
    result = evaluate_checkpoint(
        load_checkpoint(tiny_checkpoint), data, device=torch.device("cpu"), latency_repeats=3
    )
    metrics = result.metrics
    assert set(metrics) == METRIC_KEYS
    assert metrics["accuracy"] == pytest.approx(
        float((result.predictions == data.test_labels).mean())
    )
    assert np.array(metrics["confusion_matrix"]).sum() == 50
    assert [row["class"] for row in metrics["per_class"]] == [str(i) for i in range(10)]
    assert sum(row["support"] for row in metrics["per_class"]) == 50
    assert set(metrics["latency_ms"]) == {"batch_1", "batch_32"}
    assert all(value > 0 for value in metrics["latency_ms"].values())
    assert 0.0 <= metrics["ece"] <= 1.0
    json.dumps(metrics)  # the record is plain JSON


def test_evaluate_finds_the_dataset_recorded_in_the_checkpoint(tiny_checkpoint, tmp_path):
    config = EvaluateConfig(
        run_dir=str(tmp_path),
        checkpoint=str(tiny_checkpoint),
        champion_checkpoint=str(tiny_checkpoint),
        test_limit=40,
        sample_size=8,
        device="cpu",
    )
    result = evaluate(config, latency_repeats=3)
    path = write_evaluation(result)
    record = json.loads(path.read_text())
    assert path == tmp_path / "evaluation.json"
    assert record["dataset"]["name"] == "mnist" and record["dataset"]["test_size"] == 40
    assert set(record["candidate"]) == METRIC_KEYS
    # The champion is the same file here: same digits, same numbers.
    assert record["champion"]["accuracy"] == record["candidate"]["accuracy"]
    sample = record["sample"]
    assert sample["size"] == 8
    assert sample["labels"] == result.dataset.test_labels[:8].tolist()
    assert len(sample["predictions"]) == 8 and len(sample["probabilities"]) == 8
    assert all(len(row) == 10 and abs(sum(row) - 1) < 1e-4 for row in sample["probabilities"])
    assert sample["predictions"] == [int(np.argmax(row)) for row in sample["probabilities"]]
    # every digit's prediction of both models, for the gate's paired test, in its own section
    predictions = record["predictions"]
    assert predictions["size"] == 40
    assert decode_classes(predictions["labels"]).tolist() == result.dataset.test_labels.tolist()
    assert decode_classes(predictions["candidate"]).tolist() == (
        result.candidate.predictions.tolist())
    assert predictions["champion"] == predictions["candidate"]
    assert "predictions" not in record["candidate"]


def test_evaluate_without_champion_records_null(tiny_checkpoint, tmp_path):
    result = evaluate(
        EvaluateConfig(checkpoint=str(tiny_checkpoint), test_limit=20, device="cpu"),
        latency_repeats=1,
    )
    assert result.record["champion"] is None
    assert result.record["predictions"]["champion"] is None
    assert len(result.record["predictions"]["candidate"]) == 20


def test_class_indices_are_recorded_one_character_each():
    indices = np.array([7, 2, 1, 0, 4, 35, 10])
    assert encode_classes(indices) == "72104za"
    assert decode_classes("72104za").tolist() == indices.tolist()
    assert encode_classes(np.array([], dtype=np.int64)) == ""
    with pytest.raises(ValueError, match=r"0\.\.35"):
        encode_classes([36])
    with pytest.raises(ValueError, match="'#' is not a recorded class"):
        decode_classes("12#")


def test_a_model_for_other_classes_is_refused(tiny_checkpoint):
    data = load_dataset("mnist-5k", test_limit=20)
    data.class_names = ["a", "b"]
    with pytest.raises(ValueError, match="10 classes"):
        evaluate_checkpoint(load_checkpoint(tiny_checkpoint), data, device=torch.device("cpu"))
