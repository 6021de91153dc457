"""The commands of one model or one run: models, check-model, train, evaluate, index, recommend, serve, demo."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from modalrec.cli.options import (
    MODEL_SPEC_HELP,
    DeviceOption,
    EpochsOption,
    RunDeviceOption,
    RunModelOption,
    SetOverrides,
    ThreadsOption,
    config_overrides,
    set_option,
    split_list,
)
from modalrec.cli.output import console, err_console, handle_errors
from modalrec.errors import ModalrecError
from modalrec.threads import THREADS_ENV, configure_threads, resolve_threads


@handle_errors
def models_cmd(
    details: Annotated[
        str | None,
        typer.Option(
            "--details",
            metavar="SPEC",
            help="One model's settings (name, path/to/file.py:Class or module:Class): keys, grid, tune, presets.",
        ),
    ] = None,
) -> None:
    """List every registered or installed (plugin) model with a one-line description, or one model's settings."""
    from modalrec.models import list_models

    if details is not None:
        _print_model_settings(details)
        return
    table = Table(title="Registered models")
    table.add_column("model")
    table.add_column("modalities")
    table.add_column("cold items")
    table.add_column("description")
    for cls in list_models():
        # how an item without interactions is scored (docs/protocol.md#cold-items)
        cold = "from content" if cls.cold_start == "content" else "unable (random)"
        table.add_row(cls.name, "content + ID" if cls.min_modalities else "ID only", cold, cls.description)
    console().print(table)


def _print_model_settings(spec: str) -> None:
    """``models --details``: every configuration key of a model (its own first), its grid, tune's ranges, presets.

    Plain lines, one per key (a table would cut keys short in a narrow terminal).
    """
    from modalrec.config import NO_PRESET, describe_settings, model_settings
    from modalrec.models import model_spec_of, resolve_model

    cls = resolve_model(spec)
    rows, presets = describe_settings(cls)
    out = console()

    def shown(value: Any) -> str:  # as YAML writes it: null, true, [recall, ndcg]
        if isinstance(value, list | tuple):
            return f"[{', '.join(shown(v) for v in value)}]"
        return value if isinstance(value, str) else json.dumps(value)

    out.print(f"{cls.name} ({model_spec_of(cls)}): {cls.description or model_settings(cls).get('description', '')}")
    cells = [(r.key, shown(r.default), r.type, r.bound or "-") for r in rows]
    widths = [max(len(c[n]) for c in cells) for n in range(4)]
    for n, (r, row_cells) in enumerate(zip(rows, cells, strict=True)):
        if n == 0 or r.source != rows[n - 1].source:
            whose = f"{cls.name}'s own keys" if r.own else "shared keys"
            out.print(f"{whose} ({r.source}): key, default, type, allowed; grid: --grid/sweep; tune: tune's range")
        line = "  ".join(c.ljust(w) for c, w in zip(row_cells, widths, strict=True))
        grid = f"  grid: {', '.join(shown(v) for v in r.grid)}" if r.grid is not None else ""
        tune = f"  tune: {r.tune}" if r.tune else ""
        out.print(f"  {line}{grid}{tune}".rstrip())
    if not presets:
        out.print("presets: none")
        return
    out.print(f"presets (applied only when named, --preset NAME; none by default or with --preset {NO_PRESET}):")
    for name, values in presets.items():
        out.print(f"  {name}: {', '.join(f'{k}={shown(v)}' for k, v in values.items()) or 'nothing'}")


@handle_errors
def check_model_cmd(
    spec: Annotated[str, typer.Argument(help=f"The model to check: {MODEL_SPEC_HELP}.")],
    data: Annotated[Path | None, typer.Option(help="Dataset folder (default: a small built-in synthetic set).")] = None,
    epochs: Annotated[
        int | None,
        typer.Option(min=1, help="Epochs of the main training (default 10; 2 or more to see the loss fall)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the trainings (default: the model's).")] = None,
    threads: ThreadsOption = None,
) -> None:
    """Run the contract checks every built-in model passes; one line per check, exit 1 if one fails."""
    configure_threads(threads)
    from modalrec.testing import check_model

    report = check_model(spec, dataset=data, seed=seed, **({"epochs": epochs} if epochs is not None else {}))
    console().print(str(report))
    if not report.ok:
        raise typer.Exit(1)


@handle_errors
def train_cmd(
    model: Annotated[str | None, typer.Option(help=f"Model: {MODEL_SPEC_HELP}.")] = None,
    data: Annotated[Path | None, typer.Option(help="Dataset folder (with --resume: where the data now is).")] = None,
    modalities: Annotated[str | None, typer.Option(help="Comma-separated subset of modalities.")] = None,
    set_: Annotated[SetOverrides, set_option("Config override key=value (repeatable).")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file of config overrides.")] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Per-dataset preset of the model's YAML; applied only when named (default, or none: no preset)."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (must not exist).")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Parent of auto-named run directories.")] = Path("runs"),
    device: DeviceOption = "cpu",
    seed: Annotated[int | None, typer.Option(help="Random seed (same seed, same metrics on CPU).")] = None,
    epochs: EpochsOption = None,
    eval_: Annotated[
        str | None,
        typer.Option(
            "--eval",
            help="Which items compete in valid/test ranking: warm | cold (only the split's cold items) | all "
            "(default: cold on a cold-items split, else warm).",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress output (warnings are still shown).")
    ] = False,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the interrupted run in this directory from its resume.pt.")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="With --resume: accept a changed configuration, device or code (modalrec's or the model's); "
            "the result then differs from an uninterrupted run.",
        ),
    ] = False,
    threads: ThreadsOption = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Train this one run data-parallel on N Ray Train workers (PyTorch DDP; needs the scale extra).",
        ),
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="With --workers: the Ray cluster to run on (default: a new local Ray).")
    ] = None,
    cpus_per_worker: Annotated[int, typer.Option(min=1, help="With --workers: CPU threads per worker.")] = 1,
    gpus_per_worker: Annotated[
        float, typer.Option(min=0, help="With --workers: GPUs per worker (NCCL); 0 = CPU workers (gloo).")
    ] = 0.0,
) -> None:
    """Train a model with early stopping into a new run directory (or continue one with --resume).

    Ctrl-C or SIGTERM stops after the current batch, saves the resume state and says how to resume;
    a second Ctrl-C quits at once. With --workers N the run trains on N data-parallel workers and its
    directory is the same as a single process's (docs/scale.md#one-run-on-several-workers).
    """
    if workers is not None:
        _train_data_parallel(
            model, data, modalities, set_, config, preset, out, runs_dir, device, seed, epochs, eval_, quiet,
            resume, force, threads, workers, ray_address, cpus_per_worker, gpus_per_worker,
        )  # fmt: skip
        return
    if ray_address is not None or gpus_per_worker or cpus_per_worker != 1:
        raise ModalrecError("--ray-address, --cpus-per-worker and --gpus-per-worker only apply with --workers")
    from modalrec.run_resume import resume_run
    from modalrec.runs import train_run

    configure_threads(threads)
    overrides = config_overrides(set_, config, seed=seed, epochs=epochs, eval_mode=eval_)
    progress = sys.stdout.isatty()
    if resume is not None:
        _check_resume_options(model=model, modalities=modalities, preset=preset, out=out)
        run_dir, result = resume_run(
            resume, overrides, device, quiet=quiet, progress=progress, force=force, data_dir=data
        )
    else:
        if model is None or data is None:
            raise ModalrecError("give --model and --data (or --resume RUN to continue an interrupted run)")
        if force:
            raise ModalrecError("--force only applies to --resume")
        run_dir, result = train_run(
            model,
            data,
            split_list(modalities),
            overrides,
            preset,
            out,
            runs_dir,
            device,
            quiet=quiet,
            progress=progress,
        )
    _print_metrics(f"test metrics (best epoch {result.best_epoch}, eval {result.test.mode})", result.test.metrics)
    console().print(f"run directory: {run_dir}")


def _train_data_parallel(
    model, data, modalities, set_, config, preset, out, runs_dir, device, seed, epochs, eval_, quiet,
    resume, force, threads, workers, ray_address, cpus_per_worker, gpus_per_worker,
) -> None:  # fmt: skip
    """``train --workers N``: a new data-parallel run, or ``--resume RUN`` continued on N workers."""
    import json as json_module

    from modalrec.run_distributed import resume_distributed, train_distributed

    if threads is not None:
        raise ModalrecError("--threads does not apply with --workers: use --cpus-per-worker")
    if force:
        raise ModalrecError("--force does not apply with --workers")
    common = {"device": device, "quiet": quiet, "ray_address": ray_address, "cpus_per_worker": cpus_per_worker}
    common["gpus_per_worker"] = gpus_per_worker
    if resume is not None:
        _check_resume_options(model=model, modalities=modalities, preset=preset, out=out)
        if set_ or config or seed is not None or epochs is not None or eval_ is not None:
            raise ModalrecError("--resume with --workers continues the run as it was set up: drop the overrides")
        run_dir = resume_distributed(resume, workers, data_dir=data, **common)
    else:
        if model is None or data is None:
            raise ModalrecError("give --model and --data (or --resume RUN to continue an interrupted run)")
        overrides = config_overrides(set_, config, seed=seed, epochs=epochs, eval_mode=eval_)
        run_dir = train_distributed(
            model, data, workers, modalities=split_list(modalities), overrides=overrides, preset=preset, out=out,
            runs_root=runs_dir, **common,
        )  # fmt: skip
    metrics = json_module.loads((run_dir / "metrics.json").read_text())
    _print_metrics(f"test metrics (best epoch {metrics['best_epoch']}, {workers} workers)", metrics["test"])
    console().print(f"run directory: {run_dir}")


def _check_resume_options(**given: object) -> None:
    """--resume continues a run as it was set up: refuse the options that would set up another."""
    named = [f"--{name}" for name, value in given.items() if value is not None]
    if named:
        raise ModalrecError(f"--resume continues the run with its own model, data and output; drop {named[0]}")


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    """A metrics table: one row per metric, one column per cut-off K."""
    table = Table(title=title)
    names = sorted({k.split("@")[0] for k in metrics}, key=["recall", "ndcg", "precision", "map", "hit"].index)
    ks = sorted({int(k.split("@")[1]) for k in metrics})
    table.add_column("metric")
    for k in ks:
        table.add_column(f"@{k}", justify="right")
    for n in names:
        table.add_row(n, *[f"{metrics.get(f'{n}@{k}', float('nan')):.4f}" for k in ks])
    console().print(table)


@handle_errors
def evaluate_cmd(
    run: Path,
    split: Annotated[str, typer.Option(help="valid | test")] = "test",
    topk: Annotated[str | None, typer.Option(help="Comma-separated cut-offs, e.g. 10,20,50.")] = None,
    mask_valid: Annotated[
        bool | None, typer.Option("--mask-valid/--no-mask-valid", help="Mask valid items at test.")
    ] = None,
    device: RunDeviceOption = "cpu",
    as_json: Annotated[bool, typer.Option("--json")] = False,
    eval_: Annotated[
        str | None,
        typer.Option("--eval", help="warm | cold | all (default: the run's own eval mode)."),
    ] = None,
    threads: ThreadsOption = None,
    model: RunModelOption = None,
) -> None:
    """Re-evaluate a trained run with full ranking."""
    configure_threads(threads)
    from modalrec.config import topk_list
    from modalrec.run_load import evaluate_run, load_run

    if split not in ("valid", "test"):
        raise ModalrecError("--split must be valid or test")
    ks = topk_list(topk, "--topk") if topk is not None else None
    loaded = load_run(run, device, model=model)
    result = evaluate_run(loaded, split, ks, mask_valid, eval_)
    if as_json:
        out = {"split": split, "eval": result.mode, "metrics": result.metrics, "seconds": result.seconds}
        print(json.dumps(out, indent=2))
    else:
        _print_metrics(
            f"{split} metrics, eval {result.mode} ({len(result.users)} users, {result.seconds:.2f}s)", result.metrics
        )


@handle_errors
def index_cmd(
    run: Path,
    data: Annotated[Path | None, typer.Option(help="The run's dataset folder, if it moved.")] = None,
    kind: Annotated[
        str,
        typer.Option(
            help="ivf: an inner-product inverted file (k-means cells, the best nprobe scanned exactly); hnsw: an "
            "HNSW graph over the items turned into an L2 search (docs/scale.md#ann-retrieval).",
        ),
    ] = "ivf",
    effort: Annotated[
        int | None,
        typer.Option(
            "--effort",
            "--ef-search",
            min=1,
            help="Search breadth of queries: IVF nprobe or HNSW efSearch (default: the smallest of 1, 2, 4 … "
            "cells or 128, 256, … 4096 whose recall@10 against exact ranking reaches 0.95 on 1,000 sampled users).",
            show_default=False,
        ),
    ] = None,
    threads: ThreadsOption = None,
    model: RunModelOption = None,
) -> None:
    """Build the approximate item index of a dot-product run (item_index.faiss) for recommend/serve --ann."""
    configure_threads(threads)
    from modalrec.run_index import INDEX_FILE, INDEX_INFO, build_item_index, index_warning
    from modalrec.run_load import load_run

    info = build_item_index(load_run(run, data_dir=data, model=model), effort, kind=kind)
    r, e = info["recall"], info["search_effort"]
    left = f" ({info['left_out']:,} unscorable cold items left out)" if info["left_out"] else ""
    if info["kind"] == "ivf":
        how = f"IVF {info['ivf']['nlist']:,} cells (inner product)"
    else:
        how = f"HNSW M {info['hnsw']['M']} efConstruction {info['hnsw']['ef_construction']}"
    out = console()
    out.print(
        f"item index: {info['items']:,} items × {info['dim']} dims{left}, {how}, built in "
        f"{info['build_seconds']:.2f} s on one thread"
    )
    out.print(
        f"{e['name']} {e['value']}: recall@{r['k']} {r['recall']:.3f} against exact ranking on {r['users']:,} "
        f"sampled users ({r['candidates']})"
    )
    out.print(f"wrote {run / INDEX_FILE} ({info['index_bytes'] / 2**20:.1f} MiB) and {run / INDEX_INFO}")
    warning = index_warning(info)
    if warning:
        out.print(f"warning: {warning}")


AnnOption = Annotated[
    bool | None,
    typer.Option(
        "--ann/--exact",
        help="--ann: take candidates from the run's item index (`modalrec index RUN`) and re-rank them exactly "
        "(dot-product models only); --exact: score every item. Default: the index when the run has one that "
        "holds at least 100,000 items and met its recall check when built, else exact.",
        show_default=False,
    ),
]


@handle_errors
def recommend_cmd(
    run: Path,
    user: Annotated[int, typer.Option(help="User id.")],
    k: Annotated[int, typer.Option("-k", "--k", help="List length.")] = 10,
    explain: Annotated[bool, typer.Option(help="Add per-modality influence of each item.")] = False,
    include_seen: Annotated[bool, typer.Option(help="Do not exclude training items.")] = False,
    device: RunDeviceOption = "cpu",
    threads: ThreadsOption = None,
    model: RunModelOption = None,
    ann: AnnOption = None,
) -> None:
    """Top-k recommendations of one user as JSON on stdout."""
    configure_threads(threads)
    from modalrec.run_load import load_run, recommend

    loaded = load_run(run, device, model=model)
    from modalrec.run_index import choose_item_index

    index, note = choose_item_index(loaded, ann)
    if note:
        err_console.print(f"note: {note}")
    retrieve = index.retrieve if index is not None else None
    result = recommend(loaded, user, k, explain, not include_seen, retrieve=retrieve)
    print(json.dumps(result, indent=2, ensure_ascii=False))


@handle_errors
def serve_cmd(
    run: Path,
    host: Annotated[str, typer.Option(help="Interface to bind (default: local only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    threads: Annotated[
        int | None,
        typer.Option(
            help=f"CPU threads for torch (default: ${THREADS_ENV}, else 1: requests are small).", show_default=False
        ),
    ] = None,
    model: RunModelOption = None,
    ann: AnnOption = None,
) -> None:
    """Serve a trained run: JSON API (/docs) and a web page at / (refuses to start on a bad run)."""
    from modalrec.serve import serve

    serve(run, host, port, threads=resolve_threads(threads, default=1), model=model, ann=ann)


@handle_errors
def demo_cmd(
    out: Annotated[Path | None, typer.Option(help="Demo directory (must not exist).")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Parent of the auto-named demo directory.")] = Path("runs"),
    threads: ThreadsOption = None,
) -> None:
    """Synthetic default data → BPR, LightGCN, MARIO → comparison table and an explained top-10."""
    configure_threads(threads)
    from modalrec.demo import run_demo

    run_demo(out, runs_dir)
