"""The drift reference a release records, the figures serving computes against it, and the rule
that turns them into a verdict."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.monitoring.drift import P_ALERT, RULE, SignalDrift, compare, psi
from service.monitoring.reference import (
    DRIFT_REFERENCE_FILE,
    MAX_REFERENCE_VALUES,
    DriftReference,
)

SHA = "sha256:" + "ab" * 32


def signal_rows(count: int, seed: int, *, ink_shift: float = 0.0) -> np.ndarray:
    """Rows as ``digit_signals`` makes them, drawn from a fixed distribution (ink moved by
    ``ink_shift``)."""
    rng = np.random.default_rng(seed)
    return np.column_stack([
        rng.integers(0, 10, count),
        rng.beta(8, 1, count),
        np.clip(rng.normal(0.13 + ink_shift, 0.04, count), 0, 1),
        rng.uniform(0.1, 0.6, count),
        np.clip(rng.normal(0.13 + ink_shift, 0.04, count), 0, 1),
    ]).astype(np.float32)


@pytest.fixture(scope="module")
def reference() -> DriftReference:
    return DriftReference.build(signal_rows(3000, seed=0), classes=10, weights_sha256=SHA)


def levels(report) -> dict[str, str]:
    return {signal.name: signal.level for signal in report.signals}


# --- the reference -----------------------------------------------------------------------------


def test_the_reference_reads_back_exactly_as_recorded(reference, tmp_path):
    loaded = DriftReference.load(reference.save(tmp_path / DRIFT_REFERENCE_FILE))
    assert (loaded.weights_sha256, loaded.digits) == (SHA, 3000)
    assert loaded.class_counts.tolist() == reference.class_counts.tolist()
    for name, recorded in reference.continuous.items():
        read = loaded.continuous[name]
        assert np.array_equal(read.values, recorded.values), name  # float32 for float32
        assert np.array_equal(read.cuts, recorded.cuts), name
        assert read.counts.tolist() == recorded.counts.tolist(), name


def test_each_psi_bin_holds_about_a_tenth_of_the_reference(reference):
    for name, recorded in reference.continuous.items():
        assert len(recorded.cuts) == 9, name
        assert recorded.counts.sum() == 3000
        assert np.abs(recorded.counts / 3000 - 0.1).max() < 0.01, name


def test_tied_deciles_merge_into_fewer_bins():
    rows = signal_rows(1000, seed=1)
    rows[:700, 1] = 1.0  # most digits at full confidence, as with a well-trained model
    confidence = DriftReference.build(rows, 10, SHA).continuous["confidence"]
    assert len(confidence.cuts) < 9 and confidence.counts.sum() == 1000
    assert confidence.counts[-1] == 700  # a bin of its own for the mass at 1.0


def test_the_reference_keeps_at_most_its_limit_of_values_spanning_the_distribution(reference):
    values = reference.continuous["mean_ink"].values
    assert len(values) == MAX_REFERENCE_VALUES and np.all(np.diff(values) >= 0)
    everything = np.sort(signal_rows(3000, seed=0)[:, 2])
    assert (values[0], values[-1]) == (everything[0], everything[-1])


def test_a_reference_is_found_only_for_the_weights_it_was_recorded_for(reference, tmp_path):
    reference.save(tmp_path / DRIFT_REFERENCE_FILE)
    assert DriftReference.find(tmp_path, SHA) is not None
    assert DriftReference.find(tmp_path, "sha256:" + "cd" * 32) is None
    assert DriftReference.find(tmp_path / "elsewhere", SHA) is None


def test_an_unreadable_reference_means_no_figures_not_a_failure(tmp_path):
    (tmp_path / DRIFT_REFERENCE_FILE).write_text(json.dumps({"format": "something else"}))
    assert DriftReference.find(tmp_path, SHA) is None


# --- the figures -------------------------------------------------------------------------------


def test_psi_is_zero_for_equal_shares_and_follows_its_formula():
    assert psi(np.array([50, 50]), np.array([500, 500])) == 0
    expected = (0.25 - 0.5) * np.log(0.25 / 0.5) + (0.75 - 0.5) * np.log(0.75 / 0.5)
    assert psi(np.array([50, 50]), np.array([25, 75])) == pytest.approx(expected)


def test_an_empty_bin_costs_a_finite_amount():
    assert np.isfinite(psi(np.array([10, 0]), np.array([0, 10])))


def test_a_window_from_the_reference_distribution_is_ok(reference):
    report = compare(reference, signal_rows(1000, seed=2), size=1000)
    assert report.verdict == "ok" and report.alert is False
    assert max(signal.psi for signal in report.signals) < 0.1


def test_a_window_with_more_ink_alerts_on_the_ink_signals(reference):
    report = compare(reference, signal_rows(1000, seed=3, ink_shift=0.1), size=1000)
    assert report.verdict == "alert" and report.alert is True
    assert levels(report) == {"predicted_class": "ok", "confidence": "ok", "mean_ink": "alert",
                              "ink_box": "ok", "lit_fraction": "alert"}


def test_the_classes_are_tested_for_homogeneity_leaving_out_classes_neither_predicts(reference):
    rows = signal_rows(1000, seed=4)
    rows[:, 0] = rows[:, 0] % 2  # only classes 0 and 1
    (classes, *_) = compare(reference, rows, size=1000).signals
    assert classes.test == "chi-square" and classes.level == "alert"
    assert np.isfinite(classes.statistic) and classes.p_value < 1e-100


def test_there_is_no_verdict_until_the_window_is_full(reference):
    report = compare(reference, signal_rows(400, seed=3, ink_shift=0.1), size=1000)
    assert (report.verdict, report.alert, report.filled) == ("filling", None, 400)
    assert levels(report)["mean_ink"] == "alert"  # the figures so far are there to read
    assert compare(reference, signal_rows(0, seed=0), size=1000).signals == ()


@pytest.mark.parametrize(("figures", "level"), [
    ((0.30, P_ALERT / 10), "alert"),
    ((0.15, P_ALERT / 10), "watch"),
    ((0.05, 1e-30), "ok"),  # significant, too small to matter
    ((0.60, P_ALERT * 2), "ok"),  # large, not told apart from noise (a small window)
])
def test_a_signal_alerts_only_when_its_shift_is_both_large_and_significant(figures, level):
    shift, p_value = figures
    assert SignalDrift("mean_ink", "kolmogorov-smirnov", shift, 0.1, p_value).level == level


def test_the_rule_is_stated_with_its_numbers():
    assert RULE.startswith(
        "alert when the window is full and a signal has PSI >= 0.25 and p < 0.002")
