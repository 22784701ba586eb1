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
continuous signal lies in 0..1. The computation is a few whole-array operations per batch (its
cost per digit: docs/drift.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from service.ml.preprocess import IMAGE_PIXELS, IMAGE_SIDE

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
    one column per signal in ``SIGNALS`` order (the class as a float).

    The pixel counts are sums of bytes in machine words (0/1 bytes for lit pixels, levels for
    ink), with every byte's running total kept below its lane's limit. numpy's own reductions
    over a digit's 28-pixel rows pay a fixed cost per row; these whole-array adds cost a
    third as much (docs/drift.md), and give the same numbers (tests/unit check it)."""
    count, height, width = digits.shape
    if (height, width) != (IMAGE_SIDE, IMAGE_SIDE):
        raise ValueError(f"digits must be [N, {IMAGE_SIDE}, {IMAGE_SIDE}], got {digits.shape}")
    pixels = np.ascontiguousarray(digits, dtype=np.uint8).reshape(count, IMAGE_PIXELS)
    lit = (pixels >= LIT_LEVEL).view(np.uint8)  # 0 or 1 per byte
    # A row is 7 words of 4 bytes: its sum of 7 words (each byte <= 7) is 0 only if nothing is
    # lit; summing the 28 rows word by word gives each column's count in its own byte (<= 28).
    words = lit.view(np.uint32).reshape(count, IMAGE_SIDE, IMAGE_SIDE // 4)
    lit_rows = _sum_words(words, axis=2) != 0
    lit_columns = _sum_words(words, axis=1).view(np.uint8).reshape(count, IMAGE_SIDE) != 0
    # 98 words of 8 bytes per digit: each byte of their sum counts <= 98 lit pixels.
    lit_count = _byte_sums(lit.view(np.uint64).sum(axis=1, dtype=np.uint64), np.uint8)
    # Levels in 16-bit lanes, even and odd bytes apart: each lane sums <= 98 x 255 < 2^16.
    levels = pixels.view(np.uint64)
    lanes = ((levels & _EVEN_BYTES).sum(axis=1, dtype=np.uint64)
             + ((levels >> _BYTE) & _EVEN_BYTES).sum(axis=1, dtype=np.uint64))
    ink = _byte_sums(lanes, np.uint16)
    signals = np.empty((count, len(SIGNALS)), dtype=np.float32)
    signals[:, 0] = probabilities.argmax(axis=1)
    signals[:, 1] = probabilities.max(axis=1)
    # float32 as numpy's mean(dtype=float32) computes it: the exact sum, divided once
    signals[:, 2] = ink.astype(np.float32) / np.float32(IMAGE_PIXELS) / 255.0
    signals[:, 3] = _extent(lit_rows) * _extent(lit_columns) / IMAGE_PIXELS
    signals[:, 4] = lit_count / IMAGE_PIXELS
    return signals


_EVEN_BYTES = np.uint64(0x00FF_00FF_00FF_00FF)
_BYTE = np.uint64(8)


def _sum_words(words: np.ndarray, axis: int) -> np.ndarray:
    """Sum [N,28,7] words along a short ``axis`` with whole-array adds, in the order that keeps
    each add one long run: a row's 7 words (axis 2) one by one, the 28 rows (axis 1) by folding
    halves. The axis is removed."""
    if axis == 2:
        total = words[..., 0].copy()
        for index in range(1, words.shape[2]):
            total += words[..., index]
        return total
    while words.shape[1] > 1:
        half = words.shape[1] // 2
        folded = words[:, :half] + words[:, half:2 * half]
        if words.shape[1] % 2:
            folded[:, 0] += words[:, -1]
        words = folded
    return words[:, 0]


def _byte_sums(words: np.ndarray, lane: type[np.unsignedinteger]) -> np.ndarray:
    """[N] uint64 words -> [N] sums of their ``lane``-sized parts."""
    return words.view(lane).reshape(len(words), -1).sum(axis=1, dtype=np.uint32)


def _extent(mask: np.ndarray) -> np.ndarray:
    """[N,L] booleans -> the span from the first True to the last (0 where none is True)."""
    first = mask.argmax(axis=1)
    last = mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1)
    return np.where(mask.any(axis=1), last - first + 1, 0)
