"""Cornac's BPR and modalrec's BPR at matched sizes, same seeds, timed in one run on one machine.

    python benchmarks/peers/bpr_peer_time.py --cornac-python /tmp/cornac/bin/python \
        --data "$MODALREC_DATA/amazon_scientific_mm" --out benchmarks/reproduction/peer_time.json

For each size (Cornac's factors k = modalrec's embedding_size d) and seed, one after the other:
Cornac 3.0.1 BPR through ``benchmarks/peers/cornac_bpr.py`` (its own environment: Cornac is not a
dependency of modalrec; fixed 400 epochs) and ``modalrec train`` with the setting the reproduction's
``scientific_mm-bpr-peer`` part selected on validation for that size (read from its record; early
stopping, validation every epoch, train and valid items masked at test). Each time is the wall
time of the whole process — start-up, data reading, training and scoring — to the accuracy it
reports. Cornac trains on one thread whenever it is given a seed (its own rule, for determinism), so
both run with one thread by default (``--threads``). Writes the times, the test Recall@20 of each run,
the machine and the versions.

``--fast`` adds a third row per size: the same selected setting trained with a batch ``FAST_BATCH_FACTOR``
(8) times larger and its learning rate 8 times larger (the closed-form SGD step applies the batch's mean
gradient times the learning rate, so each pair's update keeps its size), validated every
``FAST_EVAL_STEP`` (10) epochs with a patience of 2 evaluations (20 epochs, the protocol's patience in
epochs; the earlier record validated every 5 epochs with a patience of 4: at d = 128 a validation pass costs
about as much as five epochs of steps, so half of them was about 0.6 s of the row's 5 s). That setting was
not chosen on validation by the bpr-peer part: it is a speed setting, and the row shows what it costs in
accuracy on the same seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECORD = ROOT / "benchmarks" / "reproduction" / "record" / "scientific_mm-bpr-peer" / "summary.json"
CORNAC_SCRIPT = ROOT / "benchmarks" / "peers" / "cornac_bpr.py"


def selected_settings(sizes: list[int]) -> dict[int, dict]:
    """The overrides the bpr-peer part selected for each Rendle-form row, by embedding size."""
    rows = json.loads(RECORD.read_text())["rows"]
    out = {}
    for row in rows:
        if "Rendle" in row["label"]:
            out[int(row["overrides"].get("embedding_size", 64))] = row["overrides"]
    missing = [d for d in sizes if d not in out]
    if missing:
        sys.exit(f"{RECORD}: no recorded Rendle-form row for size(s) {missing}; run that part first")
    return out


FAST_BATCH_FACTOR = 8
FAST_EVAL_STEP = 10
FAST_PATIENCE = 2  # evaluations: 20 epochs, the protocol's 20 evaluations of one epoch each


def fast_setting(setting: dict) -> dict:
    """``setting`` with the batch and the learning rate ×8, validation every 10 epochs, patience 2 evaluations."""
    batch = int(setting.get("train_batch_size", 2048)) * FAST_BATCH_FACTOR
    rate = float(setting["learning_rate"]) * FAST_BATCH_FACTOR
    return {**setting, "train_batch_size": batch, "learning_rate": rate, "eval_step": FAST_EVAL_STEP,
            "stopping_step": FAST_PATIENCE}  # fmt: skip


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} … failed:\n{proc.stderr[-2000:]}")
    return seconds, proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cornac-python", required=True, help="python of an environment with cornac==3.0.1")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sizes", default="64,128,256")
    ap.add_argument("--seeds", default="999,1000,1001")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fast", action="store_true", help="Also time the speed setting (see the module docstring).")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = selected_settings(sizes)
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in sizes:
            cornac = {"size": d, "toolbox": "Cornac 3.0.1 BPR (400 epochs)", "seconds": [], "test_recall@20": []}
            variants = [("modalrec BPR (Rendle form)", settings[d])]
            if args.fast:
                label = (
                    f"modalrec BPR (Rendle form; batch and learning rate ×{FAST_BATCH_FACTOR}, validation every "
                    f"{FAST_EVAL_STEP} epochs)"
                )
                variants.append((label, fast_setting(settings[d])))
            ours = [
                {"size": d, "toolbox": label, "seconds": [], "test_recall@20": [], "setting": dict(setting)}
                for label, setting in variants
            ]
            for seed in seeds:
                out = Path(tmp) / f"cornac-{d}-{seed}.json"
                cmd = [args.cornac_python, str(CORNAC_SCRIPT), "--data", str(args.data), "--out", str(out)]
                seconds, _ = timed([*cmd, "--factors", str(d), "--seeds", str(seed), "--no-xavier"], env)
                run = json.loads(out.read_text())["runs"][0]
                cornac["seconds"].append(round(seconds, 2))
                cornac["test_recall@20"].append(run["test_recall@20"])
                cornac.setdefault("valid_recall@20", []).append(run["valid_recall@20"])
                for n, row in enumerate(ours):
                    run_dir = Path(tmp) / f"modalrec-{d}-{seed}-{n}"
                    sets = [f"{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in row["setting"].items()]
                    cmd = [sys.executable, "-m", "modalrec", "train", "--model", "BPR", "--data", str(args.data)]
                    cmd += ["--out", str(run_dir), "--seed", str(seed), "--threads", threads, "--quiet"]
                    for s in ["mask_valid_at_test=true", *sets]:
                        cmd += ["--set", s]
                    seconds, _ = timed(cmd, env)
                    metrics = json.loads((run_dir / "metrics.json").read_text())
                    row["seconds"].append(round(seconds, 2))
                    row["test_recall@20"].append(metrics["test"]["recall@20"])
                    row.setdefault("valid_recall@20", []).append(metrics["valid"]["recall@20"])
                    row.setdefault("epochs_run", []).append(metrics["timings"]["epochs_run"])
                    print(
                        f"size {d} seed {seed}: Cornac {cornac['seconds'][-1]} s "
                        f"R@20 {cornac['test_recall@20'][-1]:.4f}; "
                        f"{row['toolbox']} {row['seconds'][-1]} s R@20 {row['test_recall@20'][-1]:.4f}",
                        flush=True,
                    )
            rows += [cornac, *ours]
    import numpy
    import torch

    from modalrec.run_files import code_version

    versions = subprocess.run(
        [args.cornac_python, "-c", "import cornac, numpy; print(cornac.__version__, numpy.__version__)"],
        capture_output=True,
        text=True,
    ).stdout.split()
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "versions": f"Python {platform.python_version()}, torch {torch.__version__}, NumPy {numpy.__version__} "
        f"(modalrec); Cornac {versions[0] if versions else '?'} with NumPy {versions[1] if len(versions) > 1 else '?'}",
        "threads": args.threads,
        "fast": args.fast,  # whether the speed rows were timed (--fast); paths are not recorded
        "modalrec_code": code_version(),  # which modalrec the times belong to (its sources' hash)
        "seeds": seeds,
        "data": args.data.name,
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
