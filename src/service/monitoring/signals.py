"""What drift monitoring watches about each input a version computes: five signals, each defined
once here and used both at release (the reference, over the evaluation split, with eager
PyTorch's probabilities) and in serving (every computed prediction, on the inference thread).

- ``predicted_class``: the class with the highest probability (categorical);
- ``confidence``: that highest probability;
- ``mean_ink``: the mean pixel level over the 28x28 digit, 0..1;
- ``ink_box``: the area of the smallest box holding every lit pixel, as a share of the image
  (0 for a digit with no lit pixel);
- ``lit_fraction``: the share of pixels that are lit.

A pixel is *lit* at ``LIT_LEVEL`` (half intensity) and above: MNIST strokes are light on dark
with anti-aliased edges, so the half-way level keeps the stroke and leaves the blur. Every
continuous signal lies in 0..1. The computation is a few vectorised numpy reductions per batch
(its cost per digit: docs/drift.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

LIT_LEVEL = 128
SignalKind = Literal["categorical", "continuous"]


@dataclass(frozen=True)
class Signal:
    name: str
    kind: SignalKind
    description: str


SIGNALS: tuple[Signal, ...] = (
    Signal("predicted_class", "categorical", "the class with the highest probability"),
    Signal("confidence", "continuous", "the highest probability"),
    Signal("mean_ink", "continuous", "mean pixel level of the 28x28 digit, 0..1"),
    Signal("ink_box", "continuous", "area of the box around the lit pixels, share of the image"),
    Signal("lit_fraction", "continuous", f"share of pixels at {LIT_LEVEL} or above"),
)
SIGNAL_NAMES = tuple(signal.name for signal in SIGNALS)


def digit_signals(digits: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """uint8 digits [N,28,28] and their probability rows [N,C] -> float32 [N, len(SIGNALS)],
    one column per signal in ``SIGNALS`` order (the class as a float)."""
    count, height, width = digits.shape
    lit = digits >= LIT_LEVEL
    lit_rows, lit_columns = lit.any(axis=2), lit.any(axis=1)
    signals = np.empty((count, len(SIGNALS)), dtype=np.float32)
    signals[:, 0] = probabilities.argmax(axis=1)
    signals[:, 1] = probabilities.max(axis=1)
    signals[:, 2] = digits.reshape(count, -1).mean(axis=1, dtype=np.float32) / 255.0
    signals[:, 3] = _extent(lit_rows) * _extent(lit_columns) / (height * width)
    signals[:, 4] = lit.reshape(count, -1).mean(axis=1)
    return signals


def _extent(mask: np.ndarray) -> np.ndarray:
    """[N,L] booleans -> the span from the first True to the last (0 where none is True)."""
    first = mask.argmax(axis=1)
    last = mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1)
    return np.where(mask.any(axis=1), last - first + 1, 0)
