"""How each model's cost grows with the data: seconds per epoch, per validation pass, peak memory.

    python benchmarks/scale.py --models BPR,LightGCN,VBPR --factors 1,4 --out benchmarks/logs/scale.json \
        [--figure docs/figures/scale.png] [--memory-limit-gb 20] [--data-cache reports/scale-data]

For each size factor f it generates (once, into ``--data-cache``) a synthetic set of Baby's shape
× f — ``round(19,445 f)`` users, ``round(7,050 f)`` items, Baby's 8.27 interactions per user,
image 256-d and text 128-d features (``modalrec data synth``); a size written ``UxIxR`` is that many
users and items with R interactions per user on average (``1000000x300000x10``: a real catalogue's
10M interactions) — and, for each model, in a fresh
process (so that its peak memory is its own): builds the model (graphs included), trains
``--epochs`` epochs through modalrec's trainer, exactly as ``modalrec train`` does (sampler, batches,
its optimiser or closed-form step, the large-data mode where the size rule or ``--set large_data=...``
turns it on), runs the early-stopping validation pass the trainer would (a user sample in the
large-data mode) and one full test pass. It records seconds per epoch (median), per validation and
test pass, build seconds and peak memory, then fits, per model, the growth exponent of each against
the number of training interactions (least squares on log–log; 1 = linear). Before a model runs at
a size it predicts its peak memory from its two previous sizes; above ``--memory-limit-gb`` it is not started and the
table says why in one line, instead of the machine's OOM killer ending it; likewise when the row's wall time
(build, epochs, validation and test, each part extrapolated from the two previous sizes) would pass
``--timeout``, and a row that still runs past it is stopped and recorded as such, the campaign going on.
One job at a time:
the figures are only meaningful on an otherwise idle machine; each row records the 1-minute load
average when it started. ``--out`` is rewritten after every measurement and a (model, size) already
in it (same epochs, overrides and device, and the same source of the model's file) is kept, so a campaign
of several hours resumes where it stopped; a row whose model's code changed since is measured again
(each row records the model's source hash and modalrec's code version). ``--test-users N`` times the
test pass on a fixed, seeded sample of N test users instead of all of them, where one full pass would
outlast a session; such a row keeps the measured seconds, the number of users they ranked and the
full pass's time scaled linearly in users (labelled an estimate in the table), and is left out of the
test pass's growth exponent. ``--markdown`` writes the table for docs/scale.md. Every row's process lets
its idle OpenMP threads spin briefly (the idle machine's choice) unless the user set ``OMP_WAIT_POLICY`` or
``GOMP_SPINCOUNT``, and the row records which (``openmp_waiting``). ``--test-budget-s S`` lets a row's
test pass span runs: after S seconds of it the row is written unfinished (``test_partial``: users ranked,
seconds so far), its trained weights and progress kept under ``<data-cache>/row-state/``, and the next run
with the same settings continues the pass from those weights instead of training again; the finished row
says over how many processes it ran (``test_processes``; each computed the model's evaluation
representations once) and keeps the pass's Recall@20, the same as one uninterrupted pass gives; its
``modalrec_code`` is the last process's, and ``test_codes`` lists every process's when they differ (the
package edited between runs). Progress is counted in users ranked, so a pass resumes at the right user even
if the ranking's block size changed in between.
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
OPENMP_WAITING_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# ranking blocks per saved step of a test pass that may span processes (--test-budget-s)
TEST_CHUNK_BLOCKS = 64
# the test pass's metric a row keeps (when the run's metrics include it): a pass split over processes can then
# be checked against one pass
TEST_METRIC = "recall@20"
# the user's own setting, read before anything here imports modalrec (whose import sets one of these)
USER_OPENMP_WAITING = {k: os.environ[k] for k in OPENMP_WAITING_KEYS if k in os.environ}


def row_openmp_waiting() -> dict[str, str]:
    """How each row's process lets idle OpenMP threads wait: the user's ``OMP_WAIT_POLICY`` /
    ``GOMP_SPINCOUNT`` when set, else the idle machine's choice (modalrec.threads.openmp_waiting_for).

    Not the load-based choice that importing modalrec makes: the script runs one job at a time, so the
    load a row's process sees at its start is mostly the previous row's own process, and rows measured
    right after a long one got passive waiting while the others spun (× 16 MARIO at a load of 1.58).
    """
    if USER_OPENMP_WAITING:
        return dict(USER_OPENMP_WAITING)
    from modalrec.threads import openmp_waiting_for, usable_cores

    return openmp_waiting_for(0.0, usable_cores())


def parse_size(token: str) -> dict:
    """A size of the campaign: ``4`` is Baby's shape × 4 (users, items; Baby's 8.27 interactions per user);
    ``1000000x300000x10`` is an explicit shape, users × items × mean interactions per user (a real
    catalogue's proportions, e.g. issue #30's 1M × 300k × 10M target)."""
    parts = token.lower().replace("×", "x").split("x")
    try:
        if len(parts) == 1:
            factor = float(parts[0])
            return {
                "key": {"factor": factor},
                "label": f"×{factor:g}",
                "users": round(BABY["users"] * factor),
                "items": round(BABY["items"] * factor),
                "per_user": BABY["interactions_per_user"],
                "folder": f"baby-x{factor:g}",
            }
        if len(parts) == 3:
            users, items, per_user = int(parts[0]), int(parts[1]), float(parts[2])
            shape = f"{users}x{items}x{per_user:g}"
            return {
                "key": {"shape": shape},
                "label": f"{users:,} × {items:,}, {per_user:g} / user",
                "users": users,
                "items": items,
                "per_user": per_user,
                "folder": f"shape-{shape}",
            }
    except ValueError:
        pass
    raise SystemExit(f"--factors: {token!r} is neither a multiple of Baby's shape (4) nor USERSxITEMSxPER_USER")


def row_label(row: dict) -> str:
    """How the table names a row's size."""
    return parse_size(row["shape"])["label"] if "shape" in row else f"×{row['factor']:g}"


def dataset_for(size: dict, cache: Path) -> Path:
    folder = cache / size["folder"]
    if not (folder / "synthetic.inter").exists():
        cmd = [sys.executable, "-m", "modalrec", "data", "synth", str(folder), "--users", str(size["users"])]
        cmd += ["--items", str(size["items"]), "--modalities", MODALITIES]
        cmd += ["--interactions-per-user", str(size["per_user"])]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        print(f"generated {folder.name} in {time.perf_counter() - start:.0f} s", flush=True)
    return folder


def measure_one(
    model_name: str,
    data: Path,
    epochs: int,
    overrides: list[str],
    device: str = "cpu",
    test_users: int = 0,
    state: Path | None = None,
    test_budget: float = 0.0,
    chunk_blocks: int = TEST_CHUNK_BLOCKS,
) -> dict:
    """Build, train ``epochs`` epochs and validate once, in this process, through modalrec's own
    :class:`~modalrec.training.Trainer` (its optimiser or closed-form step, the large-data mode when the
    size rule or ``--set`` turns it on, the early-stopping validation it would run), then one test pass
    (over ``test_users`` sampled users when > 0); returns the figures.

    With a ``state`` folder the row can span several processes: the trained weights and the figures so far
    are saved there after validation, and the test pass runs in chunks of ``chunk_blocks`` ranking blocks,
    its progress saved after each; past ``test_budget`` seconds of testing (> 0) the process stops after its
    chunk and returns the figures with ``test_partial``. Run again, it rebuilds the model, loads the saved
    weights instead of training and continues the pass where it stopped; the folder is emptied when the
    pass is complete. Each process computes the model's evaluation representations again, so a pass split
    over p processes pays that p times (``test_processes`` says how many)."""
    import numpy as np
    import torch

    from modalrec.config import parse_overrides
    from modalrec.data.dataset import load_dataset
    from modalrec.evaluation import Evaluator
    from modalrec.io import write_json
    from modalrec.run_files import code_version
    from modalrec.runs import prepare_model
    from modalrec.training import Trainer, peak_memory_mb
    from modalrec.training.large_data import large_data_active

    # the sources this process runs, taken before the row's long work: an edit of the package meanwhile (a
    # pass of hours) must not relabel the row with code that did not run in it
    code = code_version()
    ds = load_dataset(data)
    n_train = int(ds.split("train")[0].size)
    key = {
        "model": model_name,
        "model_source": current_source(model_name),
        "data": str(Path(data).resolve()),
        "epochs": epochs,
        "set": sorted(overrides),
        "device": device,
        "test_users": test_users,
    }
    saved = load_row_state(state, key)
    start = time.perf_counter()
    model, config, graphs = prepare_model(model_name, ds, parse_overrides(overrides), device=device, cache_dir=False)
    trainer = Trainer(model, ds, config, log=lambda _: None, device=device)
    build = time.perf_counter() - start
    if saved is None:
        times = []
        for epoch in range(epochs):
            start = time.perf_counter()
            model.train()
            draws = trainer.start_epoch(epoch)
            trainer.train_batches(epoch, *draws)
            times.append(time.perf_counter() - start)
        valid = trainer.valid_eval.evaluate(model)  # what early stopping pays per evaluation
        figures = {
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
        }
        progress = new_test_progress()
        if state is not None:
            save_row_state(state, key, figures, model.state_dict())
    else:
        figures, progress = saved["figures"], saved["progress"]
        model.load_state_dict(saved["weights"])
    tester = Evaluator(ds, "test", block_size=int(config.eval_batch_size), device=device, user_sample=test_users)
    n_test, block = len(tester.users), tester.block_size
    if "blocks_done" in progress:  # saved before progress was counted in users: blocks of this same size then
        progress["users_done"] = min(n_test, progress.pop("blocks_done") * block)
    progress["processes"] += 1
    progress["codes"] = [*progress.get("codes", []), code]  # one per process, in order
    model.eval()  # the representations are computed once per process, not once per chunk
    spent = 0.0
    while progress["users_done"] < n_test and not (state is not None and 0 < test_budget <= spent):
        # counted in users, so a pass resumes at the right user even if the block size changed in between
        stop = min(n_test, progress["users_done"] + chunk_blocks * block) if state else n_test
        chunk = list(range(progress["users_done"], stop, block))
        start = time.perf_counter()
        result = tester.evaluate(model, blocks=chunk)
        elapsed = time.perf_counter() - start
        spent += elapsed
        progress["seconds"] += elapsed
        if TEST_METRIC in result.per_user:
            progress["metric_sum"] += float(result.per_user[TEST_METRIC].sum())
        progress["users_done"] += int(result.users.size)
        if state is not None:
            write_json(state / "test_progress.json", {"key": key, **progress})
    peak = max(progress["peak_memory_mb"], round(peak_memory_mb(torch.device(device)), 1))
    notes = list(dict.fromkeys(progress["graph_notes"] + list(graphs.notes)))
    row = {**figures}
    if len(set(progress["codes"])) > 1:  # a pass spanning processes that ran different package sources
        row["test_codes"] = progress["codes"]
    if progress["users_done"] < n_test:
        progress.update(peak_memory_mb=peak, graph_notes=notes)
        write_json(state / "test_progress.json", {"key": key, **progress})
        row["test_partial"] = {
            "users_done": progress["users_done"],
            "users": n_test,
            "seconds_so_far": round(progress["seconds"], 3),
            "processes": progress["processes"],
        }
    else:
        row["test_seconds"] = round(progress["seconds"], 3)
        # the metric over every ranked user: a pass split over processes must give what one pass gives
        if TEST_METRIC in tester.metric_names:
            row[f"test_{TEST_METRIC}"] = round(progress["metric_sum"] / max(1, len(tester.users)), 6)
        if progress["processes"] > 1:
            row["test_processes"] = progress["processes"]
        if state is not None:
            clear_row_state(state)
    if tester.users.size < tester.n_eligible_users:
        row.update(test_users=int(tester.users.size), test_eligible_users=tester.n_eligible_users)
        if "test_seconds" in row:
            scaled = row["test_seconds"] * tester.n_eligible_users / tester.users.size
            row["test_seconds_all_estimated"] = round(scaled, 3)
    return {
        **row,
        "peak_memory_mb": peak,
        "device": device,
        "threads": torch.get_num_threads(),
        # what this process's OpenMP threads did while waiting (row_openmp_waiting, set by the parent)
        "openmp_waiting": " ".join(f"{k}={os.environ[k]}" for k in OPENMP_WAITING_KEYS if k in os.environ),
        "model_source": key["model_source"],
        "modalrec_code": code,
        # how each item-item graph was built: an approximate one's neighbour recall against exact (the
        # fixed graphs at build; MARIO's learned ones over every rebuild of the epoch and the two passes)
        **({"graph_notes": notes} if notes else {}),
    }


def save_row_state(state: Path, key: dict, figures: dict, weights: dict) -> None:
    """The trained weights and the figures so far of a row whose test pass may span processes."""
    import torch

    from modalrec.io import atomic_write

    clear_row_state(state)
    saved = {"key": key, "figures": figures, "weights": weights}
    atomic_write(state / "trained.pt", lambda fh: torch.save(saved, fh), "wb")


def load_row_state(state: Path | None, key: dict) -> dict | None:
    """A saved row of this very ``key`` (model source, data, settings) with its test progress; None when
    there is none, or it was saved for anything else (then it is removed and the row starts afresh)."""
    import torch

    if state is None or not (state / "trained.pt").is_file():
        return None
    saved = torch.load(state / "trained.pt", map_location="cpu", weights_only=True)
    progress_file = state / "test_progress.json"
    progress = json.loads(progress_file.read_text()) if progress_file.is_file() else None
    if saved.get("key") != key or (progress is not None and progress.pop("key", None) != key):
        print(f"{state}: saved for other settings or another version of the model; starting afresh", file=sys.stderr)
        clear_row_state(state)
        return None
    return {**saved, "progress": progress or new_test_progress()}


def new_test_progress() -> dict:
    """A test pass not begun: users ranked, seconds spent, processes it ran in, their peak, graph notes."""
    return {
        "users_done": 0,
        "seconds": 0.0,
        "processes": 0,
        "peak_memory_mb": 0.0,
        "graph_notes": [],
        "metric_sum": 0.0,
        "codes": [],
    }


def clear_row_state(state: Path) -> None:
    for name in ("trained.pt", "test_progress.json"):
        (state / name).unlink(missing_ok=True)


def current_source(model_name: str) -> str:
    """The model's source hash now (what a kept row must have been measured with)."""
    from modalrec.models import get_model_class
    from modalrec.models.spec import model_source_hash

    return model_source_hash(get_model_class(model_name))


def growth_exponent(xs: list[float], ys: list[float]) -> float | None:
    """Slope of log y against log x (least squares); None without two distinct sizes."""
    import numpy as np

    pts = np.array([(x, y) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0], dtype=float).reshape(-1, 2)
    if len(np.unique(pts[:, 0])) < 2:
        return None
    return float(np.polyfit(np.log(pts[:, 0]), np.log(pts[:, 1]), 1)[0])


def extrapolated(done: list[dict], interactions: int, figure) -> float | None:
    """``figure(row)`` at ``interactions``, extrapolated along the log–log line through the model's two largest
    measured sizes (``figure`` returns None for a row that lacks it)."""
    ok = [(r["train_interactions"], figure(r)) for r in done if figure(r) is not None]
    if len(ok) < 2:
        return None
    (x0, y0), (x1, y1) = ok[-2:]
    slope = growth_exponent([x0, x1], [y0, y1])
    if slope is None:
        return None
    return y1 * (interactions / x1) ** max(slope, 0.0)


def predicted_memory_mb(done: list[dict], interactions: int) -> float | None:
    """Peak memory at ``interactions`` extrapolated from the model's measured sizes (log–log line)."""
    return extrapolated(done, interactions, lambda r: r.get("peak_memory_mb"))


def predicted_row_seconds(done: list[dict], interactions: int, epochs: int, sampled_test: bool) -> float | None:
    """Wall seconds of a row at ``interactions`` — the model's build, ``epochs`` epochs, the validation pass and
    the test pass (``sampled_test``: the sampled pass's measured seconds, else the full pass's) — each part
    extrapolated along its own growth from the model's two largest measured sizes; None until two sizes have
    every part."""

    def test_seconds(r: dict) -> float | None:
        return r.get("test_seconds") if sampled_test else r.get("test_seconds_all_estimated", r.get("test_seconds"))

    parts = (
        lambda r: r.get("build_seconds"),
        lambda r: r["epoch_seconds"] * epochs if "epoch_seconds" in r else None,
        lambda r: r.get("valid_seconds"),
        test_seconds,
    )
    guesses = [extrapolated(done, interactions, part) for part in parts]
    return None if None in guesses else sum(guesses)


def settings_key(args: argparse.Namespace) -> dict:
    """What makes two measurements of one (model, size) comparable: epochs, overrides, device."""
    return {"epochs": args.epochs, "set": sorted(args.set), "device": args.device}


def load_previous(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Finished (model, size) measurements of an earlier, interrupted run of the same settings (``--out``)."""
    if not args.out or not Path(args.out).is_file():
        return {}
    old = json.loads(Path(args.out).read_text())
    if old.get("settings") != settings_key(args):
        sys.exit(f"{args.out}: written with other settings ({old.get('settings')}); use another --out")
    return old.get("results", {})


def finish(args: argparse.Namespace, results: dict[str, list[dict]]) -> dict:
    """The whole record: per-model rows, growth exponents against training interactions, machine, versions."""
    import torch
    from bench_record import machine_summary

    summary = {}
    for model, rows in results.items():
        ok = [r for r in rows if "epoch_seconds" in r]
        # a sampled or unfinished test pass is no point of that line
        full_test = [r for r in ok if "test_users" not in r and "test_seconds" in r]
        summary[model] = {
            key: growth_exponent([r["train_interactions"] for r in use], [r[field] for r in use])
            for key, field, use in (
                ("epoch", "epoch_seconds", ok),
                ("valid", "valid_seconds", ok),
                ("test", "test_seconds", full_test),
                ("memory", "peak_memory_mb", ok),
            )
        }
    return {
        "machine": machine_summary(),
        "versions": f"Python {platform.python_version()}, torch {torch.__version__}",
        "settings": settings_key(args),
        "epochs": args.epochs,
        "base": {**BABY, "modalities": MODALITIES},
        "results": results,
        "growth_exponents": summary,
    }


def save(args: argparse.Namespace, results: dict[str, list[dict]]) -> dict:
    """Write the record so far (atomically) when ``--out`` is given; return it."""
    record = finish(args, results)
    if args.out:
        from modalrec.io import write_text

        write_text(args.out, json.dumps(record, indent=1) + "\n")
    return record


def run_all(args: argparse.Namespace) -> dict:
    """Measure every (model, size) not already in ``--out`` (or, with ``--remeasure``, every one asked); the
    record is rewritten after each one, so an interrupted campaign (hours at the larger sizes) continues where
    it stopped when run again. Rows of sizes not asked this time are kept as they are."""
    cache = Path(args.data_cache)
    sizes_asked = [parse_size(token) for token in args.factors.split(",")]
    models = args.models.split(",")
    previous = load_previous(args)
    sizes: dict[str, tuple[Path, int]] = {}  # data folder → (folder, training interactions), read once
    # rows of models not asked for this time stay in the record as they are
    results: dict[str, list[dict]] = {m: rows for m, rows in previous.items() if m not in models}
    results.update({m: [] for m in models})
    sources = {model: current_source(model) for model in models}
    from bench_record import cpu_line

    cpu_model = cpu_line()
    not_asked = {
        m: [r for r in previous.get(m, []) if not any(is_size(r, size) for size in sizes_asked)] for m in models
    }
    for size in sizes_asked:
        label = size["label"]
        for model in models:
            # a row that failed, or was not started, is decided again: its prediction rests on the smaller
            # rows and this run's limits, either of which may have changed
            done = next(
                (r for r in previous.get(model, []) if is_size(r, size) and "failed" not in r and "skipped" not in r),
                None,
            )
            if done is not None and args.remeasure:
                print(f"{model} {label}: measuring again (--remeasure)", flush=True)
                done = None
            if done is not None and "test_partial" in done and done.get("model_source") == sources[model]:
                users_done = done["test_partial"]["users_done"]
                print(f"{model} {label}: continuing its test pass ({users_done:,} users done)", flush=True)
                done = None
            if done is not None and done.get("model_source", sources[model]) != sources[model]:
                print(f"{model} {label}: the model's code changed since it was measured; measuring again", flush=True)
                done = None
            if done is not None:
                results[model].append(done)
                print(f"{model} {label}: measured before, kept", flush=True)
                continue
            data, n_train = sized_dataset(size, cache, sizes)
            # the CPU per row: rows kept from earlier runs may have been measured on another host
            entry: dict = {**size["key"], "cpu": cpu_model, "load_average_before": round(os.getloadavg()[0], 2)}
            recorded = with_rows_not_asked(results, not_asked)[model]
            smaller = [r for r in recorded if r.get("train_interactions", 0) < n_train]
            guess = predicted_memory_mb(smaller, n_train)
            # a pass that may span processes (--test-budget-s) is bounded by its budget, not by --timeout
            seconds = (
                None
                if args.test_budget_s > 0
                else predicted_row_seconds(smaller, n_train, args.epochs, args.test_users > 0)
            )
            if guess is not None and guess > args.memory_limit_gb * 1024:
                entry.update(
                    train_interactions=n_train,
                    skipped=f"not started: predicted peak memory {guess / 1024:.1f} GB (from its two previous "
                    f"sizes) is above the {args.memory_limit_gb:g} GB limit",
                )
                print(f"{model} {label}: {entry['skipped']}", flush=True)
            elif seconds is not None and seconds > args.timeout:
                entry.update(
                    train_interactions=n_train,
                    skipped=f"not started: predicted {seconds / 3600:.1f} h for the row (build, {args.epochs} "
                    f"epoch(s), validation and test, each from its two previous sizes) is above the "
                    f"{args.timeout:g} s --timeout",
                )
                print(f"{model} {label}: {entry['skipped']}", flush=True)
            else:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--one", model, "--data", str(data)]
                cmd += ["--epochs", str(args.epochs), "--device", args.device, "--test-users", str(args.test_users)]
                cmd += [x for s in args.set for x in ("--set", s)]
                if args.test_budget_s > 0:  # a row that may span processes keeps its state in the data cache
                    state = cache / "row-state" / f"{model}-{size['folder']}"
                    cmd += ["--state", str(state), "--test-budget-s", str(args.test_budget_s)]
                    cmd += ["--test-chunk-blocks", str(args.test_chunk_blocks)]
                env = {k: v for k, v in os.environ.items() if k not in OPENMP_WAITING_KEYS} | row_openmp_waiting()
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
                except subprocess.TimeoutExpired:  # the row's process is killed; the campaign goes on
                    proc = None
                if proc is None or proc.returncode != 0:
                    why = (
                        f"stopped after {args.timeout:g} s (--timeout)"
                        if proc is None
                        else (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
                    )
                    entry.update(train_interactions=n_train, failed=why)
                    print(f"{model} {label}: failed: {why}", flush=True)
                else:
                    entry.update(json.loads(proc.stdout.strip().splitlines()[-1]))
                    print(f"{model} {label}: {json.dumps(entry)}", flush=True)
            results[model].append(entry)
            save(args, with_rows_not_asked(results, not_asked))
    return save(args, with_rows_not_asked(results, not_asked))


def with_rows_not_asked(results: dict[str, list[dict]], not_asked: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """``results`` with each model's recorded rows at sizes this run did not ask for, in order of size."""
    return {
        m: sorted(rows + not_asked.get(m, []), key=lambda r: r.get("train_interactions", 0))
        for m, rows in results.items()
    }


def is_size(row: dict, size: dict) -> bool:
    """Whether a recorded row was measured at ``size`` (rows written before explicit shapes carry a factor)."""
    return all(row.get(k) == v for k, v in size["key"].items())


def sized_dataset(size: dict, cache: Path, sizes: dict[str, tuple[Path, int]]) -> tuple[Path, int]:
    """The synthetic set of ``size`` (generated on first use) and its training interactions, counted once."""
    if size["folder"] not in sizes:
        data = dataset_for(size, cache)
        with (data / "synthetic.inter").open() as inter:  # x_label is the last column; 0 = train
            sizes[size["folder"]] = data, sum(1 for line in inter if line.rstrip().endswith("\t0"))
    return sizes[size["folder"]]


def markdown_table(record: dict) -> str:
    """The scale table: one row per (model, size), then each model's growth exponents."""
    lines = [
        "| model | size | users × items | train interactions | steps / epoch | s / epoch | s / valid pass "
        "| s / test pass | peak memory |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model, rows in record["results"].items():
        for r in rows:
            if "epoch_seconds" not in r:
                why = r.get("skipped") or f"failed: {r.get('failed')}"
                lines.append(f"| {model} | {row_label(r)} | | {r.get('train_interactions', 0):,} | {why} | | | | |")
                continue
            test = f"{r.get('test_seconds', float('nan')):.2f}"
            if "test_partial" in r:
                part = r["test_partial"]
                test = (
                    f"{part['seconds_so_far']:,.0f} for {part['users_done']:,} of {part['users']:,} users so far "
                    f"(unfinished, {part['processes']} process{'es' if part['processes'] > 1 else ''}; resumable)"
                )
            elif "test_users" in r:
                test = (
                    f"{test} for {r['test_users']:,} users; ≈ {r['test_seconds_all_estimated']:,.0f} for all "
                    f"{r['test_eligible_users']:,} (estimate)"
                )
            lines.append(
                f"| {model} | {row_label(r)} | {r['users']:,} × {r['items']:,} | {r['train_interactions']:,} | "
                f"{r.get('steps_per_epoch', '')} | {r['epoch_seconds']:.2f} | {r['valid_seconds']:.2f} | "
                f"{test} | {r['peak_memory_mb'] / 1024:.2f} GB |"
            )
    lines += ["", "| model | growth exponent: epoch | valid pass | test pass | memory |", "|---|---:|---:|---:|---:|"]
    for model, g in record["growth_exponents"].items():
        cells = [f"{g[k]:.2f}" if g.get(k) is not None else "—" for k in ("epoch", "valid", "test", "memory")]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    # more models than the colour cycle's ten: each also gets its own marker, and a dashed line past ten
    markers = "os^DvP*Xh<>"
    for i, (model, rows) in enumerate(result["results"].items()):
        ok = [r for r in rows if "epoch_seconds" in r]
        if not ok:
            continue
        xs = [r["train_interactions"] for r in ok]
        style = {"marker": markers[i % len(markers)], "linestyle": "-" if i < 10 else "--", "label": model}
        axes[0].loglog(xs, [r["epoch_seconds"] for r in ok], **style)
        axes[1].loglog(xs, [r["peak_memory_mb"] for r in ok], **style)
    axes[0].set(xlabel="training interactions", ylabel="seconds per epoch")
    axes[1].set(xlabel="training interactions", ylabel="peak memory (MiB)")
    for ax in axes:  # the minor ticks' labels (2×10⁵, 3×10⁵, …) overlap one another
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside: no line hidden
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="BPR,LightGCN,VBPR,FREEDOM,MARIO,MeAIM")
    ap.add_argument(
        "--factors",
        default="1,4",
        help="sizes: multiples of Baby's shape (4) or USERSxITEMSxPER_USER (1000000x300000x10)",
    )
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], help="config override key=value (every model)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (peak memory is then the GPU's)")
    ap.add_argument("--memory-limit-gb", type=float, default=20.0)
    ap.add_argument("--test-users", type=int, default=0, help="time the test pass on this many sampled users (0 = all)")
    ap.add_argument(
        "--test-budget-s",
        type=float,
        default=0.0,
        help="stop a row's test pass after this many seconds in one run and continue it in the next (0 = no limit)",
    )
    ap.add_argument("--test-chunk-blocks", type=int, default=TEST_CHUNK_BLOCKS, help=argparse.SUPPRESS)
    ap.add_argument("--state", help=argparse.SUPPRESS)
    ap.add_argument(
        "--remeasure", action="store_true", help="measure the asked models and sizes again even where recorded"
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=6 * 3600,
        help="seconds per model and size; a row predicted to take longer is not started",
    )
    ap.add_argument("--data-cache", default=str(ROOT / "reports" / "scale-data"))
    ap.add_argument("--out", default=None, help="JSON to write (default: print only)")
    ap.add_argument("--figure", default=None, help="log–log PNG to write")
    ap.add_argument("--markdown", default=None, help="Markdown table to write (for docs/scale.md)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:  # the child process: one model at one size
        state = Path(args.state) if args.state else None
        row = measure_one(
            args.one,
            Path(args.data),
            args.epochs,
            args.set,
            args.device,
            args.test_users,
            state=state,
            test_budget=args.test_budget_s,
            chunk_blocks=args.test_chunk_blocks,
        )
        print(json.dumps(row))
        return
    result = run_all(args)
    if args.out:
        print(f"wrote {args.out}")
    if args.markdown:
        Path(args.markdown).write_text(markdown_table(result))
        print(f"wrote {args.markdown}")
    if args.figure:
        write_figure(result, Path(args.figure))
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
