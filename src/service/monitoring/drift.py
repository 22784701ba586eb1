"""Has a version's live traffic drifted from what it saw at release? Per signal, a window of live
inputs against the version's reference (``monitoring.reference``), and one verdict.

Per signal two figures, because each answers what the other cannot:

- the population stability index (PSI) over the reference's bins (the classes, or the deciles
  of a continuous signal): how *much* the distribution moved, whatever the window's size;
- a two-sample test with its p-value (chi-square test of homogeneity for the classes,
  Kolmogorov-Smirnov for the continuous signals, computed in ``monitoring.significance``):
  whether the move is more than the sampling noise of a window and a reference of these sizes.

The alert rule: a signal *drifts* when its PSI is at least ``PSI_ALERT`` (0.25) **and** its
p-value is below ``P_ALERT`` (0.01 shared over the five signals, Bonferroni: 0.002); the
version alerts once its window is full and any signal drifts. ``watch`` is the same with
``PSI_WATCH`` (0.1). PSI 0.1 and 0.25 are the usual bounds of a moderate and a major shift; the
p-value keeps sampling noise from alerting when DRIFT_WINDOW is small (PSI's noise floor grows
as 1/window), and PSI keeps a 1,000-input window's test, which flags shifts too small to
matter, from alerting alone. The figures measured on real shifts are in docs/drift.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from service.monitoring.reference import DriftReference
from service.monitoring.signals import SIGNALS
from service.monitoring.significance import chi_square_homogeneity, kolmogorov_smirnov_2samp

PSI_WATCH, PSI_ALERT = 0.1, 0.25
ALPHA = 0.01
P_ALERT = ALPHA / len(SIGNALS)
PSI_FLOOR = 1e-4  # the least share a bin counts as, so that an empty bin costs a finite amount
RULE = (f"alert when the window is full and a signal has PSI >= {PSI_ALERT} and p < {P_ALERT:g} "
        f"({ALPHA} over {len(SIGNALS)} signals); watch: PSI >= {PSI_WATCH} and p < {P_ALERT:g}")
Verdict = Literal["no reference", "filling", "ok", "watch", "alert"]
Level = Literal["ok", "watch", "alert"]


def psi(reference_counts: np.ndarray, window_counts: np.ndarray) -> float:
    """Population stability index: sum over bins of (window - reference) * ln(window/reference),
    in shares of each, floored at PSI_FLOOR."""
    expected = np.maximum(reference_counts / max(reference_counts.sum(), 1), PSI_FLOOR)
    actual = np.maximum(window_counts / max(window_counts.sum(), 1), PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


@dataclass(frozen=True)
class SignalDrift:
    """One signal's window against its reference."""

    name: str
    test: Literal["chi-square", "kolmogorov-smirnov"]
    psi: float
    statistic: float
    p_value: float
    reference_mean: float | None = None  # continuous signals: where the mass moved
    window_mean: float | None = None

    @property
    def level(self) -> Level:
        if self.p_value >= P_ALERT:
            return "ok"
        return "alert" if self.psi >= PSI_ALERT else "watch" if self.psi >= PSI_WATCH else "ok"

    def as_dict(self) -> dict[str, Any]:
        return {"test": self.test, "psi": self.psi, "statistic": self.statistic,
                "p_value": self.p_value, "level": self.level,
                "reference_mean": self.reference_mean, "window_mean": self.window_mean}


@dataclass(frozen=True)
class DriftReport:
    """A window's figures and the verdict (``verdict`` is 'filling' until the window is full)."""

    size: int  # DRIFT_WINDOW
    filled: int
    signals: tuple[SignalDrift, ...]

    @property
    def full(self) -> bool:
        return self.filled >= self.size

    @property
    def verdict(self) -> Verdict:
        if not self.full:
            return "filling"
        levels = {signal.level for signal in self.signals}
        return "alert" if "alert" in levels else "watch" if "watch" in levels else "ok"

    @property
    def alert(self) -> bool | None:
        """Whether the full window alerts; None while it fills."""
        return self.verdict == "alert" if self.full else None


def compare(reference: DriftReference, window: np.ndarray, size: int) -> DriftReport:
    """The signals of a window (rows of ``digit_signals``) against the reference."""
    if len(window) == 0:
        return DriftReport(size, 0, ())
    figures = []
    for index, signal in enumerate(SIGNALS):
        column = window[:, index]
        if signal.kind == "categorical":
            figures.append(_classes(signal.name, reference.class_counts, column))
        else:
            figures.append(_continuous(signal.name, reference, column))
    return DriftReport(size, len(window), tuple(figures))


def _classes(name: str, reference_counts: np.ndarray, column: np.ndarray) -> SignalDrift:
    counts = np.bincount(column.astype(np.int64), minlength=len(reference_counts))
    table = np.stack([reference_counts, counts[: len(reference_counts)]])
    table = table[:, table.sum(axis=0) > 0]  # a class neither predicted tells nothing
    statistic, p_value = (0.0, 1.0) if table.shape[1] < 2 else chi_square_homogeneity(table)
    return SignalDrift(name, "chi-square", psi(table[0], table[1]), statistic, p_value)


def _continuous(name: str, reference: DriftReference, column: np.ndarray) -> SignalDrift:
    described = reference.continuous[name]
    statistic, p_value = kolmogorov_smirnov_2samp(column, described.values)
    return SignalDrift(
        name, "kolmogorov-smirnov", psi(described.counts, described.bin_counts(column)),
        statistic, p_value,
        reference_mean=float(described.values.mean()), window_mean=float(column.mean()),
    )
