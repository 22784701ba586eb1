"""The drift tests' p-values, computed without scipy, against scipy's own: the chi-square test to
rounding, the two-sample Kolmogorov-Smirnov test within the accuracy docs/drift.md states, and
never on the other side of the alert threshold."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

from service.monitoring.drift import P_ALERT
from service.monitoring.significance import (
    chi_square_homogeneity,
    chi_square_survival,
    kolmogorov_smirnov_2samp,
    kolmogorov_survival,
)

REFERENCE_SIZE = 2000  # monitoring.reference.MAX_REFERENCE_VALUES


@pytest.mark.parametrize("dof", [1, 2, 3, 9, 17, 40])
def test_the_chi_square_tail_is_scipys_to_rounding_from_the_bulk_to_far_into_the_tail(dof):
    for statistic in np.geomspace(1e-3, 3000, 120):
        expected = stats.chi2.sf(statistic, dof)
        if expected > 1e-300:
            assert chi_square_survival(statistic, dof) == pytest.approx(expected, rel=1e-11)


def test_the_chi_square_test_of_a_table_is_scipys_without_continuity_correction():
    rng = np.random.default_rng(0)
    for _ in range(50):
        table = np.stack([rng.integers(1, 300, 10), rng.integers(1, 120, 10)])
        statistic, p_value = stats.chi2_contingency(table, correction=False)[:2]
        assert chi_square_homogeneity(table) == pytest.approx((statistic, p_value), rel=1e-11)


def test_identical_samples_are_no_evidence_at_all():
    counts = np.array([[10, 20, 30], [10, 20, 30]])
    assert chi_square_homogeneity(counts) == (0.0, 1.0)
    values = np.linspace(0, 1, 200)
    assert kolmogorov_smirnov_2samp(values, values) == (0.0, 1.0)


def test_a_test_without_degrees_of_freedom_or_data_is_refused_with_what_is_missing():
    with pytest.raises(ValueError, match="degree of freedom"):
        chi_square_survival(3.0, 0)
    with pytest.raises(ValueError, match="positive total"):
        chi_square_homogeneity(np.array([[5, 0, 3], [2, 0, 7]]))
    with pytest.raises(ValueError, match="non-empty"):
        kolmogorov_smirnov_2samp(np.array([]), np.arange(5.0))


def test_kolmogorovs_distribution_is_scipys_to_rounding():
    for x in np.concatenate([np.linspace(0.01, 3, 300), [3.5, 4, 5, 6, 8, 10, 15]]):
        expected = special.kolmogorov(x)
        assert kolmogorov_survival(x) == pytest.approx(expected, rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("window", [100, 300, 1000])
def test_the_kolmogorov_smirnov_statistic_is_scipys_and_its_p_value_within_the_stated_bounds(
    window,
):
    rng = np.random.default_rng(window)
    reference = rng.normal(size=REFERENCE_SIZE).astype(np.float32)
    for shift in np.linspace(0, 0.5, 51):
        sample = rng.normal(shift, size=window).astype(np.float32)
        exact = stats.ks_2samp(sample, reference)  # scipy's exact method at these sizes
        statistic, p_value = kolmogorov_smirnov_2samp(sample, reference)
        assert statistic == pytest.approx(exact.statistic, abs=1e-12)
        if exact.pvalue >= 1e-3:
            assert p_value == pytest.approx(exact.pvalue, rel=0.07), shift
        elif exact.pvalue >= 1e-7:
            assert p_value == pytest.approx(exact.pvalue, rel=0.11), shift
        assert (p_value < P_ALERT) == (exact.pvalue < P_ALERT), shift


def test_ties_are_counted_as_scipy_counts_them():
    """Signals such as the lit fraction take few distinct values: the gap between the two
    empirical CDFs is read after every tied value, as scipy reads it."""
    rng = np.random.default_rng(7)
    reference = (rng.binomial(784, 0.19, REFERENCE_SIZE) / 784).astype(np.float32)
    for share in np.linspace(0.17, 0.21, 21):
        sample = (rng.binomial(784, share, 1000) / 784).astype(np.float32)
        exact = stats.ks_2samp(sample, reference)
        statistic, p_value = kolmogorov_smirnov_2samp(sample, reference)
        assert statistic == pytest.approx(exact.statistic, abs=1e-12)
        if exact.pvalue >= 1e-7:
            assert p_value == pytest.approx(exact.pvalue, rel=0.11), share
