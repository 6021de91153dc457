"""Render docs/reproduction.md from the committed record alone (``benchmarks/reproduction/record``).

The renderer reads, per part, ``record/<part>/summary.json`` (the benchmark's table of the part:
rows, selected settings, the runs of each row) and each run's recorded files (``config.yaml``,
``metrics.json``, per-user vectors). It needs no dataset, no report folder and no trained model,
and it writes nothing that depends on when or where it ran: the same record renders the same
report byte for byte (``tests/test_reproduction.py`` checks the committed one). A plan row with
no recorded run shows ``no record`` in its cells.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
PLANS = ROOT / "benchmarks" / "reproduction"
RECORD = PLANS / "record"
NOTES = PLANS / "notes"
PEER_RUNS = PLANS / "peer_cornac_bpr.json"
PEER_TIMES = PLANS / "peer_time.json"
RERUN_CHECK = PLANS / "rerun_check.json"
METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
SHORT = {"recall@10": "R@10", "ndcg@10": "N@10", "recall@20": "R@20", "ndcg@20": "N@20"}
NO_RECORD = "no record"
ALPHA = 0.05

# The MeAIM paper's supplement Table I (Recall@10 / NDCG@10 on the MMRec Baby split): the targets.
PUBLISHED_BABY_AT10 = {"BPR": (0.0379, 0.0202), "LightGCN": (0.0464, 0.0251), "LayerGCN": (0.0507, 0.0273)}
# Context only, no verdict: (A) the results table published with the MMRec toolbox; (B) single-seed runs
# logged by the DA-MRS authors — their logs are not in this repository.
PUBLISHED_BABY_AT20 = {
    "BPR": {"A": (0.0575, 0.0249), "B": (0.0570, 0.0251)},
    "LightGCN": {"A": (0.0754, 0.0328), "B": (0.0757, 0.0327)},
    "NGCF": {"B": (0.0601, 0.0239)},
}
TOLERANCE = 0.03  # a Table I target counts as reached down to 3 % below the published figure
# The protocol's training-loop settings (overall.yaml); a row that runs with other values says so and
# gets no verdict against a published figure made under the protocol.
PROTOCOL = {"stopping_step": 20, "epochs": 1000, "min_epochs": 0, "train_batch_size": 2048, "eval_step": 1}
PROTOCOL_NAMES = {
    "stopping_step": "patience",
    "epochs": "epoch cap",
    "min_epochs": "min_epochs",
    "train_batch_size": "batch",
    "eval_step": "eval every",
}
COLD_KIND = {"content": "from content", "unable": "unable (random)", "reference": "untrained ranker"}
COLD_REFERENCES = ("Popularity", "Random")


# ---------------------------------------------------------------------------------------- the record
@dataclass
class Run:
    """One recorded run: where its files are, its seed, its best epoch and its metrics."""

    folder: Path
    seed: int
    setting_id: str
    best_epoch: int
    valid: dict[str, float]
    test: dict[str, float]

    @cached_property
    def metrics_file(self) -> dict[str, Any]:
        """The run's metrics.json (read once: every table of the report asks for it)."""
        try:
            return json.loads((self.folder / "metrics.json").read_text())
        except (OSError, ValueError):
            return {}

    @cached_property
    def config(self) -> dict[str, Any]:
        """The run's resolved configuration (config.yaml's ``config:``), read once."""
        try:
            return (yaml.safe_load((self.folder / "config.yaml").read_text()) or {}).get("config", {})
        except (OSError, ValueError):
            return {}

    def per_user(self, split: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
        with np.load(self.folder / f"{split}_per_user.npz") as z:
            return z["users"], z[metric].astype(np.float64)


@dataclass
class Row:
    """A plan row and, when recorded, the runs of the setting selected for it."""

    label: str
    model: str
    plan: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    grid_size: int | None = None
    cold_start: str | None = None

    @property
    def recorded(self) -> bool:
        return bool(self.runs)

    def mean(self, metric: str, split: str = "test") -> float:
        return float(np.mean([getattr(r, split)[metric] for r in self.runs])) if self.runs else math.nan

    def std(self, metric: str, split: str = "test") -> float:
        vals = [getattr(r, split)[metric] for r in self.runs]
        return float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan

    def departures(self) -> dict[str, Any]:
        """The protocol's training-loop settings this row ran with other values of (from its runs' configs)."""
        out: dict[str, Any] = {}
        for run in self.runs:
            cfg = run.config
            for key, value in PROTOCOL.items():
                if key in cfg and cfg[key] != value:
                    out[key] = cfg[key]
        return out


def plan_rows(plan: str) -> list[dict[str, Any]]:
    return yaml.safe_load((PLANS / plan).read_text())["rows"]


def _filled(row: Row, rec: dict[str, Any], folder: Path) -> Row:
    """``row`` with the recorded table entry ``rec`` (runs named relative to the part's ``folder``)."""
    row.overrides = rec.get("overrides") or {}
    row.grid_size = rec.get("grid_size")
    row.cold_start = rec.get("cold_start")
    missing = [r["run"] for r in rec["runs"] if not (folder / r["run"] / "test_per_user.npz").is_file()]
    if missing:  # a table that names runs the record lacks: say which, do not render a half row
        raise SystemExit(f"{folder / 'summary.json'}: row {row.label!r} names run {missing[0]!r}, not in the record")
    row.runs = [
        Run(
            (folder / r["run"]).resolve(),
            int(r["seed"]),
            r.get("setting_id", ""),
            int(r["best_epoch"]),
            r["valid"],
            r["test"],
        )
        for r in rec["runs"]
    ]
    return row


def load_rows(part_name: str, plan: str, record: Path = RECORD) -> tuple[list[Row], dict[str, Any] | None]:
    """The plan's rows in plan order, filled from ``record/<part>/summary.json`` where it has them, then the
    rows the benchmark adds by itself (the cold-start rankers)."""
    summary_path = record / part_name / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    recorded = {r["label"]: r for r in (summary or {}).get("rows", [])}
    rows = []
    for p in plan_rows(plan):
        label = str(p.get("label") or p["model"])
        row = Row(label, p["model"], p)
        rows.append(_filled(row, recorded[label], record / part_name) if label in recorded else row)
    planned = {r.label for r in rows}
    rows += [
        _filled(Row(label, rec["model"], {}), rec, record / part_name)
        for label, rec in recorded.items()
        if label not in planned
    ]
    return rows, summary


# ---------------------------------------------------------------------------------------- statistics
def seed_mean_per_user(row: Row, split: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    from modalrec.experiments.significance import align_users

    users, total = None, None
    for run in row.runs:
        u, v = run.per_user(split, metric)
        if users is None:
            users, total = u, v.copy()
        else:
            users, total, v = align_users(users, total, u, v)
            total = total + v
    return users, total / len(row.runs)


def paired(a: Row, b: Row, split: str, metric: str) -> tuple[float, float]:
    """(mean difference a − b, p) of the paired t-test over users (each row's seeds averaged per user)."""
    from modalrec.experiments.significance import align_users, paired_ttest

    ua, va = seed_mean_per_user(a, split, metric)
    ub, vb = seed_mean_per_user(b, split, metric)
    _, x, y = align_users(ua, va, ub, vb)
    t = paired_ttest(x, y)
    return t.mean_diff, t.pvalue


def fmt_p(p: float) -> str:
    return f"{p:.2g}" if p > 0 else "< 1e-300"


# ---------------------------------------------------------------------------------------- tables
def cell(row: Row, metric: str, best: float | None = None) -> str:
    if not row.recorded:
        return NO_RECORD
    mean, std = row.mean(metric), row.std(metric)
    text = f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"
    return f"**{text}**" if best is not None and round(mean, 4) == round(best, 4) else text


def metrics_table(rows: list[Row], extra: dict[str, dict[str, str]] | None = None) -> list[str]:
    extra = extra or {}
    done = [r for r in rows if r.recorded]
    best = {m: max((r.mean(m) for r in done), default=None) for m in METRICS} if len(done) > 1 else {}
    head = ["model", *METRICS, *extra]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        cells = [cell(r, m, best.get(m)) for m in METRICS] + [extra[c].get(r.label, "") for c in extra]
        lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    return lines


def departures_text(row: Row) -> str:
    return ", ".join(f"{PROTOCOL_NAMES[k]} {v}" for k, v in row.departures().items()) or "–"


def environment_text(row: Row) -> str:
    envs = {(e.get("torch"), e.get("threads")) for e in (run.metrics_file.get("environment") for run in row.runs) if e}
    missing = sum(1 for run in row.runs if not run.metrics_file.get("environment"))
    parts = [f"torch {t}, {n} thread{'s' if n != 1 else ''}" for t, n in sorted(envs, key=str)]
    if missing:
        parts.append("not recorded" if not parts else f"{missing} run(s) not recorded")
    return "; ".join(parts)


def details_table(rows: list[Row]) -> list[str]:
    lines = [
        "| model | selected setting (valid) | grid size | seeds | best epochs | protocol differs | s / epoch "
        "| wall time / run | ran with |",
        "|---|---|---:|---:|---|---|---:|---:|---|",
    ]
    for r in rows:
        if not r.recorded:
            lines.append(f"| {r.label} | {NO_RECORD} | | | | | | | |")
            continue
        timings = [run.metrics_file.get("timings", {}) for run in r.runs]
        spe = [t.get("seconds_per_epoch", math.nan) for t in timings]
        wall = [
            t.get("total_train_seconds", math.nan) + t.get("ranking_seconds", 0.0) * t.get("epochs_run", 0)
            for t in timings
        ]
        setting = ", ".join(f"`{k}={v}`" for k, v in r.overrides.items()) or "defaults"
        lines.append(
            f"| {r.label} | {setting} | {r.grid_size or '–'} | {len(r.runs)} | "
            f"{', '.join(str(run.best_epoch) for run in r.runs)} | {departures_text(r)} | "
            f"{np.nanmean(spe):.2f} | {np.nanmean(wall):.0f} s | {environment_text(r)} |"
        )
    return lines


# ---------------------------------------------------------------------------------------- part specifics
def baby_columns(rows: list[Row]) -> dict[str, dict[str, str]]:
    """Published figures beside each Baby row and the verdict against Table I, threshold shown."""
    pub10 = {}
    pub20 = {}
    verdict = {}
    for r in rows:
        if r.model in PUBLISHED_BABY_AT10:
            a, b = PUBLISHED_BABY_AT10[r.model]
            pub10[r.label] = f"{a:.4f} / {b:.4f}"
        pub20[r.label] = (
            "; ".join(f"{s} {a:.4f} / {b:.4f}" for s, (a, b) in PUBLISHED_BABY_AT20.get(r.model, {}).items()) or "–"
        )
        verdict[r.label] = baby_verdict(r)
    return {"Table I R@10 / N@10": pub10, "other R@20 / N@20 (A, B)": pub20, "verdict (vs Table I)": verdict}


def baby_verdict(row: Row, seeds: int = 3) -> str:
    if row.model not in PUBLISHED_BABY_AT10:
        return "no target (not in Table I)"
    if not row.recorded:
        return NO_RECORD
    departs = departures_text(row)
    if departs != "–":
        return f"not judged: protocol differs ({departs})"
    checks, close = [], []
    for metric, published in zip(("recall@10", "ndcg@10"), PUBLISHED_BABY_AT10[row.model], strict=True):
        threshold = published * (1 - TOLERANCE)
        mean, std = row.mean(metric), row.std(metric)
        checks.append((SHORT[metric], mean, threshold, mean >= threshold))
        if not math.isnan(std) and abs(mean - threshold) < std:
            close.append(SHORT[metric])
    word = "reached" if all(ok for *_, ok in checks) else "**below**"
    detail = ", ".join(f"{n} {m:.4f} {'≥' if ok else '<'} {t:.4f}" for n, m, t, ok in checks)
    note = f"; {' and '.join(close)} within one std of the threshold" if close else ""
    planned = len(row.plan.get("seeds") or ()) or seeds
    if len(row.runs) < planned:
        note += f"; on {len(row.runs)} of {planned} seeds"
    return f"{word} ({detail}{note})"


def cold_verdicts(rows: list[Row], metric: str = "recall@20") -> dict[str, str]:
    """Per content row: above Popularity and Random on cold items (paired t-test, p < 0.05)?"""
    refs = [r for r in rows if r.label in COLD_REFERENCES and r.recorded]
    out = {}
    for r in rows:
        if r.cold_start != "content" or not r.recorded or not refs:
            continue
        tests = [(ref.label, *paired(r, ref, "test", metric)) for ref in refs]
        beaten = [name for name, diff, p in tests if diff > 0 and p < ALPHA]
        if len(beaten) == len(tests):
            p_max = max(p for *_, p in tests)  # a t-test over thousands of users can underflow to 0.0
            out[r.label] = "above both (" + (f"p ≤ {p_max:.2g}" if p_max > 0 else "p < 1e-300") + ")"
        else:
            out[r.label] = "**not above**: " + ", ".join(
                f"{n} Δ {d:+.4f} p {fmt_p(p)}" for n, d, p in tests if n not in beaten
            )
    return out


def best_other_tests(rows: list[Row], target: str) -> list[str]:
    by_label = {r.label: r for r in rows}
    if target not in by_label or not by_label[target].recorded:
        return []
    others = [r for r in rows if r.label != target and r.recorded]
    if not others:
        return []
    lines = [
        f"Paired t-test of **{target}** against the best other recorded row on each test metric "
        "(per-user, seeds averaged; `*` p < 0.05):"
    ]
    for m in METRICS:
        other = max(others, key=lambda r: r.mean(m))
        diff, p = paired(by_label[target], other, "test", m)
        lines.append(f"- {m}: vs {other.label} Δ = {diff:+.4f}, p = {fmt_p(p)}" + (" *" if p < ALPHA else ""))
    return [*lines, ""]


def peer_sections(rows: list[Row]) -> list[str]:
    """Ours against Cornac's BPR at matched size (same seeds, sample std), the times, then Cornac's starts."""
    times = json.loads(PEER_TIMES.read_text()) if PEER_TIMES.is_file() else None
    cornac = {e["size"]: e for e in (times or {}).get("rows", []) if e["toolbox"].startswith("Cornac")}
    lines = [
        "modalrec's BPR rows (this part's record) against Cornac 3.0.1's BPR (`benchmarks/peers/bpr_peer_time.py`, "
        "same split, same seeds, same masking), test Recall@20 at matched size (d = k), mean ± sample std (n − 1):",
        "",
        "| size | modalrec row | modalrec | Cornac | Δ (modalrec − Cornac) |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        if "Rendle" not in r.label:
            continue
        dim = int(r.plan.get("set", {}).get("embedding_size", 64))
        theirs = np.array(cornac[dim]["test_recall@20"]) if dim in cornac else None
        text = f"{theirs.mean():.4f} ± {theirs.std(ddof=1):.4f}" if theirs is not None else "not run"
        delta = f"{r.mean('recall@20') - theirs.mean():+.4f}" if r.recorded and theirs is not None else "–"
        lines.append(f"| {dim} | {r.label} | {cell(r, 'recall@20')} | {text} | {delta} |")
    lines.append("")
    lines += peer_time_table()
    if PEER_RUNS.is_file():
        info = json.loads(PEER_RUNS.read_text())
        groups: dict[tuple[int, bool], list[dict]] = {}
        for run in info["runs"]:
            groups.setdefault((int(run["k"]), bool(run["xavier"])), []).append(run)
        lines += [
            f"What the start does: {info['peer']} by `benchmarks/peers/cornac_bpr.py` ({info['settings']}), "
            f"seeds {sorted({r['seed'] for r in info['runs']})} (an earlier run, not the seeds above), "
            "mean ± sample std:",
            "",
            "| factors k | start | seeds | valid Recall@20 | test Recall@20 |",
            "|---:|---|---:|---:|---:|",
        ]
        for (k, xavier), runs in sorted(groups.items()):
            v = np.array([r["valid_recall@20"] for r in runs])
            t = np.array([r["test_recall@20"] for r in runs])
            start = "Xavier-normal (modalrec's)" if xavier else "U(−½, ½)/k (Cornac's)"
            lines.append(
                f"| {k} | {start} | {len(runs)} | {v.mean():.4f} ± {v.std(ddof=1):.4f} | "
                f"{t.mean():.4f} ± {t.std(ddof=1):.4f} |"
            )
        lines.append("")
    return lines


def peer_time_table() -> list[str]:
    if not PEER_TIMES.is_file():
        return [
            f"Wall time to the reported accuracy: not measured (`{PEER_TIMES.relative_to(ROOT)}` is missing; "
            "`benchmarks/peers/bpr_peer_time.py` writes it).",
            "",
        ]
    info = json.loads(PEER_TIMES.read_text())
    lines = [
        "Wall time to the reported accuracy, both toolboxes in one run of `benchmarks/peers/bpr_peer_time.py` "
        f"on one machine ({info['machine']}; {info['versions']}; {info['threads']} thread(s) each: Cornac "
        "trains on one thread whenever it is seeded"
        + (f"; modalrec code {info['modalrec_code']}" if info.get("modalrec_code") else "")
        + "). "
        "Cornac trains its fixed 400 epochs; modalrec trains until early stopping, evaluating validation "
        "every epoch unless the row says otherwise (included in its time):",
        "",
        "| size | toolbox | seeds | test Recall@20 | wall seconds (mean ± sample std) | × Cornac's time |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    cornac_secs = {e["size"]: np.mean(e["seconds"]) for e in info["rows"] if e["toolbox"].startswith("Cornac")}
    for entry in info["rows"]:
        acc = np.array(entry["test_recall@20"])
        secs = np.array(entry["seconds"])
        ratio = secs.mean() / cornac_secs[entry["size"]] if entry["size"] in cornac_secs else math.nan
        lines.append(
            f"| {entry['size']} | {entry['toolbox']} | {len(acc)} | {acc.mean():.4f} ± {acc.std(ddof=1):.4f} | "
            f"{secs.mean():.1f} ± {secs.std(ddof=1):.1f} | {ratio:.2f} |"
        )
    return [*lines, ""]


# ---------------------------------------------------------------------------------------- claims
def claim_table(claimant: Row, baselines: list[Row]) -> tuple[list[str], dict[str, list[str]]]:
    """Δ (p) of ``claimant`` against each baseline on the four metrics, valid and test.

    Returns the table and the baselines grouped by outcome on test: ``above`` (higher with p < 0.05 on
    all four), ``below`` (lower with p < 0.05 on at least one), ``neither`` (the rest) and ``missing`` (no record)."""
    head = [f"{s} {SHORT[m]}" for s in ("valid", "test") for m in METRICS]
    lines = ["| against | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    groups: dict[str, list[str]] = {"above": [], "below": [], "neither": [], "missing": []}
    for base in baselines:
        if not base.recorded or not claimant.recorded:
            groups["missing"].append(base.label)
            lines.append(f"| {base.label} | " + " | ".join([NO_RECORD] * len(head)) + " |")
            continue
        cells, test_results = [], []
        for split in ("valid", "test"):
            for m in METRICS:
                diff, p = paired(claimant, base, split, m)
                cells.append(f"{diff:+.4f} ({fmt_p(p)}){'*' if p < ALPHA else ''}")
                if split == "test":
                    test_results.append((diff, p))
        if all(d > 0 and p < ALPHA for d, p in test_results):
            groups["above"].append(base.label)
        elif any(d < 0 and p < ALPHA for d, p in test_results):
            groups["below"].append(base.label)
        else:
            groups["neither"].append(base.label)
        lines.append(f"| {base.label} | " + " | ".join(cells) + " |")
    return lines, groups


def claim_verdict(name: str, groups: dict[str, list[str]]) -> str:
    n = sum(len(v) for v in groups.values())
    judged = n - len(groups["missing"])
    missing = f" {len(groups['missing'])} of the {n} baselines have no record yet." if groups["missing"] else ""
    if groups["below"]:
        word = "**Not reproduced**"
    elif groups["missing"] or groups["neither"]:
        word = "**Not reproduced**" if groups["neither"] else "**Not judged yet**"
    else:
        word = "**Reproduced**"
    return (
        f"{word}: of the {judged} baselines with a record, {name} is significantly above on all four test "
        f"metrics against {len(groups['above'])}"
        + (f" ({', '.join(groups['above'])})" if groups["above"] else "")
        + f", significantly below on at least one against {len(groups['below'])}"
        + (f" ({', '.join(groups['below'])})" if groups["below"] else "")
        + f", and neither (not significantly above on all four, not significantly below on any) against "
        f"{len(groups['neither'])}"
        + (f" ({', '.join(groups['neither'])})" if groups["neither"] else "")
        + "."
        + missing
    )


def claims_section(parts: list[Any], record: Path) -> list[str]:
    """ "What is and is not reproduced": the published Baby rows, then each seed paper's claim."""
    lines = ["## What is and is not reproduced", ""]
    baby = next(p for p in parts if p.name == "baby")
    rows, _ = load_rows(baby.name, baby.plan, record)
    lines += [
        "**Published Baby figures** (MeAIM supplement Table I, Recall@10 / NDCG@10; reached = within "
        f"{TOLERANCE:.0%} below the published figure on both, mean over the seeds):",
        "",
    ]
    for r in rows:
        if r.model in PUBLISHED_BABY_AT10:
            a, b = PUBLISHED_BABY_AT10[r.model]
            if not r.recorded:
                lines.append(f"- {r.label}: no record yet (published {a:.4f} / {b:.4f}).")
                continue
            mean = f"{r.mean('recall@10'):.4f} / {r.mean('ndcg@10'):.4f}"
            lines.append(f"- {r.label}: {mean} against {a:.4f} / {b:.4f} — {baby_verdict(r)}.")
    lines.append("")
    for part in parts:
        if not part.claims:
            continue
        rows, _ = load_rows(part.name, part.plan, record)
        by_label = {r.label: r for r in rows}
        for model, claim in part.claims.items():
            variants = [r for r in rows if r.model == model]
            baselines = [r for r in rows if r.model not in part.claims and r.cold_start != "reference"]
            lines += [f"**{model}'s claim — {claim}** — on {part.dataset_words}:", ""]
            for variant in variants:
                if not variant.recorded or not any(b.recorded for b in baselines):
                    lines += [
                        f"*{variant.label}*: **not judged yet** — no record yet for "
                        + ("this row." if not variant.recorded else "any baseline."),
                        "",
                    ]
                    continue
                table, groups = claim_table(by_label[variant.label], baselines)
                short = [b.label for b in baselines if b.recorded and len(b.runs) < len(variant.runs)]
                lines += [
                    f"*{variant.label}* ({len(variant.runs)} seed{'s' if len(variant.runs) != 1 else ''}): "
                    + claim_verdict(variant.label, groups)
                    + (f" Fewer seeds than this row: {', '.join(short)}." if short else ""),
                    "",
                ]
                lines += [
                    "Δ = this row − the baseline (per-user paired t-test over users, each row's seeds averaged; "
                    "p in brackets, `*` p < 0.05):",
                    "",
                    *table,
                    "",
                ]
    note = NOTES / "claims.md"
    if note.is_file():
        lines += [note.read_text().strip(), ""]
    return lines


# ---------------------------------------------------------------------------------------- sections
def render_part(part: Any, record: Path) -> list[str]:
    rows, summary = load_rows(part.name, part.plan, record)
    lines = [f"## {part.title}", ""]
    if part.note:
        lines += [part.note, ""]
    missing = [r.label for r in rows if not r.recorded]
    if missing:
        lines += [f"**{NO_RECORD.capitalize()}** yet for: {', '.join(missing)} (their cells say `{NO_RECORD}`).", ""]
    extra: dict[str, dict[str, str]] = {}
    if part.name == "baby":
        extra = baby_columns(rows)
    if part.cold:
        rows = sorted(rows, key=lambda r: -r.mean("recall@20") if r.recorded else 1.0)
        extra["cold items"] = {r.label: COLD_KIND.get(r.cold_start, "–") for r in rows if r.recorded}
        extra["vs Popularity / Random (R@20)"] = cold_verdicts(rows)
    if part.peer:
        lines += peer_sections(rows)
    lines += metrics_table(rows, extra)
    lines.append("")
    for r in rows:  # an exact tie across seeds reads like a copying error: show that the runs differ
        tied = [m for m in METRICS if r.recorded and len(r.runs) > 1 and r.std(m) == 0.0]
        if tied:
            users = r.runs[0].per_user("test", tied[0])[0].size
            lines += [
                f"{r.label}: test {', '.join(tied)} is the same on every seed "
                f"({r.runs[0].test[tied[0]]!r} = {round(r.runs[0].test[tied[0]] * users)} of {users} test users hit "
                f"for {tied[0]}), while the runs differ (best epochs {', '.join(str(x.best_epoch) for x in r.runs)}; "
                "test recall@10 " + ", ".join(f"{x.test['recall@10']:.4f}" for x in r.runs) + ").",
                "",
            ]
    seeds = summary["seeds"] if summary else part.seeds_list
    lines.append(
        f"Test metrics, mean ± sample std (n − 1) over seeds {seeds} (a row's own seeds where its plan names "
        "them); best **bold** (4 decimals)."
    )
    lines.append("")
    if part.cold:
        lines += [
            "Protocol of this table: the split is drawn once, from the first seed, and every seed's run uses it; "
            "20 % of the items lose all their training interactions; their interactions are divided by item "
            "into two disjoint halves, one for validation and one for test, so no cold item is both validated "
            "and tested on; only the evaluated half's cold items are ranked (`--eval cold`). *unable (random)*: "
            "an ID-only model has nothing to score an item it never saw, so each cold item takes the score at "
            "a random rank of the user's warm scores, drawn from the run's seed — the same order for every "
            "ID-only model with the same seed, hence identical rows: they measure a random ranker, not the "
            "model. *vs Popularity / Random*: paired t-test over users of the row's per-user test Recall@20 "
            "against each untrained ranker's (seeds averaged). Both references rank cold items essentially "
            "at random (none of them has a training count), so being above them shows that a model uses "
            "content at all, not that it is good at cold start.",
            "",
        ]
    for target in part.targets:
        lines += best_other_tests(rows, target)
    by_label = {r.label: r for r in rows}
    for a, b in part.versus:
        if a in by_label and b in by_label and by_label[a].recorded and by_label[b].recorded:
            table, _ = claim_table(by_label[a], [by_label[b]])
            lines += [
                f"**{a}** against **{b}**: Δ = {a} − {b}, paired t-test over users (seeds averaged; p in "
                "brackets, `*` p < 0.05):",
                "",
                *table,
                "",
            ]
    lines += ["Per row: the setting selected on validation Recall@20, best epoch of each seed, time.", ""]
    lines += details_table([r for r in rows if r.cold_start != "reference"])
    lines.append("")
    recorded = [r for r in rows if r.recorded]
    if recorded:
        fingerprint = ""
        cfg = recorded[0].runs[0].folder / "config.yaml"
        if cfg.is_file():
            fingerprint = (yaml.safe_load(cfg.read_text()) or {}).get("data", {}).get("fingerprint", "")
        lines.append(
            f"Dataset `{summary['dataset']}` (content fingerprint `{fingerprint}`), plan "
            f"`benchmarks/reproduction/{part.plan}`."
        )
    else:
        lines.append(f"Plan `benchmarks/reproduction/{part.plan}`.")
    lines.append(f"Command: `{part.command()}`")
    if recorded:
        lines.append("Setting ids: " + ", ".join(f"{r.label} `{r.runs[0].setting_id}`" for r in recorded) + ".")
    lines.append("")
    note = NOTES / f"{part.name}.md"
    if note.is_file():
        lines += [note.read_text().strip(), ""]
    return lines


def rerun_section() -> list[str]:
    if not RERUN_CHECK.is_file():
        return [
            "**Re-running a record**: not checked yet (`benchmarks/rerun_check.py` writes "
            f"`{RERUN_CHECK.relative_to(ROOT)}`).",
            "",
        ]
    info = json.loads(RERUN_CHECK.read_text())
    same = [c for c in info["checks"] if c["identical"]]
    lines = [
        f"**Re-running a record** (`benchmarks/rerun_check.py`, {info['machine']}; {info['versions']}): "
        f"{len(same)} of {len(info['checks'])} recorded runs trained again with the seed, configuration and "
        "thread count they record gave identical validation and test metrics (every float equal):",
        "",
    ]
    for c in info["checks"]:
        lines.append(
            f"- `{c['part']}` {c['run']} ({c['threads']} thread(s)"
            + ("" if c.get("threads_recorded") else "; the run does not record its count, so this is a guess")
            + "): "
            + ("identical" if c["identical"] else f"**differs**: {c['difference']}")
        )
    return [*lines, ""]


def render(parts: list[Any], intro: str, record: Path = RECORD) -> str:
    """The whole report, from the record alone."""
    lines = [
        "# Reproduction report",
        "",
        "Rendered by `python benchmarks/reproduce.py --render-only` from the committed record "
        "(`benchmarks/reproduction/record/`) alone; do not edit by hand. Each run's record states the code, "
        "library versions and thread count it ran with (`metrics.json` → `environment`; runs recorded before "
        "2026-12-06 did not record it, and their rows say `not recorded`).",
        "",
        intro.strip(),
        "",
    ]
    lines += rerun_section()
    lines += claims_section(parts, record)
    for part in parts:
        lines += render_part(part, record)
    return "\n".join(lines).rstrip() + "\n"
