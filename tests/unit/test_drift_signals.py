"""The drift signals of a digit: one definition, at release and in serving."""

from __future__ import annotations

import numpy as np
import pytest

from service.monitoring.signals import LIT_LEVEL, SIGNAL_NAMES, digit_signals

ONE_HOT = np.eye(10, dtype=np.float32)[[3]]


def signals_of(digit: np.ndarray, probabilities: np.ndarray = ONE_HOT) -> dict[str, float]:
    (row,) = digit_signals(digit[None], probabilities)
    return dict(zip(SIGNAL_NAMES, row.tolist(), strict=True))


def test_the_columns_are_the_signals_in_order():
    assert SIGNAL_NAMES == ("predicted_class", "confidence", "mean_ink", "ink_box", "lit_fraction")


def test_the_class_and_confidence_are_the_most_probable_class_and_its_probability():
    probabilities = np.array([[0.1, 0.7, 0.2] + [0.0] * 7], dtype=np.float32)
    found = signals_of(np.zeros((28, 28), np.uint8), probabilities)
    assert found["predicted_class"] == 1 and found["confidence"] == pytest.approx(0.7)


def test_a_blank_digit_has_no_ink_no_box_and_nothing_lit():
    found = signals_of(np.zeros((28, 28), np.uint8))
    assert (found["mean_ink"], found["ink_box"], found["lit_fraction"]) == (0, 0, 0)


def test_a_solid_bar_covers_its_own_box():
    digit = np.zeros((28, 28), np.uint8)
    digit[4:14, 10:15] = 255  # 10 rows x 5 columns
    found = signals_of(digit)
    assert found["ink_box"] == pytest.approx(50 / 784)
    assert found["lit_fraction"] == pytest.approx(50 / 784)
    assert found["mean_ink"] == pytest.approx(50 / 784)


def test_the_box_spans_the_outermost_lit_pixels_even_when_they_are_apart():
    digit = np.zeros((28, 28), np.uint8)
    digit[2, 3] = digit[20, 9] = 255
    found = signals_of(digit)
    assert found["ink_box"] == pytest.approx(19 * 7 / 784)
    assert found["lit_fraction"] == pytest.approx(2 / 784)


def test_faint_pixels_are_ink_but_not_lit():
    digit = np.full((28, 28), LIT_LEVEL - 1, np.uint8)
    found = signals_of(digit)
    assert found["mean_ink"] == pytest.approx((LIT_LEVEL - 1) / 255)
    assert (found["ink_box"], found["lit_fraction"]) == (0, 0)


def test_a_batch_gives_each_digit_its_own_row():
    digits = np.zeros((3, 28, 28), np.uint8)
    digits[1] = 255
    rows = digit_signals(digits, np.repeat(ONE_HOT, 3, axis=0))
    assert rows.shape == (3, 5) and rows.dtype == np.float32
    assert rows[:, 3].tolist() == [0, 1, 0]


def plain_signals(digits: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """The signals by their definitions, with numpy's plain reductions."""
    lit = digits >= LIT_LEVEL
    rows, columns = lit.any(axis=2), lit.any(axis=1)

    def extent(mask: np.ndarray) -> np.ndarray:
        first, last = mask.argmax(axis=1), mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1)
        return np.where(mask.any(axis=1), last - first + 1, 0)

    return np.stack([
        probabilities.argmax(axis=1), probabilities.max(axis=1),
        digits.reshape(len(digits), -1).mean(axis=1, dtype=np.float32) / 255.0,
        extent(rows) * extent(columns) / 784, lit.reshape(len(digits), -1).mean(axis=1),
    ], axis=1).astype(np.float32)


def test_the_word_sums_give_exactly_what_the_plain_reductions_give():
    generator = np.random.default_rng(0)
    noise = generator.integers(0, 256, (300, 28, 28), dtype=np.uint8)
    saturated = np.full((2, 28, 28), 255, np.uint8)  # every lane at its largest sum
    corners = np.zeros((4, 28, 28), np.uint8)
    corners[0, 0, 0] = corners[1, 27, 27] = corners[2, 0, 27] = corners[3, 27, 0] = LIT_LEVEL
    sparse = np.where(generator.random((300, 28, 28)) < 0.02, 255, 0).astype(np.uint8)
    digits = np.concatenate([noise, saturated, corners, sparse])
    probabilities = generator.dirichlet(np.ones(10), len(digits)).astype(np.float32)
    assert np.array_equal(digit_signals(digits, probabilities),
                          plain_signals(digits, probabilities))


def test_digits_of_another_size_are_refused():
    with pytest.raises(ValueError, match=r"\[N, 28, 28\]"):
        digit_signals(np.zeros((1, 32, 32), np.uint8), ONE_HOT)
