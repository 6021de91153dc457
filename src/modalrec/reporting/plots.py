"""Matplotlib for reports: the non-interactive backend (PNG files, no display) and the sensitivity figures.

Importing this module selects the Agg backend before pyplot is loaded, so every figure a command draws
(sweeps, tuning, analyses) renders the same with or without a display.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from modalrec.reporting.labels import metric_label  # noqa: E402


def tick_label(v: object) -> str:
    """A parameter value as an axis tick: floats in their shortest form (``1e-05``, ``0.5``), others as text."""
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def sweep_lines(
    param: str,
    values: Sequence,
    mean: dict[str, np.ndarray],
    std: dict[str, np.ndarray] | None = None,
    title: str = "",
    metrics: Sequence[str] | None = None,
    selected: int | None = None,
) -> Figure:
    """One-parameter sensitivity: a panel per metric, test metric vs. value (± std over seeds).

    ``metrics`` are the panels, in order (default: those of ``mean``); ``selected`` (an index into
    ``values``) draws a dashed line at the point best on validation.
    """
    metrics = list(mean) if metrics is None else metrics
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    x = np.arange(len(values))
    for ax, m in zip(axes[0], metrics, strict=True):
        y = mean[m]
        err = std[m] if std is not None and np.any(std[m] > 0) else None
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color="tab:blue")
        if selected is not None:
            ax.axvline(x[selected], color="tab:red", linestyle="--", linewidth=1, label="selected on validation")
        ax.set_xticks(x, [tick_label(v) for v in values], rotation=30 if len(values) > 6 else 0)
        ax.set_xlabel(param)
        ax.set_title(metric_label(m))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test value (mean ± std over seeds)")
    if selected is not None:
        axes[0][0].legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def sweep_heatmaps(
    params: tuple[str, str],
    values: tuple[Sequence, Sequence],
    grids: dict[str, np.ndarray],
    title: str = "",
    metrics: Sequence[str] | None = None,
    selected: tuple[int, int] | None = None,
) -> Figure:
    """Two-parameter sensitivity: a heat map per metric (rows = first parameter), values annotated.

    ``metrics`` are the panels, in order (default: those of ``grids``); ``selected`` (row, column)
    outlines the cell best on validation in red.
    """
    metrics = list(grids) if metrics is None else metrics
    n0, n1 = len(values[0]), len(values[1])
    cell = 0.55
    w = max(3.2, 1.2 + cell * n1)
    h = max(2.8, 1.2 + cell * n0)
    fig, axes = plt.subplots(1, len(metrics), figsize=(w * len(metrics) + 0.6, h + 0.4), squeeze=False)
    for ax, m in zip(axes[0], metrics, strict=True):
        g = grids[m]
        im = ax.imshow(g, cmap="viridis", aspect="auto", origin="upper")
        ax.set_xticks(np.arange(n1), [tick_label(v) for v in values[1]], rotation=30 if n1 > 5 else 0)
        ax.set_yticks(np.arange(n0), [tick_label(v) for v in values[0]])
        ax.set_xlabel(params[1])
        ax.set_ylabel(params[0])
        ax.set_title(metric_label(m))
        if n0 * n1 <= 64:
            _annotate_cells(ax, g)
        if selected is not None:
            r, c = selected
            ax.add_patch(plt.Rectangle((c - 0.45, r - 0.45), 0.9, 0.9, fill=False, edgecolor="red", linewidth=2.5))
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _annotate_cells(ax, g: np.ndarray) -> None:
    """Write each cell's value on a heat map, white on the darker 60 % of the colour scale."""
    lo, hi = np.nanmin(g), np.nanmax(g)
    for i in range(g.shape[0]):
        for j in range(g.shape[1]):
            if not math.isnan(g[i, j]):
                dark = hi > lo and (g[i, j] - lo) / (hi - lo) < 0.6
                ax.text(
                    j, i, f"{g[i, j]:.4f}", ha="center", va="center", fontsize=7, color="white" if dark else "black"
                )
