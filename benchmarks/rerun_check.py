"""Train recorded runs again and check that they give the same numbers.

    MODALREC_DATA=../shared/data python benchmarks/rerun_check.py \
        scientific_mm/files/LightGCN-1719cc0010-seed999 scientific_mm-bpr-peer/files/BPR-e41349c003-seed999

Each argument names a run folder of the committed record (``benchmarks/reproduction/record/``).
The run is trained again from its recorded resolved configuration, seed and modalities on the
dataset its configuration names (``$MODALREC_DATA/<folder>``), with the thread count its
``metrics.json`` records (runs recorded before threads were recorded: ``--threads``, default 2),
and its validation and test metrics are compared with the record's, float for float. The outcome,
with the machine and versions, is written to ``benchmarks/reproduction/rerun_check.json`` (each
check replaces an earlier one of the same run), which the report shows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "benchmarks" / "reproduction" / "record"
OUT = ROOT / "benchmarks" / "reproduction" / "rerun_check.json"
NOT_SETTINGS = ("seed", "preset")  # given on the command line, not as settings


def check(run: str, default_threads: int, tmp: Path) -> dict:
    folder = RECORD / run
    stored = yaml.safe_load((folder / "config.yaml").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    env = metrics.get("environment") or {}
    threads = int(env.get("threads") or default_threads)
    data = Path(os.path.expandvars(stored["data"]["path"]))
    data = data if data.is_absolute() else ROOT / data  # reports/reproduction/…: a folder the script generated
    if not data.is_dir():
        sys.exit(f"{folder / 'config.yaml'}: data folder {stored['data']['path']} not found (set $MODALREC_DATA)")
    settings = {k: v for k, v in stored["config"].items() if k not in NOT_SETTINGS}
    config = tmp / f"{folder.name}.yaml"
    config.write_text(yaml.safe_dump(settings))
    out = tmp / folder.name
    cmd = [sys.executable, "-m", "modalrec", "train", "--model", stored["model"], "--data", str(data)]
    cmd += ["--config", str(config), "--seed", str(stored["config"]["seed"]), "--threads", str(threads)]
    cmd += ["--out", str(out), "--quiet", "--preset", "none"]
    if stored["data"].get("modalities"):
        cmd += ["--modalities", ",".join(stored["data"]["modalities"])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{run}: training failed:\n{proc.stderr[-2000:]}")
    again = json.loads((out / "metrics.json").read_text())
    differences = [
        f"{split} {m}: {metrics[split][m]!r} → {again[split][m]!r}"
        for split in ("valid", "test")
        for m in metrics[split]
        if metrics[split][m] != again[split].get(m)
    ]
    if metrics["best_epoch"] != again["best_epoch"]:
        differences.insert(0, f"best epoch {metrics['best_epoch']} → {again['best_epoch']}")
    part = run.split("/")[0]
    return {
        "part": part,
        "run": folder.name,
        "threads": threads,
        "threads_recorded": bool(env.get("threads")),
        "identical": not differences,
        "difference": "; ".join(differences[:3]) + (" …" if len(differences) > 3 else ""),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders under benchmarks/reproduction/record/")
    ap.add_argument("--threads", type=int, default=2, help="for runs that do not record their thread count")
    args = ap.parse_args()
    import numpy
    import torch

    previous = json.loads(OUT.read_text())["checks"] if OUT.is_file() else []
    with tempfile.TemporaryDirectory() as tmp:
        checks = []
        for run in args.runs:
            checks.append(check(run, args.threads, Path(tmp)))
            print(json.dumps(checks[-1]), flush=True)
    names = {c["run"] for c in checks}
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "versions": f"Python {platform.python_version()}, torch {torch.__version__}, NumPy {numpy.__version__}",
        "checks": [c for c in previous if c["run"] not in names] + checks,
    }
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
