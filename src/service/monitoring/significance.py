"""The two drift tests' statistics and p-values, in numpy and ``math`` alone.

scipy.stats computed them before; importing it cost the serving process 65 MiB of memory, a third
of it (docs/benchmarks/overhead.md), for two formulas:

- **chi-square test of homogeneity** (a table of counts, one row per sample): Pearson's statistic
  and its exact p-value, the chi-square distribution's upper tail, i.e. the regularized upper
  incomplete gamma function Q(dof / 2, statistic / 2) (series below a + 1, continued fraction
  above: Numerical Recipes 6.2). The same figures as ``scipy.stats.chi2_contingency(table,
  correction=False)`` to ~1e-12 (tests/unit/test_drift_significance.py).
- **two-sample Kolmogorov-Smirnov test**: the statistic as ``scipy.stats.ks_2samp`` computes it
  (to rounding); the p-value from Kolmogorov's limiting distribution with Stephens' small-sample
  correction, lambda = (sqrt(ne) + 0.12 + 0.11 / sqrt(ne)) * D, ne = n1 n2 / (n1 + n2), as
  scipy's own two-sample test did before its exact method. Against that exact method, at windows
  of 100-1,000 against a reference of 2,000 values: within 7% wherever p >= 0.001 (the alert
  threshold is 0.002) and within 11% down to 1e-7; far beyond, it overstates p by orders of
  magnitude, where any window alerts either way (docs/drift.md).
"""

from __future__ import annotations

import math

import numpy as np

_EPSILON = 1e-15
_TINY = 1e-300
_MAX_TERMS = 1000


def chi_square_homogeneity(table: np.ndarray) -> tuple[float, float]:
    """Pearson's chi-square for a table of counts (rows: samples, columns: categories, every row
    and column with a positive total) -> (statistic, p-value)."""
    counts = np.asarray(table, dtype=np.float64)
    rows, columns = counts.sum(axis=1), counts.sum(axis=0)
    if not (rows > 0).all() or not (columns > 0).all():
        raise ValueError("every row and column of a chi-square table needs a positive total "
                         "(leave out the categories neither sample has)")
    expected = np.outer(rows, columns) / counts.sum()
    statistic = float(np.sum((counts - expected) ** 2 / expected))
    dof = (counts.shape[0] - 1) * (counts.shape[1] - 1)
    return statistic, chi_square_survival(statistic, dof)


def chi_square_survival(statistic: float, dof: int) -> float:
    """P(X >= statistic) for X chi-square with ``dof`` degrees of freedom."""
    if dof < 1:
        raise ValueError(f"a chi-square test needs at least 1 degree of freedom, got {dof}")
    if statistic <= 0:
        return 1.0
    return _upper_regularized_gamma(dof / 2.0, statistic / 2.0)


def _upper_regularized_gamma(a: float, x: float) -> float:
    """Q(a, x) = Gamma(a, x) / Gamma(a), for a > 0 and x > 0."""
    log_prefactor = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:  # the series for P(a, x) converges fast here, and Q = 1 - P is not tiny
        term = total = 1.0 / a
        denominator = a
        for _ in range(_MAX_TERMS):
            denominator += 1.0
            term *= x / denominator
            total += term
            if abs(term) < abs(total) * _EPSILON:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefactor))
    # Q directly, by the continued fraction (modified Lentz), accurate far into the tail.
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    fraction = d
    for step in range(1, _MAX_TERMS):
        an = -step * (step - a)
        b += 2.0
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        fraction *= delta
        if abs(delta - 1.0) < _EPSILON:
            break
    return min(1.0, math.exp(log_prefactor) * fraction)


def kolmogorov_smirnov_2samp(first: np.ndarray, second: np.ndarray) -> tuple[float, float]:
    """Two-sided two-sample Kolmogorov-Smirnov test -> (statistic D, p-value)."""
    first, second = np.sort(first), np.sort(second)
    n1, n2 = len(first), len(second)
    if n1 == 0 or n2 == 0:
        raise ValueError("a Kolmogorov-Smirnov test needs two non-empty samples")
    both = np.concatenate([first, second])
    # The largest gap between the two empirical CDFs, over every observed value (ties included).
    gaps = (np.searchsorted(first, both, side="right") / n1
            - np.searchsorted(second, both, side="right") / n2)
    statistic = float(max(gaps.max(), -gaps.min(), 0.0))
    effective = math.sqrt(n1 * n2 / (n1 + n2))
    return statistic, kolmogorov_survival((effective + 0.12 + 0.11 / effective) * statistic)


def kolmogorov_survival(x: float) -> float:
    """P(K > x) for Kolmogorov's distribution (the limit of sqrt(n) D_n)."""
    if x <= 0:
        return 1.0
    if x < 1.0:  # Jacobi's form of the same series: a few terms suffice below 1
        terms = np.arange(1, 8, dtype=np.float64)
        cdf = math.sqrt(2 * math.pi) / x * float(
            np.sum(np.exp(-((2 * terms - 1) ** 2) * math.pi**2 / (8 * x * x))))
        return min(1.0, max(0.0, 1.0 - cdf))
    terms = np.arange(1, 101, dtype=np.float64)
    signs = np.where(terms % 2 == 1, 1.0, -1.0)
    return min(1.0, max(0.0, 2.0 * float(np.sum(signs * np.exp(-2.0 * terms**2 * x * x)))))
