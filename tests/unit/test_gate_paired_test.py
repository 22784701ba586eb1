"""The gate's paired test: McNemar's exact one-sided p-value, Holm's adjustment, and the counts
taken from labels and two models' predictions on the same digits."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from service.release.regression import (
    PairedCounts,
    compare,
    exact_one_sided_p,
    holm,
    paired_counts,
)


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (0, 0, 1.0),  # no digit tells the models apart: no evidence at all
        (0, 5, 1.0),  # the candidate only ever wins
        (1, 0, 0.5),
        (3, 0, 1 / 8),
        (10, 0, 2**-10),
        (11, 1, 13 / 4096),  # (C(12,11) + C(12,12)) / 2**12
        (5, 5, 638 / 1024),  # P(X >= 5), X ~ Bin(10, 1/2): (252 + 210 + 120 + 45 + 10 + 1) / 1024
    ],
)
def test_the_one_sided_p_value_on_values_worked_out_by_hand(b, c, expected):
    assert exact_one_sided_p(b, c) == pytest.approx(expected, rel=1e-12)


def test_the_p_value_agrees_with_scipys_exact_binomial_test_over_a_range_of_counts():
    pairs = [(b, c) for b in range(0, 41) for c in range(0, 41)]
    pairs += [(70, 40), (400, 350), (350, 400), (30, 900), (900, 30), (5000, 4900)]
    for b, c in pairs:
        if b + c == 0:
            continue
        expected = binomtest(b, b + c, 0.5, alternative="greater").pvalue
        assert exact_one_sided_p(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-300), (b, c)


def test_the_p_value_stays_exact_far_into_the_tail():
    # 2**-200 underflows nothing here, and a float sum of terms would lose it to rounding
    assert exact_one_sided_p(200, 0) == 2.0**-200
    assert exact_one_sided_p(0, 200) == 1.0


def test_negative_counts_are_refused():
    with pytest.raises(ValueError, match="counts must be >= 0"):
        exact_one_sided_p(-1, 3)


def test_holm_adjusts_a_hand_worked_example():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> kept at 0.06
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # at alpha 0.05 the step-down procedure rejects the two smallest and stops at the third
    assert [p <= 0.05 for p in adjusted] == [True, False, False, True]


def test_holm_caps_at_one_and_leaves_a_single_test_alone():
    assert holm([0.6, 0.9]) == [1.0, 1.0]
    assert holm([0.03]) == [0.03]
    assert holm([]) == []


def test_paired_counts_keep_only_the_digits_exactly_one_model_gets_right():
    labels = np.array([0, 1, 2, 3, 4, 5, 6])
    champion = np.array([0, 1, 2, 0, 0, 5, 0])  # wrong on 3, 4, 6
    candidate = np.array([0, 9, 2, 3, 4, 0, 1])  # wrong on 1, 5, 6
    counts = paired_counts(labels, candidate, champion)
    assert counts == PairedCounts(n=7, b=2, c=2)  # digit 6, wrong for both, counts for neither
    assert counts.drop == 0.0
    assert counts.p_value == pytest.approx(11 / 16)


def test_the_drop_is_the_accuracy_difference_on_the_digits_compared():
    counts = PairedCounts(n=1000, b=30, c=10)
    assert counts.drop == pytest.approx(0.02)
    assert PairedCounts(n=0, b=0, c=0).drop == 0.0


def test_predictions_of_another_length_are_refused():
    with pytest.raises(ValueError, match="one length"):
        paired_counts(np.zeros(5), np.zeros(5), np.zeros(4))


def test_compare_tests_each_class_with_digits_and_adjusts_across_those_classes():
    # class 0: candidate loses 6 digits the champion gets right; class 1: even; class 2: absent
    labels = np.array([0] * 20 + [1] * 20 + [3] * 5)
    champion = labels.copy()
    candidate = labels.copy()
    candidate[:6] = 1
    champion[20:22] = 0
    candidate[22:24] = 0
    comparison = compare(labels, candidate, champion, ["zero", "one", "two", "three"])
    assert comparison.overall == PairedCounts(n=45, b=8, c=2)
    assert [item.label for item in comparison.classes] == ["zero", "one", "three"]
    zero, one, three = comparison.classes
    assert zero.counts == PairedCounts(n=20, b=6, c=0)
    assert zero.p_value == pytest.approx(2**-6)
    assert zero.adjusted_p == pytest.approx(3 * 2**-6)  # smallest of three
    assert one.counts == PairedCounts(n=20, b=2, c=2) and three.counts == PairedCounts(5, 0, 0)
    assert [one.adjusted_p, three.adjusted_p] == [1.0, 1.0]
    assert zero.counts.drop == pytest.approx(0.3)  # recall 1.0 -> 0.7


def test_classes_are_named_by_index_when_no_names_are_given():
    labels = np.array([0, 1, 1])
    comparison = compare(labels, labels, labels)
    assert [item.label for item in comparison.classes] == ["0", "1"]
