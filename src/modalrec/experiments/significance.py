"""Paired t-test over per-user metrics (MARIO reports such tests against the best baseline)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass
class TTestResult:
    """Paired two-sided t-test of ``a − b``: statistic, p-value, degrees of freedom, mean difference."""

    statistic: float
    pvalue: float
    df: int
    mean_diff: float


def paired_ttest(a: np.ndarray, b: np.ndarray) -> TTestResult:
    """Two-sided paired t-test: t = mean(d) / (sd(d)/√n), d = a − b, sd with n − 1; p from Student's t.

    Matches ``scipy.stats.ttest_rel(a, b)``: identical samples give t = p = NaN, a constant
    non-zero difference gives t = ±inf and p = 0.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples must be 1-D of equal length; got {a.shape} and {b.shape}")
    n = a.size
    d = a - b
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return TTestResult(math.nan, math.nan, max(n - 1, 0), mean)
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        t = math.nan if mean == 0.0 else math.copysign(math.inf, mean)
    else:
        t = mean / (sd / math.sqrt(n))
    p = math.nan if math.isnan(t) else float(2.0 * stats.t.sf(abs(t), n - 1))
    return TTestResult(t, p, n - 1, mean)


def align_users(
    users_a: np.ndarray, values_a: np.ndarray, users_b: np.ndarray, values_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(common users, a's values, b's values) for the users both vectors cover."""
    common, ia, ib = np.intersect1d(users_a, users_b, assume_unique=True, return_indices=True)
    return common, np.asarray(values_a)[ia], np.asarray(values_b)[ib]
