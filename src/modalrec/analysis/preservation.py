"""Modality preservation (MARIO Table 6, Fig. 3; docs/models/mario.md#modality-preservation-analysis).

For a trained model with item representation f (``Recommender.item_representation``) and
a content modality m with raw features F_m: p-sim(j, k) = cos(F_m(j), F_m(k)), f-sim(j, k)
= cos(f_j, f_k), and diff_j = mean over k ≠ j of |f-sim − p-sim|. Computed in blocks of
item rows — memory is O(block × I), never an I × I matrix. A zero vector has cosine 0 with
everything. The report gives mean diff over all items and over items whose training
degree exceeds ``min_degree``, per modality, and the density of diff_j.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modalrec.errors import ModalrecError
from modalrec.reporting.writer import ReportWriter


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float64); zero rows stay zero."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def preservation_diffs(
    item_repr: np.ndarray, features: np.ndarray, max_cells: int = 1 << 22, device: str = "cpu"
) -> np.ndarray:
    """diff_j = mean_{k≠j} |cos(f_j, f_k) − cos(F_j, F_k)| for every item j, in row blocks.

    ``max_cells`` bounds the block size: each block holds at most that many similarities.
    The similarity GEMMs run in float32 with torch on ``device``; the sums are float64.
    """
    import torch

    n = np.asarray(item_repr).shape[0]
    if np.asarray(features).shape[0] != n:
        raise ModalrecError(f"item representation has {n} rows but the features have {np.asarray(features).shape[0]}")
    if n < 2:
        return np.zeros(n)
    f = torch.from_numpy(normalize_rows(item_repr).astype(np.float32)).to(device)
    p = torch.from_numpy(normalize_rows(features).astype(np.float32)).to(device)
    block = max(1, min(n, max_cells // n))
    out = np.empty(n)
    with torch.no_grad():
        for lo in range(0, n, block):
            hi = min(n, lo + block)
            d = (f[lo:hi] @ f.T - p[lo:hi] @ p.T).abs_()
            d[torch.arange(hi - lo), torch.arange(lo, hi)] = 0.0  # k ≠ j
            out[lo:hi] = d.double().sum(dim=1).cpu().numpy() / (n - 1)
    return out


@dataclass
class PreservationResult:
    """Per-modality per-item diffs of one run, with the all-item and high-degree means."""

    label: str
    model: str
    run: Path
    diffs: dict[str, np.ndarray]
    mean_all: dict[str, float]
    mean_high: dict[str, float]
    n_high: int
    min_degree: float


def model_preservation(
    model,
    features: dict[str, np.ndarray],
    degree: np.ndarray,
    min_degree: float,
    label: str = "",
    run: Path = Path(),
    device: str = "cpu",
) -> PreservationResult:
    """Preservation of every content modality for one model (anything with ``item_representation()``)."""
    import torch

    with torch.no_grad():
        f = model.item_representation().detach().float().cpu().numpy()
    high = np.asarray(degree) > min_degree
    diffs = {m: preservation_diffs(f, x, device=device) for m, x in features.items()}
    return PreservationResult(
        label or getattr(model, "name", "model"),
        getattr(model, "name", "model"),
        Path(run),
        diffs,
        {m: float(d.mean()) for m, d in diffs.items()},
        {m: float(d[high].mean()) if high.any() else float("nan") for m, d in diffs.items()},
        int(high.sum()),
        float(min_degree),
    )


def default_min_degree(degree: np.ndarray) -> float:
    """Default threshold: the 90th percentile of the items' training degree (the top ~10 %)."""
    return float(np.floor(np.percentile(degree, 90)))


def _labels(runs) -> list[str]:
    names = [r.model.name for r in runs]
    return [n if names.count(n) == 1 else f"{n} ({r.path.name})" for n, r in zip(names, runs, strict=True)]


def analyze_preservation(
    runs: list[str | Path],
    min_degree: float | None = None,
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> tuple[list[PreservationResult], list[Path]]:
    """MARIO Table 6 and Fig. 3 for each run; writes preservation.{md,csv,json} and the density PNG.

    The default output folder is ``<first run>/analysis``.
    """
    from modalrec.analysis import plots
    from modalrec.run_load import load_run

    if not runs:
        raise ModalrecError("give at least one run directory")
    loaded = [load_run(r, device=device, data_dir=data_dir) for r in runs]
    labels = _labels(loaded)
    results = []
    for run, label in zip(loaded, labels, strict=True):
        ds = run.dataset
        if not ds.features:
            raise ModalrecError(f"{run.path}: dataset {ds.name!r} has no content modality to compare with")
        degree = np.asarray(ds.train_matrix.sum(axis=0)).ravel()
        thr = default_min_degree(degree) if min_degree is None else float(min_degree)
        log(f"{label}: {ds.n_items} items, high-degree = training degree > {thr:g}")
        results.append(model_preservation(run.model, dict(ds.features), degree, thr, label, run.path, device))
    writer = ReportWriter(Path(out) if out is not None else Path(runs[0]) / "analysis")
    modalities = list(dict.fromkeys(m for r in results for m in r.diffs))
    head = [
        "run",
        *(f"{m} (all)" for m in modalities),
        *(f"{m} (degree > thr)" for m in modalities),
        "high-degree items",
    ]
    md = [
        "**Modality preservation** (MARIO Table 6): mean over items of mean_k |f-sim − p-sim| — lower keeps more "
        "of the modality's similarity structure.",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    csv = ["run,model,path,modality,mean_all,mean_high_degree,min_degree,n_high_degree,n_items"]
    for r in results:
        cells = [f"{r.mean_all[m]:.4f}" for m in modalities] + [f"{r.mean_high[m]:.4f}" for m in modalities]
        md.append(f"| {r.label} | " + " | ".join(cells) + f" | {r.n_high} (degree > {r.min_degree:g}) |")
        for m in modalities:
            csv.append(
                f"{r.label},{r.model},{r.run},{m},{r.mean_all[m]:.6f},{r.mean_high[m]:.6f},{r.min_degree:g},"
                f"{r.n_high},{r.diffs[m].size}"
            )
    writer.write_text("preservation.md", "\n".join(md) + "\n")
    writer.write_text("preservation.csv", "\n".join(csv) + "\n")
    writer.write_json(
        "preservation.json",
        [
            {
                "run": str(r.run),
                "label": r.label,
                "model": r.model,
                "min_degree": r.min_degree,
                "n_high": r.n_high,
                "mean_all": r.mean_all,
                "mean_high_degree": r.mean_high,
            }
            for r in results
        ],
    )
    writer.save_figure("preservation_density.png", plots.preservation_density({r.label: r.diffs for r in results}))
    return results, list(writer.written)
