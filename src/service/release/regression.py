"""Is the candidate worse than the champion? A paired test on the same evaluation digits.

Both models answer the same digits, so only the digits where exactly one of them is right carry
evidence: ``b`` (champion right, candidate wrong) and ``c`` (candidate right, champion wrong).
If the two models are equally good, each such digit is a fair coin, and McNemar's exact one-sided
test asks how surprising that many champion-only wins are:
``p = P(X >= b)`` with ``X ~ Binomial(b + c, 1/2)``. Per class the same test runs on that
class's digits, and Holm's step-down adjustment keeps the chance of any false alarm across the
classes at the level chosen. The thresholds are policy (release-policy.yaml); the measurements
behind them are in docs/release-gate.md.

Pure functions over label and prediction arrays; the standard library and numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import comb

import numpy as np


@dataclass(frozen=True)
class PairedCounts:
    """Candidate against champion on the same ``n`` digits."""

    n: int  # digits compared
    b: int  # champion right, candidate wrong
    c: int  # candidate right, champion wrong

    @property
    def drop(self) -> float:
        """Champion minus candidate accuracy on these digits (on one class's digits: recall)."""
        return (self.b - self.c) / self.n if self.n else 0.0

    @property
    def p_value(self) -> float:
        """McNemar's exact one-sided p-value for "the candidate is worse"."""
        return exact_one_sided_p(self.b, self.c)


@dataclass(frozen=True)
class ClassComparison:
    """One class's paired counts, its p-value, and that p-value after Holm's adjustment."""

    label: str
    counts: PairedCounts
    p_value: float
    adjusted_p: float


@dataclass(frozen=True)
class Comparison:
    """The whole evaluation split, and every class that has digits in it."""

    overall: PairedCounts
    classes: tuple[ClassComparison, ...]


def exact_one_sided_p(b: int, c: int) -> float:
    """P(X >= b) for X ~ Binomial(b + c, 1/2); 1.0 when no digit tells the models apart.

    Summed in exact integers (over the shorter side of the distribution), so the tail stays
    exact where a float sum would underflow or cancel."""
    if b < 0 or c < 0:
        raise ValueError(f"counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if b > n // 2:
        tail = sum(comb(n, k) for k in range(b, n + 1))
    else:
        tail = 2**n - sum(comb(n, k) for k in range(b))
    return tail / 2**n


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given.

    The i-th smallest of m is multiplied by (m - i + 1), then made non-decreasing in that order
    and capped at 1; a hypothesis is rejected at level alpha when its adjusted p <= alpha, which
    keeps the chance of any false rejection among the m at most alpha."""
    m = len(p_values)
    order = sorted(range(m), key=lambda index: p_values[index])
    adjusted = [1.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def paired_counts(labels: np.ndarray, candidate: np.ndarray, champion: np.ndarray) -> PairedCounts:
    """Count b and c over the digits given (three arrays of the same length)."""
    labels, candidate, champion = (np.asarray(array) for array in (labels, candidate, champion))
    if not labels.shape == candidate.shape == champion.shape or labels.ndim != 1:
        raise ValueError(
            "labels, candidate and champion predictions must be 1-D arrays of one length, got "
            f"shapes {labels.shape}, {candidate.shape}, {champion.shape}"
        )
    candidate_right = candidate == labels
    champion_right = champion == labels
    return PairedCounts(
        n=int(labels.size),
        b=int(np.count_nonzero(champion_right & ~candidate_right)),
        c=int(np.count_nonzero(candidate_right & ~champion_right)),
    )


def compare(
    labels: np.ndarray,
    candidate: np.ndarray,
    champion: np.ndarray,
    class_names: Sequence[str] | None = None,
) -> Comparison:
    """Paired counts overall and per class; the Holm family is every class with digits."""
    labels, candidate, champion = (np.asarray(array) for array in (labels, candidate, champion))
    overall = paired_counts(labels, candidate, champion)
    present = [int(value) for value in np.unique(labels)]
    per_class = [
        paired_counts(labels[mask], candidate[mask], champion[mask])
        for mask in (labels == value for value in present)
    ]
    raw = [counts.p_value for counts in per_class]
    names = list(class_names) if class_names is not None else []
    classes = tuple(
        ClassComparison(
            label=names[value] if value < len(names) else str(value),
            counts=counts,
            p_value=p_value,
            adjusted_p=adjusted,
        )
        for value, counts, p_value, adjusted in zip(present, per_class, raw, holm(raw), strict=True)
    )
    return Comparison(overall, classes)
