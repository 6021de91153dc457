"""t-SNE of one modality's user and item representations (MeAIM supplement Figs. 5–6).

For each run: a seeded random sample of users and of items (the same ids for every run
of the same dataset), their representations of the chosen modality, 2-D t-SNE
(scikit-learn, fixed ``random_state``, PCA initialisation), centred at the origin. Two
figures — users and items — each with the runs side by side: the scatter on top and the
KDE of the angle atan2(y, x) of the centred points below (a flat density = points spread
uniformly around the centre).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from modalrec.analysis.representations import modality_tables, pick_modality
from modalrec.errors import ModalrecError
from modalrec.reporting.writer import ReportWriter


def tsne_2d(x: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE of the rows of ``x`` (perplexity capped below n/3), centred at the origin."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:  # pragma: no cover - depends on the install
        raise ModalrecError("t-SNE needs scikit-learn: pip install 'modalrec[prepare]'") from None
    n = x.shape[0]
    if n < 5:
        raise ModalrecError(f"t-SNE needs at least 5 points; got {n}")
    perp = float(min(perplexity, max(2.0, (n - 1) / 3.0)))
    y = TSNE(n_components=2, perplexity=perp, random_state=seed, init="pca").fit_transform(
        np.asarray(x, dtype=np.float32)
    )
    return y - y.mean(axis=0, keepdims=True)


def analyze_tsne(
    runs: list[str | Path],
    modality: str = "text",
    n_users: int = 500,
    n_items: int = 500,
    seed: int = 0,
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> tuple[dict[str, dict[str, np.ndarray]], list[Path]]:
    """Write ``tsne_users.png``, ``tsne_items.png`` and the 2-D points (``tsne_points.npz``).

    The default output folder is ``<first run>/analysis``.
    """
    from modalrec.analysis import plots
    from modalrec.run_load import load_run

    if not runs:
        raise ModalrecError("give at least one run directory")
    loaded = [load_run(r, device=device, data_dir=data_dir) for r in runs]
    names = [r.model.name for r in loaded]
    labels = [n if names.count(n) == 1 else f"{n} ({r.path.name})" for n, r in zip(names, loaded, strict=True)]
    points: dict[str, dict[str, np.ndarray]] = {"users": {}, "items": {}}
    arrays: dict[str, np.ndarray] = {}
    for run, label in zip(loaded, labels, strict=True):
        used, (users, items) = pick_modality(modality_tables(run.model), modality, f"{run.path} ({run.model.name})")
        rng = np.random.default_rng(seed)
        u_ids = np.sort(rng.choice(run.dataset.n_users, size=min(n_users, run.dataset.n_users), replace=False))
        i_ids = np.sort(rng.choice(run.dataset.n_items, size=min(n_items, run.dataset.n_items), replace=False))
        log(f"{label}: t-SNE of the {used} representation of {len(u_ids)} users and {len(i_ids)} items")
        if users is None:
            raise ModalrecError(f"{run.path}: {run.model.name} has no user table for {modality!r}")
        points["users"][label] = tsne_2d(users[u_ids], seed)
        points["items"][label] = tsne_2d(items[i_ids], seed)
        arrays[f"{label}|users"] = points["users"][label]
        arrays[f"{label}|items"] = points["items"][label]
        arrays[f"{label}|user_ids"] = u_ids
        arrays[f"{label}|item_ids"] = i_ids
    writer = ReportWriter(Path(out) if out is not None else Path(runs[0]) / "analysis")
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    writer.write_bytes(f"tsne_points_{modality}.npz", buf.getvalue())
    for kind in ("users", "items"):
        writer.save_figure(f"tsne_{modality}_{kind}.png", plots.tsne_panels(points[kind], kind, modality))
    return points, list(writer.written)
