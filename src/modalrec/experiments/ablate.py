"""The papers' ablations in one table (MARIO RQ2–RQ5, MeAIM supplement).

MARIO: full model; w/o each content modality (dropped from attention and from the
preservation loss); fusion mean / max / fc instead of attention; mu = 0 (no modality
preservation); each other backbone (bprmf, ngcf). MeAIM: full; -CK (beta_cl = 0 and
lambda_kl = 0); CL only (lambda_kl = 0); KL only (beta_cl = 0); w/o kNN (use_knn off);
MF ID branch (cf_model = mf). Every variant keeps the rest of the configuration, so
``--set`` overrides (e.g. epochs) apply to all rows. The Improv. % row and the paired
t-tests compare the full model with the other rows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from modalrec.config import resolve_config
from modalrec.data.dataset import Dataset, load_dataset
from modalrec.errors import ModalrecError
from modalrec.experiments.campaign import Experiment
from modalrec.experiments.entries import Entry
from modalrec.experiments.executors import Executor
from modalrec.experiments.store import default_report_dir
from modalrec.experiments.table_report import Report, write_table_report
from modalrec.experiments.tables import DEFAULT_METRICS
from modalrec.models import get_model_class
from modalrec.reporting.writer import ReportWriter

FULL = "full"


def mario_variants(dataset: Dataset, base: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, overrides) of MARIO's ablations on ``dataset``."""
    cfg = resolve_config("mario", dataset.name, base)
    content = list(dataset.features)
    active = cfg.modalities if cfg.modalities is not None else [*content, "interaction"]
    if isinstance(active, str):
        active = [active]
    rows: list[tuple[str, dict[str, Any]]] = [(FULL, {})]
    for m in content:
        if m in active and len(active) > 1:
            rows.append((f"w/o {m}", {"modalities": [a for a in active if a != m]}))
    for fusion in ("mean", "max", "fc"):
        if fusion != cfg.fusion:
            rows.append((f"fusion {fusion}", {"fusion": fusion}))
    if float(cfg.mu) != 0.0:
        rows.append(("mu = 0", {"mu": 0.0}))
    for backbone in ("bprmf", "ngcf", "lightgcn"):
        if backbone != cfg.backbone:
            rows.append((f"backbone {backbone}", {"backbone": backbone}))
    return rows


def meaim_variants(dataset: Dataset, base: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, overrides) of MeAIM's ablations."""
    cfg = resolve_config("meaim", dataset.name, base)
    rows: list[tuple[str, dict[str, Any]]] = [
        (FULL, {}),
        ("-CK (no CL, no KL)", {"beta_cl": 0.0, "lambda_kl": 0.0}),
        ("CL only", {"lambda_kl": 0.0}),
        ("KL only", {"beta_cl": 0.0}),
    ]
    rows.append(("w/o kNN" if cfg.use_knn else "with kNN", {"use_knn": not cfg.use_knn}))
    rows.append(
        (
            "MF ID branch" if cfg.cf_model == "lightgcn" else "LightGCN ID branch",
            {"cf_model": "mf" if cfg.cf_model == "lightgcn" else "lightgcn"},
        )
    )
    return rows


ABLATIONS: dict[str, Callable[[Dataset, dict[str, Any]], list[tuple[str, dict[str, Any]]]]] = {
    "MARIO": mario_variants,
    "MeAIM": meaim_variants,
}


def run_ablation(
    model: str,
    data_dir: str | Path,
    seeds: list[int] | None = None,
    out: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    device: str = "cpu",
    cache_dir: str | Path | bool | None = None,
    log: Callable[[str], None] = print,
    executor: Executor | None = None,
    progress: bool = False,
) -> Report:
    """Train every ablation variant of ``model`` (resumable) and write one table report."""
    name = get_model_class(model).name
    if name not in ABLATIONS:
        raise ModalrecError(f"no ablation defined for {name} (available: {', '.join(ABLATIONS)})")
    dataset = load_dataset(data_dir)
    base = dict(overrides or {})
    variants = ABLATIONS[name](dataset, base)
    out = Path(out) if out is not None else default_report_dir("ablate", dataset.name, name)
    exp = Experiment(data_dir, out, seeds or [999], base, device, cache_dir, log, dataset, None, executor, progress)
    entries = [Entry(label, name, ov) for label, ov in variants]
    for e in entries:
        exp.check(e)
    log(f"ablation of {name} on {dataset.name}: {len(entries)} variants, seeds {exp.seeds} → {out}")
    results = [r for r in exp.run_entries(entries) if r is not None]
    title = f"{name} ablation on {dataset.name}: test metrics"
    return write_table_report(exp, results, FULL, metrics, title, ReportWriter(out), "ablation")
