"""Regenerate docs/reproduction.md: the published tables reproduced with `modalrec benchmark`.

    python benchmarks/reproduce.py                       # every part, then the report
    python benchmarks/reproduce.py --parts baby          # one part (the others keep their results)
    python benchmarks/reproduce.py --render-only         # rewrite the report from finished runs
    python benchmarks/reproduce.py --executor ray        # train a row's seeds side by side (one per core)
    python benchmarks/reproduce.py --quick --out /tmp/r  # tiny synthetic end-to-end check (CI)

Each part is one `modalrec benchmark --plan benchmarks/reproduction/<plan>.yaml` call on
one dataset folder (found under ``--data-root``, else ``$MODALREC_DATA`` or the tests'
``$MODALREC_TEST_DATA``, else ``../shared/data`` beside the checkout). Every finished run is stored under
``<out>/<part>/results`` and is never trained again, so an interrupted reproduction resumes
where it stopped; a part whose dataset is missing is reported as such, not skipped
silently. Finished runs are also kept, compactly, in the committed record
``benchmarks/reproduction/record/<part>/`` (each run's result, config, metrics and per-user
vectors; no weights), and restored into a fresh report folder first: a run finished on one
checkout is never trained again on another, and the report re-renders from the record alone.
A part with neither runs nor a record keeps its section of the existing report, said so.
Model selection is on validation only (the benchmark's rule); test metrics are read once,
for the report. These are long CPU runs (hours): a generated artefact, not CI.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PLANS = ROOT / "benchmarks" / "reproduction"
METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
SEEDS = "999,1000,1001"

# The MeAIM paper's supplement Table I (Recall@10 / NDCG@10 on the MMRec Baby split).
PUBLISHED_BABY_AT10 = {
    "BPR": (0.0379, 0.0202),
    "LightGCN": (0.0464, 0.0251),
    "LayerGCN": (0.0507, 0.0273),
}
# Other published Baby figures (Recall@20 / NDCG@20): the MMRec toolbox's results table (A)
# and the DA-MRS authors' logged runs (B); NGCF is not in Table I.
PUBLISHED_BABY_AT20 = {
    "BPR": {"A": (0.0575, 0.0249), "B": (0.0570, 0.0251)},
    "LightGCN": {"A": (0.0754, 0.0328), "B": (0.0757, 0.0327)},
    "NGCF": {"B": (0.0601, 0.0239)},
}
# Peer toolboxes run on the same split (issue #13): the issue's Cornac 3.0.1 BPR figure (train +
# valid masked), and benchmarks/peers/cornac_bpr.py's runs of it per factor count.
PEER_SCIENTIFIC_BPR = {"Cornac 3.0.1 BPR (SGD, lr 0.05, 400 epochs; the issue's figure)": {"recall@20": 0.1874}}
PEER_RUNS = PLANS / "peer_cornac_bpr.json"
# Allowed shortfall from the published figure.
TOLERANCE = 0.03


@dataclass
class Part:
    """One benchmark call: a dataset folder, a plan of rows and extra CLI options."""

    name: str
    title: str
    dataset: str  # folder under the data root, or "synthetic"
    plan: str
    options: list[str] = field(default_factory=list)
    targets: tuple[str, ...] = ()  # rows tested against the best other row
    seeds: str | None = None  # instead of --seeds (a cheaper part)
    note: str = ""  # printed under the section title: what the reader would otherwise ask

    @property
    def cold(self) -> bool:
        """A cold-items part: rows ranked by test Recall@20 and judged against Popularity and Random."""
        return "cold-items" in self.options


PARTS = [
    Part(
        "baby",
        "Amazon Baby (MMRec split): ID-only models against the published figures",
        "amazon_baby",
        "baby.yaml",
    ),
    Part(
        "scientific_mm",
        "amazon_scientific_mm (CLIP image + text): all 17 models",
        "amazon_scientific_mm",
        "scientific_mm.yaml",
        ["--modalities", "image,text"],
        targets=("MARIO", "MeAIM"),
    ),
    Part(
        "scientific_mm-bpr-peer",
        "amazon_scientific_mm, BPR against the best peer toolbox (train and valid items masked at test)",
        "amazon_scientific_mm",
        "bpr_peer.yaml",
        ["--set", "mask_valid_at_test=true"],
    ),
    Part(
        "mario-scale-scientific_mm",
        "MARIO content scale control: amazon_scientific_mm (image + text)",
        "amazon_scientific_mm",
        "mario_scale.yaml",
        ["--modalities", "image,text"],
        targets=("MARIO",),
    ),
    Part(
        "mario-scale-scientific",
        "MARIO content scale control: amazon_scientific (text only)",
        "amazon_scientific",
        "mario_scale.yaml",
        targets=("MARIO",),
        seeds="999",
    ),
    Part(
        "mario-scale-synthetic",
        "MARIO content scale control: the built-in synthetic dataset",
        "synthetic",
        "mario_scale.yaml",
        targets=("MARIO",),
        seeds="999",
    ),
    Part(
        "cold-items-scientific_mm",
        "Cold-start items: amazon_scientific_mm (image + text), 20 % of the items held out of training",
        "amazon_scientific_mm",
        "cold_items.yaml",
        ["--modalities", "image,text", "--protocol", "cold-items", "--cold-ratio", "0.2"],
    ),
    Part(
        "cold-items-scientific",
        "Cold-start items: amazon_scientific (text only), 20 % of the items held out of training",
        "amazon_scientific",
        "cold_items_text.yaml",
        ["--protocol", "cold-items", "--cold-ratio", "0.2"],
        note="MeAIM is not in this table: it weighs the scores of ID and at least two content modalities "
        "against each other (its `min_modalities` is 2), and this dataset has text only.",
    ),
]


def data_root(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    for var in ("MODALREC_DATA", "MODALREC_TEST_DATA"):  # the tests' setting names the same folder
        if os.environ.get(var):
            return Path(os.environ[var])
    return ROOT.parent / "shared" / "data"


def modalrec_cmd() -> list[str]:
    return [sys.executable, "-m", "modalrec"]


def dataset_folder(part: Part, root: Path, out: Path, quick: bool) -> Path | None:
    """The part's dataset folder (synthetic ones are generated once under ``out/data``)."""
    if part.dataset == "synthetic" or quick:
        folder = out / "data" / ("synthetic-quick" if quick else "synthetic")
        if not folder.exists():
            size = ["--users", "60", "--items", "80"] if quick else []
            subprocess.run([*modalrec_cmd(), "data", "synth", str(folder), *size], check=True)
        return folder
    folder = root / part.dataset
    return folder if folder.is_dir() else None


def run_part(
    part: Part,
    folder: Path,
    out: Path,
    seeds: str,
    quick: bool,
    reuse_only: bool = False,
    executor: list[str] | None = None,
) -> list[str]:
    """Run (or resume) one part; returns the command it ran.

    ``reuse_only`` trains nothing and rewrites the part's table from its finished runs
    (rows with unfinished runs are left out and the summary is marked incomplete).
    ``executor``: the benchmark's executor options when it trains (``--executor ray
    --cpus-per-trial N`` runs a row's seeds side by side); they do not change any result.
    """
    cmd = [
        *modalrec_cmd(),
        "benchmark",
        "--plan",
        str(PLANS / part.plan),
        "--data",
        str(folder),
        "--seeds",
        seeds,
        "--out",
        str(out / part.name),
        *part.options,
    ]
    if quick:
        cmd += ["--epochs", "1"]
        cmd = [c for c in cmd if c not in ("--modalities", "image,text")]
    if reuse_only:
        result = subprocess.run([*cmd, "--reuse-only"], capture_output=True, text=True)
        if result.returncode != 0:
            print(f"part {part.name}: nothing finished yet", flush=True)
        return cmd
    print("$ " + shlex.join(cmd + (executor or [])), flush=True)
    code = subprocess.run(cmd + (executor or [])).returncode
    if code != 0:  # the benchmark printed its one-line reason; stop here, keep what finished
        sys.exit(f"part {part.name}: `modalrec benchmark` exited with status {code} (its message is above)")
    return cmd


# ---------------------------------------------------------------------- record
RECORD = PLANS / "record"
RECORD_RUN_DIRS = "files"  # not "runs": .gitignore ignores every runs/ folder
RECORD_RUN_FILES = ("config.yaml", "metrics.json")  # copied as they are
RECORD_NPZ_FILES = ("test_per_user.npz", "valid_per_user.npz")  # re-saved compressed


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _compressed_npz(path: Path) -> bytes:
    import io

    buf = io.BytesIO()
    with np.load(path) as z:
        np.savez_compressed(buf, **{k: z[k] for k in z.files})
    return buf.getvalue()


def _finished_results(folder: Path) -> list[Path]:
    """``results/<model>/<setting>/seed-N.json`` under folder (not failure or superseded records)."""
    return sorted(p for p in (folder / "results").rglob("seed-*.json") if re.fullmatch(r"seed-\d+\.json", p.name))


def archive_part(part_out: Path, record: Path) -> int:
    """Copy the part's finished runs into the record (results, configs, metrics, per-user vectors).

    A run already in the record is left as it is, unless the report folder holds a newer run
    of the same (model, setting, seed) — one trained again after a configuration change; nothing
    is removed. The record's ``run_dir`` is relative (``files/<name>``) so it restores under any
    report folder. Returns the number of runs added or replaced.
    """
    added = 0
    for result in _finished_results(part_out):
        rel = result.relative_to(part_out)
        rec = json.loads(result.read_text())
        if (record / rel).exists():
            kept = json.loads((record / rel).read_text())
            if kept.get("finished") == rec.get("finished"):
                continue
        run_dir = Path(rec["run_dir"])
        if not (run_dir / "metrics.json").is_file():  # only finished runs reach results/; be safe anyway
            continue
        for name in RECORD_RUN_FILES:
            if (run_dir / name).is_file():
                _atomic_write(record / RECORD_RUN_DIRS / run_dir.name / name, (run_dir / name).read_bytes())
        for name in RECORD_NPZ_FILES:
            if (run_dir / name).is_file():
                _atomic_write(record / RECORD_RUN_DIRS / run_dir.name / name, _compressed_npz(run_dir / name))
        # the result last: its presence says the run's files are complete
        _atomic_write(
            record / rel, json.dumps({**rec, "run_dir": f"{RECORD_RUN_DIRS}/{run_dir.name}"}, indent=2).encode()
        )
        added += 1
    return added


def restore_part(record: Path, part_out: Path) -> int:
    """Put the record's runs that the report folder lacks back into it (the benchmark then reuses them).

    Never overwrites a result or run folder that is already there. Returns the number restored.
    """
    restored = 0
    for result in _finished_results(record):
        rel = result.relative_to(record)
        if (part_out / rel).exists():
            continue
        rec = json.loads(result.read_text())
        src = record / rec["run_dir"]
        dst = part_out / "runs" / src.name
        if dst.exists():  # an unfinished (or foreign) run folder of that name: leave it, retrain as usual
            continue
        for f in sorted(src.iterdir()):
            _atomic_write(dst / f.name, f.read_bytes())
        _atomic_write(part_out / rel, json.dumps({**rec, "run_dir": str(dst.resolve())}, indent=2).encode())
        restored += 1
    return restored


# ---------------------------------------------------------------------- report
def _fmt(mean: float, std: float | None = None) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _run_metrics(run_dir: str) -> dict:
    path = Path(run_dir) / "metrics.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _per_user(run_dir: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(Path(run_dir) / "test_per_user.npz") as z:
        return z["users"], z[metric].astype(np.float64)


def _mean_per_user(row: dict, metric: str) -> tuple[np.ndarray, np.ndarray]:
    from modalrec.experiments.significance import align_users

    users, total = None, None
    for run in row["runs"]:
        u, v = _per_user(run["run_dir"], metric)
        if users is None:
            users, total = u, v.copy()
        else:
            users, total, v = align_users(users, total, u, v)
            total = total + v
    return users, total / len(row["runs"])


def _ttest(a: dict, b: dict, metric: str) -> tuple[float, float]:
    """(mean difference a − b, p) of the paired t-test over per-user test metrics (seed-averaged)."""
    from modalrec.experiments.significance import align_users, paired_ttest

    ua, va = _mean_per_user(a, metric)
    ub, vb = _mean_per_user(b, metric)
    _, x, y = align_users(ua, va, ub, vb)
    t = paired_ttest(x, y)
    return t.mean_diff, t.pvalue


def _plan_rows(plan: str) -> dict[str, dict]:
    """The rows of a plan by their table label (``label``, else the model name)."""
    import yaml

    rows = yaml.safe_load((PLANS / plan).read_text())["rows"]
    return {str(r.get("label") or r["model"]): r for r in rows}


def _rows_table(rows: list[dict], extra_cols: dict[str, dict[str, str]] | None = None) -> list[str]:
    best = {m: max((r["test_mean"].get(m, -1.0) for r in rows), default=-1.0) for m in METRICS}
    extra_cols = extra_cols or {}
    head = ["model", *(m.replace("@", "@") for m in METRICS), *extra_cols]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        cells = []
        for m in METRICS:
            mean, std = r["test_mean"].get(m, math.nan), r["test_std"].get(m, math.nan)
            cell = _fmt(mean, std if len(r["runs"]) > 1 else None)
            cells.append(f"**{cell}**" if len(rows) > 1 and round(mean, 4) == round(best[m], 4) else cell)
        cells += [extra_cols[c].get(r["label"], "") for c in extra_cols]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return lines


def _details_table(rows: list[dict]) -> list[str]:
    lines = [
        "| model | selected setting (valid) | grid size | seeds | best epochs | s / epoch | wall time / run |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        metrics = [_run_metrics(run["run_dir"]) for run in r["runs"]]
        spe = [m.get("timings", {}).get("seconds_per_epoch", math.nan) for m in metrics]
        wall = [
            m.get("timings", {}).get("total_train_seconds", math.nan)
            + m.get("timings", {}).get("ranking_seconds", 0.0) * m.get("timings", {}).get("epochs_run", 0)
            for m in metrics
        ]
        setting = ", ".join(f"`{k}={v}`" for k, v in r["overrides"].items()) or "defaults"
        epochs = ", ".join(str(run["best_epoch"]) for run in r["runs"])
        lines.append(
            f"| {r['label']} | {setting} | {r['grid_size'] or '–'} | {len(r['runs'])} | {epochs} | "
            f"{np.nanmean(spe):.2f} | {np.nanmean(wall):.0f} s |"
        )
    return lines


def _valid_mean(row: dict, metric: str = "recall@20") -> float:
    return float(np.mean([run["valid"][metric] for run in row["runs"]])) if row["runs"] else math.nan


def _peer_groups() -> dict[tuple[int, bool], list[dict]]:
    """benchmarks/peers/cornac_bpr.py's runs grouped by (factors, Xavier start); empty when not run."""
    if not PEER_RUNS.is_file():
        return {}
    groups: dict[tuple[int, bool], list[dict]] = {}
    for run in json.loads(PEER_RUNS.read_text())["runs"]:
        groups.setdefault((int(run["k"]), bool(run["xavier"])), []).append(run)
    return groups


def peer_runs_table() -> list[str]:
    """The peer's own runs on this split (mean ± std over its seeds), per factor count and start."""
    groups = _peer_groups()
    if not groups:
        return [f"(No peer runs: `{PEER_RUNS.relative_to(ROOT)}` is missing; see benchmarks/peers/cornac_bpr.py.)", ""]
    info = json.loads(PEER_RUNS.read_text())
    lines = [
        f"{info['peer']} run by `benchmarks/peers/cornac_bpr.py` on the same split ({info['settings']}), "
        "scored by a plain NumPy full ranking:",
        "",
        "| factors k | start | seeds | valid Recall@20 | test Recall@20 (train+valid masked) | fit s |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for (k, xavier), runs in sorted(groups.items()):
        v = [r["valid_recall@20"] for r in runs]
        t = [r["test_recall@20"] for r in runs]
        start = "Xavier-normal (modalrec's)" if xavier else "U(−½, ½)/k (Cornac's)"
        fit_s = np.mean([r["fit_seconds"] for r in runs])
        lines.append(
            f"| {k} | {start} | {len(runs)} | {np.mean(v):.4f} ± {np.std(v):.4f} | "
            f"{np.mean(t):.4f} ± {np.std(t):.4f} | {fit_s:.1f} |"
        )
    return [*lines, ""]


def peer_verdicts(rows: list[dict]) -> list[str]:
    """Targets: our row chosen on validation against the issue's figure; each of our sizes against the peer's."""
    lines = []
    if not rows:
        return lines
    best = max(rows, key=_valid_mean)  # selection on validation, never on test
    ours = best["test_mean"].get("recall@20", math.nan)
    for vals in PEER_SCIENTIFIC_BPR.values():
        verdict = "reached" if ours >= vals["recall@20"] else "**not reached**"
        lines.append(
            f"Target (ours, the row with the best valid Recall@20 — {best['label']} — ≥ the peer's test "
            f"Recall@20): {verdict} ({ours:.4f} vs {vals['recall@20']:.4f})."
        )
    groups = _peer_groups()
    for row in rows:
        dim = int(row["overrides"].get("embedding_size", 64))
        peer = groups.get((dim, False))
        if not peer:
            continue
        theirs = float(np.mean([r["test_recall@20"] for r in peer]))
        mine = row["test_mean"].get("recall@20", math.nan)
        lines.append(
            f"- {row['label']} against Cornac at k = {dim} (mean of its seeds): {mine:.4f} vs {theirs:.4f} "
            f"({'≥' if mine >= theirs else '<'})."
        )
    return [*lines, ""]


def _verdict(row: dict, published: tuple[float, float], k: int) -> str:
    """Verdict "reached" when the row's test Recall@k and NDCG@k are both within TOLERANCE of the published pair."""
    recall, ndcg = published
    ok = row["test_mean"][f"recall@{k}"] >= recall * (1 - TOLERANCE) and row["test_mean"][f"ndcg@{k}"] >= ndcg * (
        1 - TOLERANCE
    )
    return "reached" if ok else "**below**"


COLD_KIND = {"content": "from content", "unable": "unable (random)", "reference": "untrained ranker"}
COLD_REFERENCES = ("Popularity", "Random")


def cold_verdicts(rows: list[dict], metric: str = "recall@20") -> dict[str, str]:
    """Per content row: does it beat Popularity and Random on cold items (paired t-test, p < 0.05)?"""
    refs = [r for r in rows if r["label"] in COLD_REFERENCES]
    out = {}
    for r in rows:
        if r.get("cold_start") != "content" or not refs:
            continue
        tests = []
        for ref in refs:
            try:
                tests.append((ref["label"], *_ttest(r, ref, metric)))
            except (OSError, KeyError):
                continue
        if not tests:
            continue
        beaten = [name for name, diff, p in tests if diff > 0 and p < 0.05]
        if len(beaten) == len(tests):
            p_max = max(p for _, _, p in tests)  # a t-test over thousands of users can underflow to 0.0
            out[r["label"]] = "beats both (" + (f"p ≤ {p_max:.2g}" if p_max > 0 else "p < 1e-300") + ")"
        else:
            lost = ", ".join(f"{n} Δ {d:+.4f} p {p:.2g}" for n, d, p in tests if n not in beaten)
            out[r["label"]] = f"**not above**: {lost}"
    return out


def render_part(part: Part, data_present: bool, out: Path, commands: dict[str, str]) -> list[str]:
    lines = [f"## {part.title}", ""]
    if part.note:
        lines += [part.note, ""]
    summary_path = out / part.name / "summary.json"
    if not data_present and not summary_path.exists():
        return [*lines, f"Not run: dataset folder `{part.dataset}` was not found under the data root.", ""]
    if not summary_path.exists():
        return [*lines, "Not run yet (no finished benchmark in the report folder).", ""]
    summary = json.loads(summary_path.read_text())
    rows = summary["rows"]
    if not summary.get("complete", True):
        plan_rows = list(_plan_rows(part.plan))
        missing = [lb for lb in plan_rows if lb not in {r["label"] for r in rows}]
        lines += [f"**Partial**: still to run (or interrupted): {', '.join(missing)}.", ""]
    extra: dict[str, dict[str, str]] = {}
    if part.name == "baby":
        pub = {
            k: f"{a:.4f} / {b:.4f} (≥ {a * (1 - TOLERANCE):.4f} / {b * (1 - TOLERANCE):.4f})"
            for k, (a, b) in PUBLISHED_BABY_AT10.items()
        }
        extra["published R@10 / N@10 (target)"] = {r["label"]: pub.get(r["model"], "–") for r in rows}
        extra["published R@20 / N@20"] = {
            r["label"]: "; ".join(
                f"{s} {a:.4f} / {b:.4f}" for s, (a, b) in PUBLISHED_BABY_AT20.get(r["model"], {}).items()
            )
            or "–"
            for r in rows
        }
        verdict = {}
        for r in rows:
            if r["model"] in PUBLISHED_BABY_AT10:
                verdict[r["label"]] = _verdict(r, PUBLISHED_BABY_AT10[r["model"]], 10)
            elif r["model"] in PUBLISHED_BABY_AT20:  # NGCF: not in Table I; judged on the logged runs' @20
                a, b = next(iter(PUBLISHED_BABY_AT20[r["model"]].values()))
                verdict[r["label"]] = f"{_verdict(r, (a, b), 20)} (@20 against {a:.4f} / {b:.4f})"
        for r in rows:  # the target is a mean over every seed: say when a row has fewer
            if r["label"] in verdict and len(r["runs"]) < len(summary["seeds"]):
                verdict[r["label"]] += f" on {len(r['runs'])} of {len(summary['seeds'])} seeds"
        extra["target"] = verdict
    if part.cold:
        rows = sorted(rows, key=lambda r: -r["test_mean"].get("recall@20", -1.0))  # the table ranks them
        extra["cold items"] = {r["label"]: COLD_KIND.get(r.get("cold_start"), "–") for r in rows}
        extra["vs Popularity / Random (R@20)"] = cold_verdicts(rows)
    if part.name.endswith("bpr-peer"):
        for peer, vals in PEER_SCIENTIFIC_BPR.items():
            lines.append(f"Peer: {peer}: test Recall@20 **{vals['recall@20']:.4f}** (same split, same masking).")
        lines.append("")
        lines += peer_runs_table()
    lines += _rows_table(rows, extra)
    lines.append("")
    if part.name.endswith("bpr-peer"):
        lines += peer_verdicts(rows)
    if part.cold:
        lines += [
            "Only the cold items are ranked (`--eval cold`). Rows ranked by test Recall@20. "
            "*unable (random)*: an ID-only model has nothing to score an item it never saw, so each cold "
            "item takes the score at a random rank of the user's warm scores, drawn from the run's seed — "
            "the same order for every ID-only model with the same seed, hence identical rows: they "
            "measure a random ranker, not the model. *vs Popularity / Random*: paired t-test over users "
            "of the row's per-user test Recall@20 against each ranker's (seed-averaged); Popularity ranks "
            "cold items at random too, as none has a training count.",
            "",
        ]
    short = [
        r["label"]
        for r in rows
        if len(r["runs"]) < len(summary["seeds"]) and not _plan_rows(part.plan).get(r["label"], {}).get("seeds")
    ]
    lines.append(
        f"Test metrics, mean ± std over seeds {summary['seeds']} (a row's own seeds where its plan names them); "
        "best **bold** (4 decimals)."
        + (f" Not all seeds finished for: {', '.join(short)} (see the seeds column below)." if short else "")
    )
    lines.append("")
    by_label = {r["label"]: r for r in rows}
    for target in part.targets:
        if target not in by_label or len(rows) < 2:
            continue
        tested = []
        for m in METRICS:
            others = [r for r in rows if r["label"] != target]
            best_other = max(others, key=lambda r: r["test_mean"].get(m, -1.0))
            try:
                diff, p = _ttest(by_label[target], best_other, m)
            except (OSError, KeyError):
                continue
            tested.append(f"{m}: vs {best_other['label']} Δ = {diff:+.4f}, p = {p:.3g}" + (" *" if p < 0.05 else ""))
        if tested:
            lines.append(
                f"Paired t-test of **{target}** against the best other row "
                "(per-user test metric, seed-averaged; `*` p < 0.05):"
            )
            lines += [f"- {t}" for t in tested]
            lines.append("")
    lines.append("Per row: the setting selected on validation Recall@20, best epoch of each seed, time.")
    lines.append("")
    lines += _details_table([r for r in rows if r.get("cold_start") != "reference"])
    lines.append("")
    fp = {r["label"]: r["runs"][0].get("setting_id", "") for r in rows}
    data_fp = ""
    for r in rows:
        cfg = Path(r["runs"][0]["run_dir"]) / "config.yaml"
        if cfg.exists():
            for line in cfg.read_text().splitlines():
                if line.strip().startswith("fingerprint:"):
                    data_fp = line.split(":", 1)[1].strip()
                    break
        if data_fp:
            break
    lines.append(
        f"Dataset `{summary['dataset']}` (content fingerprint `{data_fp}`), plan `benchmarks/reproduction/{part.plan}`."
    )
    if part.name in commands:
        lines.append(f"Command: `{commands[part.name]}`")
    lines.append(f"Setting ids: {', '.join(f'{k} `{v}`' for k, v in fp.items())}.")
    lines.append("")
    return lines


def versions() -> str:
    import scipy
    import torch

    import modalrec

    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return (
        f"modalrec {modalrec.__version__} (git {commit or 'unknown'}), Python {platform.python_version()}, "
        f"torch {torch.__version__}, NumPy {np.__version__}, SciPy {scipy.__version__}, "
        f"{platform.machine()} with {os.cpu_count()} CPU cores"
    )


KEPT_MARK = "*Kept from an earlier report:"


def existing_sections(report: Path) -> dict[str, list[str]]:
    """The report's ``## <title>`` sections (heading to the next heading), by title; empty when absent."""
    if not report.is_file():
        return {}
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in report.read_text().splitlines():
        if line.startswith("## "):
            current = sections.setdefault(line[3:].strip(), [])
        if current is not None:
            current.append(line)
    return sections


def kept_section(part: Part, old: list[str], when: str) -> list[str]:
    """A part's section from the earlier report, marked as such.

    A section kept before keeps its mark, and with it the date it was really generated."""
    marks = [line for line in old[1:] if line.startswith(KEPT_MARK)]
    body = [line for line in old[1:] if not line.startswith(KEPT_MARK)]
    while body and not body[0].strip():
        body.pop(0)
    mark = (
        marks[0]
        if marks
        else (
            f"{KEPT_MARK} this report folder has neither the part's trained runs nor their record "
            f"(`benchmarks/reproduction/record/{part.name}`), so its section is the one generated {when}.*"
        )
    )
    return [old[0], "", mark, "", *body]


def _has_trained_rows(summary_path: Path) -> bool:
    """Whether a part's summary holds a trained model's row (the untrained rankers alone do not count)."""
    try:
        rows = json.loads(summary_path.read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return False
    return any(r["model"] not in COLD_REFERENCES for r in rows)


def _generated_when(report: Path) -> str:
    """When the existing report says it was generated (its first 'Generated …' line), else 'earlier'."""
    if report.is_file():
        m = re.search(r"Generated (\d{4}-\d\d-\d\d \d\d:\d\d UTC)", report.read_text())
        if m:
            return f"on {m.group(1)}"
    return "earlier"


def render(out: Path, root: Path, report: Path, quick: bool, intro: str) -> None:
    old_sections = existing_sections(report)
    old_when = _generated_when(report)
    commands_path = out / "commands.json"
    commands = json.loads(commands_path.read_text()) if commands_path.exists() else {}
    lines = [
        "# Reproduction report",
        "",
        "Generated by `python benchmarks/reproduce.py` (do not edit by hand; rerun it). "
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with {versions()}.",
        "",
        intro.strip(),
        "",
    ]
    for part in PARTS:
        present = quick or part.dataset == "synthetic" or (root / part.dataset).is_dir()
        if not _has_trained_rows(out / part.name / "summary.json") and part.title in old_sections:
            # nothing to render it from here: keep what the last report said rather than lose it
            print(f"part {part.name}: no trained runs in {out} — its section is kept from {report.name}", flush=True)
            lines += kept_section(part, old_sections[part.title], old_when)
            continue
        lines += render_part(part, present, out, commands)
        if not quick and (NOTES / f"{part.name}.md").exists():
            # findings written by hand about a part (investigations behind a verdict), kept beside its plan
            lines += [(NOTES / f"{part.name}.md").read_text().strip(), ""]
    report.parent.mkdir(parents=True, exist_ok=True)
    tmp = report.with_suffix(".tmp")
    tmp.write_text("\n".join(lines).rstrip() + "\n")
    os.replace(tmp, report)
    print(f"wrote {report}")


INTRO_FILE = PLANS / "intro.md"
NOTES = PLANS / "notes"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", help=f"comma-separated subset of: {', '.join(p.name for p in PARTS)}")
    ap.add_argument("--data-root", help="folder holding amazon_baby, amazon_scientific_mm, … ($MODALREC_DATA)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "reproduction"), help="report folder (resumable)")
    ap.add_argument("--report", default=None, help="Markdown to write (default docs/reproduction.md)")
    ap.add_argument("--seeds", default=SEEDS)
    ap.add_argument(
        "--render-only", action="store_true", help="train nothing: tables from the finished runs, then the report"
    )
    ap.add_argument("--quick", action="store_true", help="every part on a tiny synthetic dataset, 1 epoch, 1 seed")
    ap.add_argument(
        "--record",
        default=None,
        help="folder of the committed record of finished runs (default benchmarks/reproduction/record; "
        "with --quick: <out>/record)",
    )
    ap.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where the benchmark trains: local (one run after another) or ray (a local Ray, "
        "--cpus-per-trial cores per run, so a 2-core machine trains two seeds at once)",
    )
    ap.add_argument("--cpus-per-trial", type=int, default=None, help="cores (torch threads) per run")
    args = ap.parse_args(argv)
    executor = ["--executor", args.executor]
    if args.cpus_per_trial is not None:  # else the benchmark's own default (1 per Ray trial; local: all cores)
        executor += ["--cpus-per-trial" if args.executor == "ray" else "--threads", str(args.cpus_per_trial)]
    out, root = Path(args.out), data_root(args.data_root)
    record = Path(args.record) if args.record else (out / "record" if args.quick else RECORD)
    report = (
        Path(args.report)
        if args.report
        else (out / "reproduction.md" if args.quick else ROOT / "docs" / "reproduction.md")
    )
    seeds = "1" if args.quick else args.seeds
    wanted = set((args.parts or ",".join(p.name for p in PARTS)).split(","))
    unknown = wanted - {p.name for p in PARTS}
    if unknown:
        sys.exit(f"--parts: unknown part {sorted(unknown)[0]!r} (known: {', '.join(p.name for p in PARTS)})")
    commands_path = out / "commands.json"
    out.mkdir(parents=True, exist_ok=True)
    order = (args.parts or ",".join(p.name for p in PARTS)).split(",")
    for part in sorted((p for p in PARTS if p.name in wanted), key=lambda p: order.index(p.name)):
        folder = dataset_folder(part, root, out, args.quick)
        if folder is None:
            print(f"part {part.name}: dataset {root / part.dataset} not found — not run", flush=True)
            continue
        part_seeds = seeds if args.quick else part.seeds or seeds
        restored = restore_part(record / part.name, out / part.name)
        if restored:
            print(f"part {part.name}: {restored} finished run(s) restored from {record / part.name}", flush=True)
        try:
            cmd = run_part(part, folder, out, part_seeds, args.quick, args.render_only, executor)
        finally:  # an interrupted or failed part still records the runs that finished
            added = archive_part(out / part.name, record / part.name)
            if added:
                print(f"part {part.name}: {added} finished run(s) added to {record / part.name}", flush=True)
        commands = json.loads(commands_path.read_text()) if commands_path.exists() else {}
        commands[part.name] = shlex.join(["modalrec", *cmd[3:]])
        commands_path.write_text(json.dumps(commands, indent=1))
    render(out, root, report, args.quick, INTRO_FILE.read_text() if INTRO_FILE.exists() else "")


if __name__ == "__main__":
    main()
