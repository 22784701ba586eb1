"""Run records: the files a run folder holds, their typed shape, written atomically.

One module names every file of a run (``runs/<id>/``) and says what the records in them hold,
for those who write them (the notebooks through ``service.ml``, the serving checks, the
pipeline) and those who read them (the gate, the pipeline's lineage, the model card). The
typed models list the fields readers rely on; a record may carry more (``extra="allow"``),
and a record that lacks one of them is refused with the field's path (``read_record``).
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

CHECKPOINT_FILE = "model.safetensors"  # weights + metadata (service.ml.checkpoint)
TRAIN_RECORD = "train.json"  # train.ipynb: parameters, seed, data, metrics per epoch
EVALUATION_RECORD = "evaluation.json"  # evaluate.ipynb: candidate (and champion) metrics
SERVING_RECORD = "serving.json"  # the release's serving checks (service.release.checks)
RUN_RECORD = "run.json"  # the whole release run: lineage, timings and the gate's verdict


class RecordError(ValueError):
    """A record file is missing, not JSON, or lacks a field its readers need."""


class Record(BaseModel):
    """A JSON record: the fields its readers rely on; any others are kept as they are."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ClassMetrics(Record):
    name: str = Field(alias="class")
    precision: float
    recall: float
    support: int


class ModelMetrics(Record):
    """One checkpoint's metrics on the evaluation split (service.ml.evaluate)."""

    checkpoint: str
    accuracy: float
    per_class: list[ClassMetrics]

    def recalls(self) -> dict[str, float]:
        """Class -> recall, for classes that have test examples (recall is undefined without)."""
        return {row.name: row.recall for row in self.per_class if row.support > 0}


class DatasetDescription(Record):
    name: str
    fingerprint: str | None = None
    test_size: int | None = None
    class_names: list[str] | None = None
    split: dict[str, Any] = Field(default_factory=dict)


class RecordedSample(Record):
    """The first test digits' predictions, replayed by the serving checks."""

    size: int
    labels: list[int]
    predictions: list[int]
    probabilities: list[list[float]] | None = None


class RecordedPredictions(Record):
    """Every digit's label and predicted class, ``encode_classes``-encoded, for the paired test."""

    labels: str
    candidate: str
    champion: str | None = None


class EvaluationRecord(Record):
    dataset: DatasetDescription
    candidate: ModelMetrics
    champion: ModelMetrics | None = None
    sample: RecordedSample
    predictions: RecordedPredictions | None = None


class TrainRecord(Record):
    checkpoint: str = CHECKPOINT_FILE
    seed: int | None = None
    dataset: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None


R = TypeVar("R", bound=Record)


def read_record(path: str | Path, model: type[R]) -> R:
    """The record at ``path`` as ``model``; RecordError says which file and field is wrong."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"{path.name} missing") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path.name} unreadable ({exc})") from exc
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                             for error in exc.errors()[:3])
        raise RecordError(f"{path.name} lacks what the gate reads ({problems})") from None


def _to_json(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json(path: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` to ``path`` (temp file then rename, so readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(record, indent=2, default=_to_json) + "\n")
    os.replace(temporary, path)
    return path


# One character per digit keeps a whole evaluation split's labels and predictions to one short
# line each in evaluation.json (10 KB for mnist's 10,000 digits) instead of an indented line
# per digit; for ten classes the characters are the class indices themselves.
CLASS_ALPHABET = string.digits + string.ascii_lowercase
CLASS_ENCODING = "one character per digit, in test-split order: the class index (0-9, then a-z)"


def encode_classes(indices: Any) -> str:
    """Class indices (0 to 35) -> a string of one character each."""
    values = np.asarray(indices, dtype=np.int64).ravel()
    if values.size and (values.min() < 0 or values.max() >= len(CLASS_ALPHABET)):
        raise ValueError(
            f"class indices must lie in 0..{len(CLASS_ALPHABET) - 1} to be recorded one "
            f"character each, got {values.min()}..{values.max()}"
        )
    return "".join(CLASS_ALPHABET[value] for value in values.tolist())


def decode_classes(text: str) -> np.ndarray:
    """The inverse of ``encode_classes``; an unknown character is a ValueError that names it."""
    positions = {character: index for index, character in enumerate(CLASS_ALPHABET)}
    try:
        return np.array([positions[character] for character in text], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"{exc.args[0]!r} is not a recorded class ({CLASS_ENCODING})") from None
