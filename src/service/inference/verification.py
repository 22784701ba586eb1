"""Does a runtime variant answer like eager PyTorch? Measured at release, checked where it runs.

int8 kernels differ between CPUs (VNNI on some Intel parts, AVX2 on AMD, NEON on ARM), so an
agreement measured on the release machine does not carry over to the serving one. The release
therefore publishes a *verification set* with each version: evaluation digits, their labels and
the probabilities eager PyTorch gave for them at release, with the policy's bars. A serving
process runs the variant it built over those digits before it takes traffic and compares.

``compare`` is the one definition of "agrees" used by both: share of equal predictions,
accuracy drop and the largest probability difference, judged against ``RuntimeCriteria``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from service.ml.preprocess import Normalization, normalize_array
from service.settings import Settings

VERIFICATION_FILE = "verification.safetensors"
VERIFICATION_FORMAT = "lab2prod-verification/1"
# Enough digits that one disagreement moves agreement by at most 0.1 point, few enough to check
# in a fraction of a second at start-up (timings: docs/runtime-selection.md).
MAX_VERIFICATION_DIGITS = 2000
_METADATA_KEY = "lab2prod"
# fp32 variants answer within about 1e-6 of eager, int8 ones 1e-2 to 0.4 away
# (docs/runtime-selection.md): a bound between the two, the release's replay tolerance too.
EXACT_PROBABILITY_DIFF = 1e-4
# How much faster an inexact variant must be to be chosen ahead of an exact one, unless the
# policy says otherwise (release-policy.yaml's min_inexact_runtime_speedup says why this much).
MIN_INEXACT_SPEEDUP = 1.25


@dataclass(frozen=True)
class RuntimeCriteria:
    """When a variant may stand in for eager PyTorch (the release policy's runtime bars)."""

    min_agreement: float = 0.995  # share of digits with the same predicted class as eager
    max_accuracy_drop: float = 0.002  # accuracy lost against eager, as a fraction (0.002 = 0.2 pt)
    max_probability_diff: float = 1.0  # largest |p - p_eager| of any class on any digit; 1 = off

    def describe(self) -> str:
        text = (f"agreement >= {self.min_agreement:.4f}, accuracy drop <= "
                f"{self.max_accuracy_drop:.4f}")
        if self.max_probability_diff < 1.0:
            text += f", max |dp| <= {self.max_probability_diff:g}"
        return text


@dataclass(frozen=True)
class Agreement:
    """A variant's answers against eager's on the same digits."""

    digits: int
    agreement: float
    disagreements: int
    accuracy_drop: float | None  # None without labels
    max_probability_diff: float

    def misses(self, criteria: RuntimeCriteria) -> list[str]:
        """Each bar this variant misses, as 'measured vs required' text (empty: it qualifies)."""
        reasons = []
        if self.agreement < criteria.min_agreement:
            reasons.append(f"agreement {self.agreement:.4f} < {criteria.min_agreement:.4f} "
                           f"({self.disagreements} of {self.digits} digits differ)")
        drop = self.accuracy_drop
        if drop is not None and drop > criteria.max_accuracy_drop + 1e-9:
            reasons.append(f"accuracy drop {self.accuracy_drop:.4f} > "
                           f"{criteria.max_accuracy_drop:.4f}")
        if self.max_probability_diff > criteria.max_probability_diff:
            reasons.append(f"max |dp| {self.max_probability_diff:.2e} > "
                           f"{criteria.max_probability_diff:g}")
        return reasons

    def summary(self) -> str:
        drop = "" if self.accuracy_drop is None else f", accuracy drop {self.accuracy_drop:+.4f}"
        return (f"agreement {self.agreement:.4f} ({self.disagreements} of {self.digits} differ)"
                f"{drop}, max |dp| {self.max_probability_diff:.2e}")


def compare(
    reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None
) -> Agreement:
    """Compare two [N,C] probability arrays over the same digits (``reference`` is eager's)."""
    if reference.shape != candidate.shape or reference.ndim != 2 or not len(reference):
        raise ValueError(f"cannot compare probabilities of shapes {reference.shape} and "
                         f"{candidate.shape}: both must be [N, classes] with N > 0")
    expected, predicted = reference.argmax(axis=1), candidate.argmax(axis=1)
    same = expected == predicted
    drop = None
    if labels is not None:
        truth = np.asarray(labels, dtype=np.int64)
        drop = float((expected == truth).mean() - (predicted == truth).mean())
    return Agreement(
        digits=len(reference),
        agreement=float(same.mean()),
        disagreements=int((~same).sum()),
        accuracy_drop=drop,
        max_probability_diff=float(np.abs(reference - candidate).max()),
    )


# Batches no larger than serving's (MAX_BATCH_SIZE's default): ONNX Runtime keeps, for the life
# of the session, the memory the largest batch it ever ran needed, and batches of 256 when the
# server verified a variant at start-up kept 26 MiB more than serving ever uses
# (docs/benchmarks/overhead.md, round 8). Per image, 32 and 256 cost the same.
VERIFY_BATCH_SIZE: int = Settings.model_fields["max_batch_size"].default


def predict_all(runtime: Any, inputs: Any, batch_size: int = VERIFY_BATCH_SIZE) -> np.ndarray:
    """A runtime's probabilities over normalised inputs [N,1,28,28] (numpy or torch), in
    batches."""
    return np.concatenate([
        np.asarray(runtime.predict_proba(inputs[start:start + batch_size]), dtype=np.float32)
        for start in range(0, len(inputs), batch_size)
    ])


# --- the verification set published with a version -------------------------------------------


@dataclass
class VerificationSet:
    """Digits, labels and eager's probabilities at release, and the bars a variant must meet."""

    digits: np.ndarray  # uint8 [N,28,28]
    labels: np.ndarray  # int64 [N]
    probabilities: np.ndarray  # float32 [N,C], eager PyTorch at release
    weights_sha256: str  # the checkpoint these probabilities belong to
    criteria: RuntimeCriteria = field(default_factory=RuntimeCriteria)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        metadata = {"format": VERIFICATION_FORMAT, "weights_sha256": self.weights_sha256,
                    "criteria": asdict(self.criteria)}
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file(
            {"digits": np.ascontiguousarray(self.digits, dtype=np.uint8),
             "labels": np.ascontiguousarray(self.labels, dtype=np.int64),
             "probabilities": np.ascontiguousarray(self.probabilities, dtype=np.float32)},
            str(temporary), metadata={_METADATA_KEY: json.dumps(metadata, sort_keys=True)},
        )
        os.replace(temporary, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> VerificationSet:
        """Read a verification set; ValueError says what is wrong with a damaged one."""
        try:
            with safe_open(str(path), framework="numpy") as handle:
                metadata = json.loads((handle.metadata() or {})[_METADATA_KEY])
                tensors = {name: handle.get_tensor(name) for name in
                           ("digits", "labels", "probabilities")}
        except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not a readable verification set ({exc})") from exc
        if metadata.get("format") != VERIFICATION_FORMAT:
            raise ValueError(f"{path} has format {metadata.get('format')!r}, not "
                             f"{VERIFICATION_FORMAT!r}")
        return cls(tensors["digits"], tensors["labels"], tensors["probabilities"],
                   str(metadata.get("weights_sha256", "")),
                   RuntimeCriteria(**metadata.get("criteria", {})))


@dataclass(frozen=True)
class Verification:
    """A runtime checked against the verification set on this machine."""

    runtime: str
    agreement: Agreement
    reasons: tuple[str, ...]  # the bars it missed; empty when it passed
    seconds: float

    @property
    def passed(self) -> bool:
        return not self.reasons

    def as_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "passed": self.passed, **asdict(self.agreement),
                "misses": list(self.reasons), "seconds": round(self.seconds, 4)}


def verify(
    runtime: Any, verification_set: VerificationSet, normalization: Normalization
) -> Verification:
    """Run ``runtime`` over the set's digits and judge it against eager's recorded answers."""
    started = time.perf_counter()
    answers = predict_all(runtime, normalize_array(verification_set.digits, normalization))
    agreement = compare(verification_set.probabilities, answers, verification_set.labels)
    return Verification(
        runtime=str(getattr(runtime, "name", "unknown")),
        agreement=agreement,
        reasons=tuple(agreement.misses(verification_set.criteria)),
        seconds=time.perf_counter() - started,
    )
