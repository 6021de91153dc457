"""MARIO's motivation analysis (Fig. 2): do the modalities agree on which items are similar?

For every pair of modalities (the dataset's content features, plus the interaction
modality of a trained run when given), the Pearson correlation between their pairwise
item cosine similarities over all item pairs j < k — accumulated in row blocks, so memory
stays O(block × I); above ``max_items`` items a seeded random sample of that many items is
used. The figure shows the similarity matrices of one random sample of items, one heat map
per modality, items in the same order in every panel.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from modalrec.analysis.preservation import normalize_rows
from modalrec.errors import ModalrecError
from modalrec.reporting.writer import ReportWriter


def similarity_correlations(tables: dict[str, np.ndarray], max_cells: int = 1 << 22) -> dict[tuple[str, str], float]:
    """Pearson r between the pairwise cosine similarities (pairs j < k) of each pair of tables."""
    names = list(tables)
    normed = {m: normalize_rows(x).astype(np.float32) for m, x in tables.items()}  # float32 GEMMs, float64 sums
    n = next(iter(normed.values())).shape[0]
    if any(x.shape[0] != n for x in normed.values()):
        raise ModalrecError("all tables must have one row per item")
    pairs = list(itertools.combinations(names, 2))
    acc = {p: np.zeros(5) for p in pairs}  # Σx, Σy, Σx², Σy², Σxy
    count = 0
    block = max(1, min(n, max_cells // max(n, 1)))
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        upper = np.arange(n)[None, :] > np.arange(lo, hi)[:, None]  # k > j
        sims = {m: (x[lo:hi] @ x.T)[upper].astype(np.float64) for m, x in normed.items()}
        count += int(upper.sum())
        for a, b in pairs:
            x, y = sims[a], sims[b]
            acc[(a, b)] += [x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum()]
    out = {}
    for p, (sx, sy, sxx, syy, sxy) in acc.items():
        cov = sxy - sx * sy / count if count else math.nan
        vx, vy = (sxx - sx * sx / count, syy - sy * sy / count) if count else (math.nan, math.nan)
        out[p] = float(cov / math.sqrt(vx * vy)) if count and vx > 0 and vy > 0 else math.nan
    return out


def analyze_modalities(
    data_dir: str | Path,
    run: str | Path | None = None,
    out: str | Path | None = None,
    max_items: int = 4000,
    heatmap_items: int = 40,
    seed: int = 0,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> tuple[dict[tuple[str, str], float], list[Path]]:
    """Correlation table (Markdown/CSV/JSON) and similarity heat maps of a dataset's modalities.

    The default output folder is ``<run>/analysis`` with a run, else ``reports/modalities-<dataset>``.
    """
    from modalrec.analysis import plots
    from modalrec.analysis.representations import interaction_items
    from modalrec.data.dataset import load_dataset

    if run is not None:
        from modalrec.run_load import load_run

        loaded = load_run(run, device=device, data_dir=data_dir)  # checks the data is the run's
        ds = loaded.dataset
    else:
        loaded, ds = None, load_dataset(data_dir)
    tables = {m: np.asarray(x) for m, x in ds.features.items()}
    if loaded is not None:
        tables[f"interaction ({loaded.model.name})"] = interaction_items(loaded.model)
    if len(tables) < 2:
        raise ModalrecError(
            f"{data_dir}: need at least two modalities to compare (found {', '.join(tables) or 'none'}); "
            "pass --run to add the interaction modality of a trained model"
        )
    rng = np.random.default_rng(seed)
    n = ds.n_items
    sample = np.sort(rng.choice(n, size=max_items, replace=False)) if n > max_items else np.arange(n)
    log(
        f"{ds.name}: {len(tables)} modalities, correlations over {len(sample)} items "
        f"({len(sample) * (len(sample) - 1) // 2:,} pairs)"
    )
    corr = similarity_correlations({m: x[sample] for m, x in tables.items()})
    writer = ReportWriter(
        Path(out)
        if out is not None
        else (Path(run) / "analysis" if run is not None else Path("reports") / f"modalities-{ds.name}")
    )
    names = list(tables)
    md = [
        f"**Pearson correlation of pairwise item similarities** on {ds.name} ({len(sample)} items"
        + (", random sample" if len(sample) < n else "")
        + ")",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for a in names:
        cells = []
        for b in names:
            v = 1.0 if a == b else corr.get((a, b), corr.get((b, a), math.nan))
            cells.append(f"{v:.4f}")
        md.append(f"| {a} | " + " | ".join(cells) + " |")
    writer.write_text("modality_correlations.md", "\n".join(md) + "\n")
    writer.write_text(
        "modality_correlations.csv",
        "modality_a,modality_b,pearson_r,items\n"
        + "".join(f"{a},{b},{r:.6f},{len(sample)}\n" for (a, b), r in corr.items()),
    )
    writer.write_json("modality_correlations.json", {f"{a} vs {b}": r for (a, b), r in corr.items()})
    k = min(heatmap_items, n)
    shown = np.sort(rng.choice(n, size=k, replace=False))
    sims = {}
    for m, x in tables.items():
        xs = normalize_rows(x[shown])
        sims[m] = xs @ xs.T
    title = f"{ds.name}: item–item cosine similarity of {k} random items"
    writer.save_figure("modality_similarity.png", plots.similarity_heatmaps(sims, title))
    return corr, list(writer.written)
