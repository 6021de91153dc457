"""How each model's cost grows with the data: seconds per epoch, per validation pass, peak memory.

    python benchmarks/scale.py --models BPR,LightGCN,VBPR --factors 1,4 --out benchmarks/logs/scale.json \
        [--figure docs/figures/scale.png] [--memory-limit-gb 20] [--data-cache reports/scale-data]

For each size factor f it generates (once, into ``--data-cache``) a synthetic set of Baby's shape
× f — ``round(19,445 f)`` users, ``round(7,050 f)`` items, Baby's 8.27 interactions per user,
image 256-d and text 128-d features (``modalrec data synth``) — and, for each model, in a fresh
process (so that its peak memory is its own): builds the model (graphs included), trains
``--epochs`` epochs through modalrec's trainer, exactly as ``modalrec train`` does (sampler, batches,
its optimiser or closed-form step, the large-data mode where the size rule or ``--set large_data=...``
turns it on), runs the early-stopping validation pass the trainer would (a user sample in the
large-data mode) and one full test pass. It records seconds per epoch (median), per validation and
test pass, build seconds and peak memory, then fits, per model, the growth exponent of each against
the number of training interactions (least squares on log–log; 1 = linear). Before a model runs at
a size it predicts its peak memory from its two previous sizes; above ``--memory-limit-gb`` it is not started and the
table says why in one line, instead of the machine's OOM killer ending it. One job at a time:
the figures are only meaningful on an otherwise idle machine, which the output records.
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

ROOT = Path(__file__).resolve().parents[1]
BABY = {"users": 19445, "items": 7050, "interactions_per_user": 8.27}
MODALITIES = "image:256,text:128"


def dataset_for(factor: float, cache: Path) -> Path:
    users, items = round(BABY["users"] * factor), round(BABY["items"] * factor)
    folder = cache / f"baby-x{factor:g}"
    if not (folder / "synthetic.inter").exists():
        cmd = [sys.executable, "-m", "modalrec", "data", "synth", str(folder), "--users", str(users)]
        cmd += ["--items", str(items), "--modalities", MODALITIES]
        cmd += ["--interactions-per-user", str(BABY["interactions_per_user"])]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        print(f"generated {folder.name} in {time.perf_counter() - start:.0f} s", flush=True)
    return folder


def measure_one(model_name: str, data: Path, epochs: int, overrides: list[str], device: str = "cpu") -> dict:
    """Build, train ``epochs`` epochs and validate once, in this process, through modalrec's own
    :class:`~modalrec.training.Trainer` (its optimiser or closed-form step, the large-data mode when the
    size rule or ``--set`` turns it on, the early-stopping validation it would run); returns the figures."""
    import numpy as np
    import torch

    from modalrec.config import parse_overrides
    from modalrec.data.dataset import load_dataset
    from modalrec.evaluation import Evaluator
    from modalrec.runs import prepare_model
    from modalrec.training import Trainer, peak_memory_mb
    from modalrec.training.large_data import large_data_active

    ds = load_dataset(data)
    n_train = int(ds.split("train")[0].size)
    start = time.perf_counter()
    model, config, _ = prepare_model(model_name, ds, parse_overrides(overrides), device=device, cache_dir=False)
    trainer = Trainer(model, ds, config, log=lambda _: None, device=device)
    build = time.perf_counter() - start
    times = []
    for epoch in range(epochs):
        start = time.perf_counter()
        model.train()
        draws = trainer.start_epoch(epoch)
        trainer.train_batches(epoch, *draws)
        times.append(time.perf_counter() - start)
    valid = trainer.valid_eval.evaluate(model)  # what early stopping pays per evaluation
    start = time.perf_counter()
    Evaluator(ds, "test", block_size=int(config.eval_batch_size), device=device).evaluate(model)
    test = time.perf_counter() - start
    return {
        "users": ds.n_users,
        "items": ds.n_items,
        "train_interactions": n_train,
        "large_data": large_data_active(config, n_train),
        "train_batch_size": int(config.train_batch_size),
        "steps_per_epoch": trainer.n_batches,
        "build_seconds": round(build, 3),
        "epoch_seconds": round(float(np.median(times)), 3),
        "valid_seconds": round(valid.seconds, 3),
        "valid_users": int(valid.users.size),
        "test_seconds": round(test, 3),
        "peak_memory_mb": round(peak_memory_mb(torch.device(device)), 1),
        "device": device,
        "threads": torch.get_num_threads(),
    }


def growth_exponent(xs: list[float], ys: list[float]) -> float | None:
    """Slope of log y against log x (least squares); None without two distinct sizes."""
    import numpy as np

    pts = np.array([(x, y) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0], dtype=float).reshape(-1, 2)
    if len(np.unique(pts[:, 0])) < 2:
        return None
    return float(np.polyfit(np.log(pts[:, 0]), np.log(pts[:, 1]), 1)[0])


def predicted_memory_mb(done: list[dict], interactions: int) -> float | None:
    """Peak memory at ``interactions`` extrapolated from the model's measured sizes (log–log line)."""
    ok = [r for r in done if "peak_memory_mb" in r]
    if len(ok) < 2:
        return None
    xs = [r["train_interactions"] for r in ok[-2:]]
    ys = [r["peak_memory_mb"] for r in ok[-2:]]
    slope = growth_exponent(xs, ys)
    if slope is None:
        return None
    return ys[-1] * (interactions / xs[-1]) ** max(slope, 0.0)


def run_all(args: argparse.Namespace) -> dict:
    cache = Path(args.data_cache)
    factors = [float(f) for f in args.factors.split(",")]
    models = args.models.split(",")
    results: dict[str, list[dict]] = {m: [] for m in models}
    for factor in factors:
        data = dataset_for(factor, cache)
        with (data / "synthetic.inter").open() as inter:  # x_label is the last column; 0 = train
            n_train = sum(1 for line in inter if line.rstrip().endswith("\t0"))
        for model in models:
            entry: dict = {"factor": factor}
            guess = predicted_memory_mb(results[model], n_train)
            if guess is not None and guess > args.memory_limit_gb * 1024:
                entry.update(
                    train_interactions=n_train,
                    skipped=f"not started: predicted peak memory {guess / 1024:.1f} GB (from its two previous "
                    f"sizes) is above the {args.memory_limit_gb:g} GB limit",
                )
                print(f"{model} ×{factor:g}: {entry['skipped']}", flush=True)
                results[model].append(entry)
                continue
            cmd = [sys.executable, str(Path(__file__).resolve()), "--one", model, "--data", str(data)]
            cmd += ["--epochs", str(args.epochs), "--device", args.device] + [x for s in args.set for x in ("--set", s)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            if proc.returncode != 0:
                entry.update(train_interactions=n_train, failed=(proc.stderr.strip().splitlines() or ["?"])[-1][:200])
                print(f"{model} ×{factor:g}: failed: {entry['failed']}", flush=True)
            else:
                entry.update(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(f"{model} ×{factor:g}: {json.dumps(entry)}", flush=True)
            results[model].append(entry)
    summary = {}
    for model, rows in results.items():
        ok = [r for r in rows if "epoch_seconds" in r]
        xs = [r["train_interactions"] for r in ok]
        summary[model] = {
            key: growth_exponent(xs, [r[field] for r in ok])
            for key, field in (
                ("epoch", "epoch_seconds"),
                ("valid", "valid_seconds"),
                ("test", "test_seconds"),
                ("memory", "peak_memory_mb"),
            )
        }
    import torch

    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "versions": f"Python {platform.python_version()}, torch {torch.__version__}",
        "epochs": args.epochs,
        "base": {**BABY, "modalities": MODALITIES},
        "results": results,
        "growth_exponents": summary,
    }


def write_figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for model, rows in result["results"].items():
        ok = [r for r in rows if "epoch_seconds" in r]
        if not ok:
            continue
        xs = [r["train_interactions"] for r in ok]
        axes[0].loglog(xs, [r["epoch_seconds"] for r in ok], marker="o", label=model)
        axes[1].loglog(xs, [r["peak_memory_mb"] for r in ok], marker="o", label=model)
    axes[0].set(xlabel="training interactions", ylabel="seconds per epoch")
    axes[1].set(xlabel="training interactions", ylabel="peak memory (MiB)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="BPR,LightGCN,VBPR,FREEDOM,MARIO,MeAIM")
    ap.add_argument("--factors", default="1,4", help="sizes as multiples of Baby's shape")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], help="config override key=value (every model)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (peak memory is then the GPU's)")
    ap.add_argument("--memory-limit-gb", type=float, default=20.0)
    ap.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per model and size")
    ap.add_argument("--data-cache", default=str(ROOT / "reports" / "scale-data"))
    ap.add_argument("--out", default=None, help="JSON to write (default: print only)")
    ap.add_argument("--figure", default=None, help="log–log PNG to write")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:  # the child process: one model at one size
        print(json.dumps(measure_one(args.one, Path(args.data), args.epochs, args.set, args.device)))
        return
    result = run_all(args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, args.out)
        print(f"wrote {args.out}")
    if args.figure:
        write_figure(result, Path(args.figure))
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
