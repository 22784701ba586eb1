"""The serving checks of a release run: the candidate through the code that will serve it.

Run after the notebooks, before the gate; the gate then judges what this wrote, like every other
record (``serving.json`` in the run folder):

- *parity*: the checkpoint, loaded through the serving loader with eager PyTorch, replays the
  sample of test digits evaluate.ipynb recorded, prediction for prediction;
- *runtimes*: every runtime variant that builds here is measured for this model on the whole
  evaluation split (``inference.selection``): agreement with eager, accuracy drop, speed; the
  choice for ``RUNTIME`` and the fallback chain are recorded;
- the *verification set* serving checks its runtime against on its own machine: evaluation
  digits with eager's probabilities (``inference.verification``);
- the *drift reference* serving compares its live inputs with: the drift signals of the same
  digits with the same probabilities (``monitoring.reference``, ``drift-reference.json``).

The exported runtime files of the chain, the verification set and the drift reference are listed
as artefacts; a passing release publishes them with the version.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from service.inference.verification import (
    MAX_VERIFICATION_DIGITS,
    MIN_INEXACT_SPEEDUP,
    VERIFICATION_FILE,
    RuntimeCriteria,
    VerificationSet,
)
from service.ml.records import SERVING_RECORD, EvaluationRecord, write_json
from service.monitoring.reference import DRIFT_REFERENCE_FILE, DriftReference
from service.monitoring.signals import digit_signals


def run_serving_checks(
    run_dir: str | Path,
    checkpoint: Path,
    evaluation: EvaluationRecord,
    *,
    criteria: RuntimeCriteria,
    data_dir: str | Path | None = None,
    parity_device: str = "auto",
    serving_runtime: str = "auto",
    serving_device: str = "auto",
    threads: int = 1,
    variants: list[str] | None = None,
    min_inexact_speedup: float = MIN_INEXACT_SPEEDUP,
) -> dict[str, Any]:
    """Measure, write ``<run_dir>/serving.json`` and return it. A check that cannot run records
    its error instead of raising: the gate refuses on it, with the reason. ``variants`` limits
    the runtimes measured (default: every selectable one, plus ``serving_runtime``)."""
    started = time.perf_counter()
    record: dict[str, Any] = {"parity": None, "runtimes": None, "verification_set": None,
                              "artefacts": []}
    try:
        dataset = evaluation_dataset(evaluation, data_dir=data_dir)
    except Exception as exc:  # the data evaluate.ipynb used cannot be reproduced here
        failure = {"error": f"{type(exc).__name__}: {exc}"}
        record.update(parity=failure, runtimes=failure)
        return _write(run_dir, record, started)
    try:
        record["parity"] = replay_sample(checkpoint, evaluation, dataset, device=parity_device)
    except Exception as exc:  # any failure to load or replay refuses the release
        record["parity"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        record.update(prepare_runtimes(
            run_dir, checkpoint, dataset.test_images, dataset.test_labels, criteria=criteria,
            requested=serving_runtime, device=serving_device, threads=threads, variants=variants,
            min_inexact_speedup=min_inexact_speedup,
        ))
    except Exception as exc:  # not even eager could be measured
        record["runtimes"] = {"error": f"{type(exc).__name__}: {exc}"}
    return _write(run_dir, record, started)


def _write(run_dir: str | Path, record: dict[str, Any], started: float) -> dict[str, Any]:
    record["seconds"] = round(time.perf_counter() - started, 3)
    write_json(Path(run_dir) / SERVING_RECORD, record)
    return record


def evaluation_dataset(
    evaluation: EvaluationRecord, *, data_dir: str | Path | None = None
) -> Any:
    """The evaluation data exactly as evaluate.ipynb loaded it (checked by fingerprint)."""
    from service.ml.data import load_dataset

    described, split = evaluation.dataset, evaluation.dataset.split
    dataset = load_dataset(
        described.name,
        split.get("folder") or data_dir or None,
        limit=split.get("train_limit"),
        test_limit=split.get("test_limit"),
    )
    if described.fingerprint and dataset.fingerprint() != described.fingerprint:
        raise ValueError(
            f"the gate loaded different {described.name} data than evaluate.ipynb "
            f"(fingerprint {dataset.fingerprint()[:19]} vs {described.fingerprint[:19]})"
        )
    return dataset


def replay_sample(
    checkpoint: Path, evaluation: EvaluationRecord, dataset: Any, *, device: str = "auto"
) -> dict[str, Any]:
    """Load the checkpoint as serving does (eager) and replay the notebook's recorded sample:
    {mismatches, size, max_probability_diff, probabilities_recorded}."""
    from service.inference.loader import load_runtime
    from service.ml.preprocess import normalize

    sample = evaluation.sample
    if sample.size <= 0:
        raise ValueError("evaluation.json records no sample (sample.size is 0)")
    labels = dataset.test_labels[:sample.size]
    if [int(label) for label in labels] != sample.labels:
        raise ValueError("the recorded sample labels are not the first test digits' labels")
    loaded = load_runtime(checkpoint, runtime="eager", device=device, version="candidate")
    probabilities = loaded.runtime.predict_proba(
        normalize(dataset.test_images[:sample.size], loaded.normalization)
    )
    recorded = np.asarray(sample.predictions, dtype=np.int64)
    return {
        "mismatches": int((probabilities.argmax(axis=1) != recorded).sum()),
        "size": sample.size,
        "max_probability_diff": float(
            np.abs(probabilities - np.asarray(sample.probabilities)).max()
        ) if sample.probabilities is not None else 0.0,
        "probabilities_recorded": sample.probabilities is not None,
    }


def prepare_runtimes(
    folder: str | Path, checkpoint: Path, images: np.ndarray, labels: np.ndarray, *,
    criteria: RuntimeCriteria, requested: str = "auto", device: str = "auto", threads: int = 1,
    variants: list[str] | None = None, min_inexact_speedup: float = MIN_INEXACT_SPEEDUP,
) -> dict[str, Any]:
    """The runtime table, the verification set and the drift reference for this checkpoint,
    measured on these evaluation digits; the files to publish with it are written to ``folder``
    (next to the checkpoint): {"runtimes": the card's section, "verification_set",
    "drift_reference", "artefacts": names}."""
    from service.inference.selection import select_runtime
    from service.ml.checkpoint import load_checkpoint
    from service.ml.device import resolve_device

    loaded = load_checkpoint(checkpoint, device=resolve_device(device))
    selection, eager = select_runtime(
        loaded, images, labels, requested=requested, criteria=criteria, threads=threads,
        names=variants, min_inexact_speedup=min_inexact_speedup,
    )
    keep = slice(0, MAX_VERIFICATION_DIGITS)
    weights = str(loaded.metadata["weights_sha256"])
    verification = VerificationSet(
        images[keep], labels[keep], eager[keep], weights, criteria,
    ).save(Path(folder) / VERIFICATION_FILE)
    reference = DriftReference.build(digit_signals(images, eager), eager.shape[1], weights) \
        .save(Path(folder) / DRIFT_REFERENCE_FILE)
    artefacts = [Path(variant.artifact).name for name in selection.chain
                 if (variant := selection.measured(name)) and variant.artifact]
    return {
        "runtimes": {**selection.as_dict(), "summary": selection.explain()},
        "verification_set": verification.name,
        "drift_reference": reference.name,
        "artefacts": [*artefacts, verification.name, reference.name],
    }
