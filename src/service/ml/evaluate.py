"""Evaluation: accuracy, loss, per-class precision/recall, confusion matrix, calibration (ECE),
latency and the worst mistakes, and the evaluation record the release gate reads.

Every input goes through ``service.ml.preprocess.normalize`` and every checkpoint through
``service.ml.checkpoint.load_checkpoint``: the same path training and serving use.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.ml.checkpoint import LoadedCheckpoint, load_checkpoint
from service.ml.data import DigitDataset, load_dataset
from service.ml.device import resolve_device
from service.ml.preprocess import Normalization, normalize
from service.ml.records import (
    CHECKPOINT_FILE,
    CLASS_ENCODING,
    EVALUATION_RECORD,
    EvaluationRecord,
    encode_classes,
    write_json,
)
from service.provenance import git_state

ECE_BINS = 15
LATENCY_BATCHES = (1, 32)
LATENCY_REPEATS = 30


# --- running the model ----------------------------------------------------------------------


@torch.inference_mode()
def log_probabilities(
    model: torch.nn.Module, inputs: torch.Tensor, *, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """Log-probabilities [N,C] (float32, CPU) for normalised inputs [N,1,28,28], in eval mode."""
    was_training = model.training
    model.eval()
    outputs = [
        model(inputs[start : start + batch_size].to(device, non_blocking=True)).float().cpu()
        for start in range(0, len(inputs), batch_size)
    ]
    model.train(was_training)
    if not outputs:
        return torch.empty(0, 0)
    return torch.cat(outputs)


def predict(
    model: torch.nn.Module,
    images: np.ndarray | torch.Tensor,
    *,
    normalization: Normalization = Normalization(),
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> np.ndarray:
    """uint8 digits [N,28,28] -> log-probabilities [N,C] as float64 numpy."""
    inputs = normalize(images, normalization)
    logp = log_probabilities(model, inputs, device=torch.device(device), batch_size=batch_size)
    return logp.double().numpy()


# --- metrics on predictions -----------------------------------------------------------------


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    return float(np.mean(np.asarray(labels) == np.asarray(predictions))) if len(labels) else 0.0


def nll_loss(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class."""
    if not len(labels):
        return 0.0
    return float(-np.mean(log_probs[np.arange(len(labels)), labels]))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """[C,C] counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def per_class(matrix: np.ndarray, class_names: list[str]) -> list[dict[str, Any]]:
    """Precision, recall and support of each class from a confusion matrix (0 when undefined)."""
    true_positive = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    rows = []
    for index, name in enumerate(class_names):
        rows.append(
            {
                "class": name,
                "precision": float(true_positive[index] / predicted[index])
                if predicted[index]
                else 0.0,
                "recall": float(true_positive[index] / support[index]) if support[index] else 0.0,
                "support": int(support[index]),
            }
        )
    return rows


def reliability(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> list[dict[str, float]]:
    """Equal-width confidence bins: mean confidence, accuracy and count of each (for plots)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 goes to the first bin.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        rows.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "confidence": float(confidence[members].mean()) if count else 0.0,
                "accuracy": float(correct[members].mean()) if count else 0.0,
                "count": count,
            }
        )
    return rows


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over ``bins`` bins."""
    total = len(labels)
    if not total:
        return 0.0
    return float(
        sum(
            row["count"] * abs(row["accuracy"] - row["confidence"])
            for row in reliability(probabilities, labels, bins)
        )
        / total
    )


def worst_mistakes(probabilities: np.ndarray, labels: np.ndarray, count: int = 16) -> np.ndarray:
    """Indices of wrong predictions, most confident first."""
    predictions = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predictions != labels)
    confidence = probabilities[wrong, predictions[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:count]


def measure_latency(
    model: torch.nn.Module,
    images: np.ndarray,
    *,
    normalization: Normalization = Normalization(),
    device: torch.device | str = "cpu",
    batch_sizes: tuple[int, ...] = LATENCY_BATCHES,
    repeats: int = LATENCY_REPEATS,
    warmup: int = 3,
) -> dict[str, float]:
    """Median milliseconds for preprocess + forward of one batch, per batch size."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    results: dict[str, float] = {}
    for size in batch_sizes:
        batch = (
            np.resize(images, (size, *images.shape[1:])) if len(images) < size else images[:size]
        )
        timings = []
        for attempt in range(warmup + repeats):
            start = time.perf_counter()
            with torch.inference_mode():
                model(normalize(batch, normalization).to(device)).cpu()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if attempt >= warmup:
                timings.append((time.perf_counter() - start) * 1000.0)
        results[f"batch_{size}"] = float(statistics.median(timings))
    model.train(was_training)
    return results


# --- one checkpoint on one dataset ----------------------------------------------------------


@dataclass
class CheckpointEvaluation:
    """Metrics of one checkpoint plus the raw outputs the notebook plots."""

    checkpoint: LoadedCheckpoint
    log_probs: np.ndarray
    labels: np.ndarray
    metrics: dict[str, Any]

    @property
    def probabilities(self) -> np.ndarray:
        return np.exp(self.log_probs)

    @property
    def predictions(self) -> np.ndarray:
        return self.log_probs.argmax(axis=1)


def evaluate_checkpoint(
    checkpoint: LoadedCheckpoint,
    dataset: DigitDataset,
    *,
    device: torch.device,
    batch_size: int = 256,
    latency_repeats: int = LATENCY_REPEATS,
) -> CheckpointEvaluation:
    """The METRICS dict of the evaluation record for one loaded checkpoint."""
    classes = checkpoint.class_names
    if len(classes) != len(dataset.class_names):
        raise ValueError(
            f"{checkpoint.path} predicts {len(classes)} classes but dataset {dataset.name!r} has "
            f"{len(dataset.class_names)}; evaluate it on the dataset it was trained for"
        )
    log_probs = predict(
        checkpoint.model,
        dataset.test_images,
        normalization=checkpoint.normalization,
        device=device,
        batch_size=batch_size,
    )
    labels = dataset.test_labels
    probabilities = np.exp(log_probs)
    predictions = log_probs.argmax(axis=1)
    matrix = confusion_matrix(labels, predictions, len(classes))
    metrics: dict[str, Any] = {
        "checkpoint": str(checkpoint.path),
        "accuracy": accuracy(labels, predictions),
        "loss": nll_loss(log_probs, labels),
        "ece": expected_calibration_error(probabilities, labels),
        "per_class": per_class(matrix, classes),
        "confusion_matrix": matrix.tolist(),
        "latency_ms": measure_latency(
            checkpoint.model,
            dataset.test_images,
            normalization=checkpoint.normalization,
            device=device,
            repeats=latency_repeats,
        ),
    }
    return CheckpointEvaluation(checkpoint, log_probs, labels, metrics)


# --- the evaluation notebook's work, as one call --------------------------------------------


@dataclass
class EvaluateConfig:
    """The parameters of notebooks/evaluate.ipynb (same names, same defaults)."""

    run_dir: str = "runs/notebook"
    checkpoint: str = ""  # "" = <run_dir>/model.safetensors
    champion_checkpoint: str = ""
    dataset: str = ""  # "" = the dataset recorded in the checkpoint
    data_dir: str = ""
    test_limit: int = 0  # 0 = the whole test split
    device: str = "auto"
    batch_size: int = 256
    sample_size: int = 32

    def __post_init__(self) -> None:
        if self.test_limit < 0:
            raise ValueError(
                f"test_limit must be >= 0 (0 = whole test split), got {self.test_limit}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.sample_size < 0:
            raise ValueError(f"sample_size must be >= 0, got {self.sample_size}")

    @property
    def checkpoint_path(self) -> Path:
        return (
            Path(self.checkpoint) if self.checkpoint else Path(self.run_dir) / CHECKPOINT_FILE
        )


@dataclass
class EvaluationResult:
    config: EvaluateConfig
    dataset: DigitDataset
    device: torch.device
    candidate: CheckpointEvaluation
    champion: CheckpointEvaluation | None
    record: dict[str, Any] = field(default_factory=dict)


def _dataset_for(config: EvaluateConfig, metadata: dict[str, Any]) -> DigitDataset:
    recorded = metadata.get("dataset") or {}
    recorded_params = metadata.get("params") or {}
    name = config.dataset or recorded.get("name")
    if not name:
        raise ValueError(
            "the checkpoint records no dataset; pass dataset='mnist-5k' (or mnist, fashion-mnist)"
        )
    data_dir = config.data_dir
    if not data_dir and name == recorded.get("name"):
        data_dir = recorded_params.get("data_dir") or ""
    return load_dataset(name, data_dir or None, test_limit=config.test_limit or None)


def evaluate(config: EvaluateConfig, *, latency_repeats: int = LATENCY_REPEATS) -> EvaluationResult:
    """Evaluate the candidate (and the champion, if given) on the same test digits."""
    device = resolve_device(config.device)
    candidate_ckpt = load_checkpoint(config.checkpoint_path, device=device)
    dataset = _dataset_for(config, candidate_ckpt.metadata)
    settings = {
        "device": device,
        "batch_size": config.batch_size,
        "latency_repeats": latency_repeats,
    }
    candidate = evaluate_checkpoint(candidate_ckpt, dataset, **settings)
    champion = None
    if config.champion_checkpoint:
        champion_ckpt = load_checkpoint(config.champion_checkpoint, device=device)
        champion = evaluate_checkpoint(champion_ckpt, dataset, **settings)
    size = min(config.sample_size, len(dataset.test_labels))
    record = {
        "dataset": dataset.describe(),
        "candidate": candidate.metrics,
        "champion": champion.metrics if champion else None,
        # Every digit's prediction, for the gate's paired test against the champion. A section
        # of its own: the metrics dicts above are copied into run.json and the model card.
        "predictions": {
            "encoding": CLASS_ENCODING,
            "size": len(dataset.test_labels),
            "labels": encode_classes(dataset.test_labels),
            "candidate": encode_classes(candidate.predictions),
            "champion": encode_classes(champion.predictions) if champion else None,
        },
        "sample": {
            "size": size,
            "labels": dataset.test_labels[:size].tolist(),
            "predictions": candidate.predictions[:size].tolist(),
            "probabilities": candidate.probabilities[:size].tolist(),
        },
        "params": asdict(config),
        "device": str(device),
        "git": git_state(Path(__file__).parent),
    }
    return EvaluationResult(config, dataset, device, candidate, champion, record)


def write_evaluation(result: EvaluationResult, run_dir: str | Path | None = None) -> Path:
    """Write ``<run_dir>/evaluation.json`` (checked against the record the gate reads first)."""
    EvaluationRecord.model_validate(result.record)
    return write_json(Path(run_dir or result.config.run_dir) / EVALUATION_RECORD, result.record)
