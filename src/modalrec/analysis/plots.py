"""Matplotlib figures (Agg backend, PNG) of the analyses: preservation densities, similarity heat maps, t-SNE."""

from __future__ import annotations

import numpy as np

from modalrec.reporting.plots import Figure, plt


def _kde(values: np.ndarray, grid: np.ndarray, periodic: bool = False) -> np.ndarray:
    from scipy.stats import gaussian_kde

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2 or np.ptp(v) == 0:
        out = np.zeros_like(grid)
        if v.size:
            out[np.argmin(np.abs(grid - v[0]))] = 1.0 / max(grid[1] - grid[0], 1e-12)
        return out
    if periodic:  # Gaussian kernels wrapped around the circle, Silverman bandwidth of the angles themselves
        iqr = np.subtract(*np.percentile(v, [75, 25]))
        h = 0.9 * min(v.std(), iqr / 1.34 if iqr > 0 else v.std()) * v.size ** (-0.2)
        h = max(h, 1e-3)
        dens = np.zeros_like(grid, dtype=np.float64)
        for shift in (-2 * np.pi, 0.0, 2 * np.pi):
            z = (grid[:, None] - v[None, :] - shift) / h
            dens += np.exp(-0.5 * z * z).sum(axis=1)
        return dens / (v.size * h * np.sqrt(2 * np.pi))
    return gaussian_kde(v)(grid)


def preservation_density(
    diffs: dict[str, dict[str, np.ndarray]], title: str = "Modality preservation (MARIO Fig. 3)"
) -> Figure:
    """Density of per-item mean |f-sim − p-sim|, one panel per modality, one curve per run."""
    modalities = sorted({m for per in diffs.values() for m in per})
    fig, axes = plt.subplots(1, len(modalities), figsize=(4.6 * len(modalities), 3.4), squeeze=False)
    for ax, m in zip(axes[0], modalities, strict=True):
        allv = np.concatenate([per[m] for per in diffs.values() if m in per])
        lo, hi = float(np.min(allv)), float(np.max(allv))
        pad = 0.1 * (hi - lo) + 1e-3
        grid = np.linspace(max(0.0, lo - pad), hi + pad, 300)
        for run, per in diffs.items():
            if m in per:
                ax.plot(grid, _kde(per[m], grid), label=f"{run} (mean {np.mean(per[m]):.3f})")
        ax.set_title(f"{m}")
        ax.set_xlabel("per-item mean |f-sim − p-sim|")
        ax.set_ylabel("density")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def similarity_heatmaps(sims: dict[str, np.ndarray], title: str = "") -> Figure:
    """Item–item cosine-similarity heat maps of the same item sample, one per modality (MARIO Fig. 2)."""
    names = list(sims)
    fig, axes = plt.subplots(1, len(names), figsize=(3.9 * len(names) + 0.8, 3.9), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        im = ax.imshow(sims[name], cmap="coolwarm", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(name)
        ax.set_xlabel("sampled item")
        ax.set_ylabel("sampled item")
    fig.colorbar(im, ax=list(axes[0]), fraction=0.02, pad=0.02, label="cosine similarity")
    if title:
        fig.suptitle(title)
    return fig


def tsne_panels(points: dict[str, np.ndarray], kind: str, modality: str) -> Figure:
    """Runs side by side: t-SNE scatter on top, KDE of atan2(y, x) below (MeAIM Figs. 5–6)."""
    names = list(points)
    fig, axes = plt.subplots(
        2, len(names), figsize=(4.2 * len(names), 6.2), squeeze=False, gridspec_kw={"height_ratios": [3, 1.3]}
    )
    grid = np.linspace(-np.pi, np.pi, 361)
    color = "tab:blue" if kind == "users" else "tab:orange"
    for j, name in enumerate(names):
        p = points[name]
        ax = axes[0][j]
        ax.scatter(p[:, 0], p[:, 1], s=6, alpha=0.6, color=color, linewidths=0)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(f"{name}\n{len(p)} {kind}, {modality} representation", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ang = np.arctan2(p[:, 1], p[:, 0])
        ax2 = axes[1][j]
        ax2.plot(grid, _kde(ang, grid, periodic=True), color=color)
        ax2.fill_between(grid, _kde(ang, grid, periodic=True), alpha=0.25, color=color)
        ax2.set_xlim(-np.pi, np.pi)
        ax2.set_xticks([-np.pi, -np.pi / 2, 0, np.pi / 2, np.pi], ["−π", "−π/2", "0", "π/2", "π"])
        ax2.set_xlabel("angle atan2(y, x)")
        ax2.set_ylabel("density")
        ax2.grid(alpha=0.3)
    top = max(a.get_ylim()[1] for a in axes[1])
    for a in axes[1]:  # one density scale, so the runs compare at a glance
        a.set_ylim(0, top)
    fig.tight_layout()
    return fig
