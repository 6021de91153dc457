"""The large-data mode's accuracy against MMRec's protocol: 3 seeds, paired tests over users.

    python benchmarks/large_data_check.py --data "$MODALREC_DATA/amazon_baby" \
        --out benchmarks/logs/large_data_baby.json [--model LightGCN] [--set large_data_steps=64]
    python benchmarks/large_data_check.py --data "$MODALREC_DATA/amazon_scientific_mm" --record scientific_mm \
        --model MARIO --label "MARIO (modalrec default: …)" --out benchmarks/logs/large_data_scientific_mm_mario.json

The default rows are a reproduction record's (``--record``, a part of ``benchmarks/reproduction/record``:
``baby`` by default, there batch 2048, no preset; the row ``--label``, by default the model's name; seeds
999–1001, their per-user vectors), or with ``--against DIR`` the runs of an earlier check's ``--report-dir``
(to isolate what a ``--set`` changes on top of the mode); this trains the same model with ``large_data: always``
(plus any ``--set``) on the same seeds through ``modalrec benchmark --executor ray`` (one thread per run,
two runs at a time) into ``--report-dir``, then compares: per metric (Recall/NDCG @10/@20) and split
(valid, test), each user's mean over the seeds in either mode, a paired t-test over users, and the
means ± sample std over seeds. Writes JSON with the machine, versions, wall time (of this invocation: run
again, it reuses the finished runs) and each run's graph notes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "benchmarks" / "reproduction" / "record"
METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
SEEDS = (999, 1000, 1001)


def recorded_runs(part: str, label: str) -> dict[int, Path]:
    """Seed → run folder of the row ``label`` in the record of reproduction part ``part``."""
    record = RECORDS / part
    rows = json.loads((record / "summary.json").read_text())["rows"]
    row = next((r for r in rows if r["label"] == label), None)
    if row is None:
        sys.exit(f"{record / 'summary.json'}: no row {label!r} (rows: {', '.join(r['label'] for r in rows)})")
    return {int(r["seed"]): record / r["run"] for r in row["runs"]}


def per_user(run: Path, split: str) -> dict[str, np.ndarray]:
    with np.load(run / f"{split}_per_user.npz") as z:
        return {k: z[k] for k in z.files}


def seed_mean(runs: dict[int, Path], split: str) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, list]]:
    """(users, each metric's per-user mean over the seeds, each metric's per-seed means)."""
    vectors = [per_user(runs[s], split) for s in SEEDS]
    users = vectors[0]["users"]
    assert all(np.array_equal(v["users"], users) for v in vectors), "runs rank different users"
    means = {m: np.mean([v[m] for v in vectors], axis=0) for m in METRICS}
    per_seed = {m: [float(v[m].mean()) for v in vectors] for m in METRICS}
    return users, means, per_seed


def main() -> None:
    from scipy import stats

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model", default="LightGCN")
    ap.add_argument("--record", default="baby", help="The reproduction part whose record holds the default rows.")
    ap.add_argument("--label", default=None, help="The default row's label in that record (default: the model).")
    ap.add_argument("--set", action="append", default=[], help="extra key=value for the large-data runs")
    ap.add_argument("--report-dir", type=Path, default=None, help="default: reports/large-data-<record>")
    ap.add_argument(
        "--against", type=Path, default=None,
        help="compare with the runs of an earlier check's --report-dir (e.g. the mode without this --set) "
        "instead of the record's default rows, to isolate what the --set changes",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.report_dir is None:
        args.report_dir = ROOT / "reports" / f"large-data-{args.record}"
    sets = ["large_data=always", *args.set]
    cmd = [sys.executable, "-m", "modalrec", "benchmark", "--models", args.model, "--data", str(args.data)]
    cmd += ["--seeds", ",".join(map(str, SEEDS)), "--out", str(args.report_dir), "--executor", "ray"]
    cmd += ["--cpus-per-trial", "1", "--preset", "none", *[x for s in sets for x in ("--set", s)]]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    runs_dir = args.report_dir / "runs"
    large = {s: next(runs_dir.glob(f"{args.model}-*-seed{s}"), None) for s in SEEDS}
    missing = [s for s, run in large.items() if run is None or not (run / "test_per_user.npz").is_file()]
    if missing:
        sys.exit(f"{runs_dir}: no finished run for seed(s) {missing} (see the table above); run this again to retry")
    if args.against is None:
        default = recorded_runs(args.record, args.label or args.model)
        baseline = {"record": args.record, "label": args.label or args.model}
    else:
        default = {s: next((args.against / "runs").glob(f"{args.model}-*-seed{s}"), None) for s in SEEDS}
        if any(run is None for run in default.values()):
            sys.exit(f"{args.against / 'runs'}: no {args.model} run for every seed of {list(SEEDS)}")
        shown = args.against.resolve()
        baseline = {"report_dir": str(shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown)}
    out: dict = {
        "model": args.model,
        "default_rows": baseline,
        "large_data_settings": sets,
        "seeds": list(SEEDS),
        "splits": {},
    }
    for split in ("valid", "test"):
        users_d, mean_d, seeds_d = seed_mean(default, split)
        users_l, mean_l, seeds_l = seed_mean(large, split)
        assert np.array_equal(users_d, users_l), "the two modes rank different users"
        out["splits"][split] = {
            m: {
                "default_mean": float(np.mean(seeds_d[m])),
                "default_std": float(np.std(seeds_d[m], ddof=1)),
                "large_data_mean": float(np.mean(seeds_l[m])),
                "large_data_std": float(np.std(seeds_l[m], ddof=1)),
                "delta": float(np.mean(seeds_l[m]) - np.mean(seeds_d[m])),
                "p_paired_t": float(stats.ttest_rel(mean_l[m], mean_d[m]).pvalue),
                "users": int(users_d.size),
            }
            for m in METRICS
        }
    metrics = [json.loads((large[s] / "metrics.json").read_text()) for s in SEEDS]
    out["large_data_runs"] = [
        {
            "seed": s,
            "best_epoch": m["best_epoch"],
            "large_data": m.get("large_data"),
            "validation": m.get("validation"),
            "seconds_per_epoch": m["timings"]["seconds_per_epoch"],
            "epochs_run": m["timings"]["epochs_run"],
            # how its item-item graphs were built (an approximate one's neighbour recall against exact)
            **({"graph_notes": m["graph_notes"]} if m.get("graph_notes") else {}),
        }
        for s, m in zip(SEEDS, metrics, strict=True)
    ]
    import torch
    from bench_record import machine_summary

    out["machine"] = f"{machine_summary()}; 2 runs at a time, 1 thread each"
    out["versions"] = f"Python {platform.python_version()}, torch {torch.__version__}, NumPy {np.__version__}"
    out["wall_seconds"] = round(wall, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, args.out)
    for split, rows in out["splits"].items():
        for m, r in rows.items():
            print(
                f"{split} {m}: default {r['default_mean']:.4f} ± {r['default_std']:.4f}, large-data "
                f"{r['large_data_mean']:.4f} ± {r['large_data_std']:.4f}, Δ {r['delta']:+.4f}, p {r['p_paired_t']:.3f}"
            )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
