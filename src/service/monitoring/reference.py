"""The drift reference a release records with each version: the signals of ``monitoring.signals``
over the evaluation split, with eager PyTorch's probabilities (``release.checks`` writes it as
``drift-reference.json`` and the version is published with it). Serving compares its windows of
live inputs against it (``monitoring.drift``).

Per signal it keeps what the comparison needs:

- ``predicted_class``: the count of each class (PSI over the classes, and the chi-square test
  of homogeneity, which takes the reference's own sampling noise into account);
- each continuous signal: PSI bins fixed at release (cuts at the reference's deciles, so each bin
  holds about a tenth of it whatever the signal's scale; tied deciles merge) with the reference's
  count in each, and the reference sample itself, thinned to ``MAX_REFERENCE_VALUES`` evenly
  spaced order statistics, for the two-sample Kolmogorov-Smirnov test (a fine histogram would
  make the test one-sample and blind to the reference's noise).

Values are stored as the shortest decimals that read back as the same float32, so serving bins
and tests exactly what the release computed. A version published without a reference (before
releases recorded one) has no drift figures.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.monitoring.signals import SIGNALS

log = logging.getLogger(__name__)
DRIFT_REFERENCE_FILE = "drift-reference.json"
REFERENCE_FORMAT = "lab2prod-drift-reference/1"
PSI_BINS = 10
# Enough for the KS test to resolve a CDF difference of a few points (it is compared with a
# window of DRIFT_WINDOW, 1,000 by default), small enough to keep the file near 100 KB.
MAX_REFERENCE_VALUES = 2000


@dataclass(frozen=True)
class ContinuousReference:
    """One continuous signal at release: PSI bins (``cuts`` between them) and the sample."""

    cuts: np.ndarray  # float32, increasing: len(cuts) + 1 bins, from -inf to +inf
    counts: np.ndarray  # the reference's count in each bin
    values: np.ndarray  # float32, sorted

    @classmethod
    def of(cls, values: np.ndarray) -> ContinuousReference:
        ordered = np.sort(values.astype(np.float32))
        deciles = np.quantile(ordered, np.arange(1, PSI_BINS) / PSI_BINS, method="lower")
        cuts = np.unique(deciles).astype(np.float32)
        kept = np.linspace(0, len(ordered) - 1, min(len(ordered), MAX_REFERENCE_VALUES))
        return cls(cuts, _histogram(cuts, ordered), ordered[np.unique(kept.round().astype(int))])

    def bin_counts(self, values: np.ndarray) -> np.ndarray:
        """How many of ``values`` fall in each of the PSI bins."""
        return _histogram(self.cuts, values)


@dataclass(frozen=True)
class DriftReference:
    """What a version's predictions and inputs looked like at release."""

    weights_sha256: str
    digits: int
    class_counts: np.ndarray  # [C] predictions per class
    continuous: dict[str, ContinuousReference]

    @classmethod
    def build(cls, signals: np.ndarray, classes: int, weights_sha256: str) -> DriftReference:
        """From ``monitoring.signals.digit_signals`` over the evaluation split."""
        if len(signals) == 0:
            raise ValueError("a drift reference needs at least one evaluation digit")
        columns = dict(zip((s.name for s in SIGNALS), signals.T, strict=True))
        return cls(
            weights_sha256=weights_sha256,
            digits=len(signals),
            class_counts=np.bincount(columns["predicted_class"].astype(np.int64),
                                     minlength=classes),
            continuous={s.name: ContinuousReference.of(columns[s.name])
                        for s in SIGNALS if s.kind == "continuous"},
        )

    def save(self, path: str | Path) -> Path:
        """Write the JSON file atomically; returns its path."""
        document = {
            "format": REFERENCE_FORMAT,
            "weights_sha256": self.weights_sha256,
            "digits": self.digits,
            "signals": {
                "predicted_class": {"counts": self.class_counts.tolist()},
                **{name: {"cuts": _floats(ref.cuts), "counts": ref.counts.tolist(),
                          "values": _floats(ref.values)}
                   for name, ref in self.continuous.items()},
            },
        }
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps(document, separators=(",", ":")))
        os.replace(partial, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> DriftReference:
        """ValueError when the file is not a drift reference this code can read."""
        try:
            document: dict[str, Any] = json.loads(Path(path).read_text())
            if document.get("format") != REFERENCE_FORMAT:
                raise ValueError(f"format {document.get('format')!r}, not {REFERENCE_FORMAT!r}")
            signals = document["signals"]
            continuous = {
                s.name: ContinuousReference(
                    np.asarray(signals[s.name]["cuts"], dtype=np.float32),
                    np.asarray(signals[s.name]["counts"], dtype=np.int64),
                    np.asarray(signals[s.name]["values"], dtype=np.float32),
                )
                for s in SIGNALS if s.kind == "continuous"
            }
            return cls(str(document["weights_sha256"]), int(document["digits"]),
                       np.asarray(signals["predicted_class"]["counts"], dtype=np.int64),
                       continuous)
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not a readable drift reference: {exc}") from exc

    @classmethod
    def find(cls, folder: Path, weights_sha256: str | None) -> DriftReference | None:
        """The reference published in a version's folder for these weights; None (logged when
        it is there but unusable) otherwise: that version then has no drift figures."""
        path = folder / DRIFT_REFERENCE_FILE
        if not path.is_file():
            return None
        try:
            reference = cls.load(path)
        except ValueError as exc:
            log.error("no drift figures for this version: %s", exc)
            return None
        if reference.weights_sha256 != weights_sha256:
            log.error("ignoring %s: it was recorded for other weights (%s, not %s)", path,
                      reference.weights_sha256[:19], str(weights_sha256)[:19])
            return None
        return reference


def _histogram(cuts: np.ndarray, values: np.ndarray) -> np.ndarray:
    bins = np.searchsorted(cuts, values.astype(np.float32), side="right")
    return np.bincount(bins, minlength=len(cuts) + 1)


def _floats(values: np.ndarray) -> list[float]:
    """float32 values as the shortest decimals that read back as the same float32."""
    return [float(str(value)) for value in values.astype(np.float32)]
