"""Paired t-tests over per-user metrics (MARIO reports such tests against the best baseline).

:func:`paired_ttest` is the test itself; :func:`significance` runs it between a table's target
row and every other row over the per-user test metrics of their runs (averaged over seeds), and
:func:`significance_markdown`/:func:`significance_csv` write the results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from modalrec.experiments.entries import EntryResult
from modalrec.experiments.tables import DEFAULT_METRICS
from modalrec.reporting.labels import metric_label
from modalrec.run_files import per_user_metrics

ALPHA = 0.05  # significance level of the tests
MARK = "*"  # the marker of a significant cell


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


def per_user_mean(result: EntryResult, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(users, per-user test metric averaged over the seeds' runs) of an entry."""
    users, total, count = None, None, 0
    for rec in result.records:
        pu = per_user_metrics(rec["run_dir"], "test")
        u, v = pu["users"], pu[metric].astype(np.float64)
        if users is None:
            users, total = u, v.copy()
        else:
            users, total, v = align_users(users, total, u, v)
            total = total + v
        count += 1
    return users, total / max(count, 1)


def significance(
    results: list[EntryResult], target: str, metrics: tuple[str, ...] = DEFAULT_METRICS
) -> dict[str, dict[str, dict]]:
    """Paired t-tests of the target row against every other row over per-user test metrics.

    Per user, each row's metric is averaged over its seeds; the test pairs the users both
    rows evaluated (all test users of the dataset). Returns ``{other: {metric: {...}}}``.
    """
    by_label = {r.entry.label: r for r in results}
    out: dict[str, dict[str, dict]] = {}
    for metric in metrics:
        tu, tv = per_user_mean(by_label[target], metric)
        for r in results:
            if r.entry.label == target:
                continue
            ou, ov = per_user_mean(r, metric)
            common, a, b = align_users(tu, tv, ou, ov)
            t = paired_ttest(a, b)
            out.setdefault(r.entry.label, {})[metric] = {
                "t": t.statistic,
                "p": t.pvalue,
                "df": t.df,
                "mean_diff": t.mean_diff,
                "users": int(common.size),
                "significant": bool(t.pvalue < ALPHA) if not math.isnan(t.pvalue) else False,
            }
    return out


def significance_markdown(sig: dict[str, dict[str, dict]], target: str, metrics: tuple[str, ...]) -> str:
    """The t-test p-values as a Markdown table (rows = other rows, columns = metrics)."""
    lines = [
        f"Paired two-sided t-test of **{target}** against each other row over per-user test metrics "
        f"(per-user values averaged over seeds); p-values, `{MARK}` where p < {ALPHA}.",
        "",
        "| vs | " + " | ".join(metric_label(m) for m in metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for other, per in sig.items():
        cells = []
        for m in metrics:
            p = per[m]["p"]
            cells.append("–" if math.isnan(p) else f"{p:.2e}{MARK if per[m]['significant'] else ''}")
        lines.append(f"| {other} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def significance_csv(sig: dict[str, dict[str, dict]], target: str) -> str:
    """The t-tests as CSV: one line per (other row, metric) with t, p, df, mean difference, users."""
    rows = ["target,other,metric,t,p,df,mean_diff,users,significant"]
    for other, per in sig.items():
        for m, s in per.items():
            rows.append(
                f"{target},{other},{m},{s['t']:.6g},{s['p']:.6g},{s['df']},{s['mean_diff']:.6g},{s['users']},"
                f"{int(s['significant'])}"
            )
    return "\n".join(rows) + "\n"
