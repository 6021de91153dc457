"""The campaign commands (benchmark, ablate, sweep, tune) and ``modalrec analyze …`` (the papers' analyses)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modalrec.cli.options import (
    MODEL_SPEC_HELP,
    CpusPerTrialOption,
    DeviceOption,
    EpochsOption,
    ExecutorOption,
    GpusPerTrialOption,
    RayAddressOption,
    SetOverrides,
    ThreadsOption,
    WorkersPerTrialOption,
    config_overrides,
    parse_seeds,
    set_option,
    split_list,
    start_campaign,
)
from modalrec.cli.output import echo, handle_errors, list_files
from modalrec.errors import ModalrecError
from modalrec.threads import configure_threads


def _trained_line(report) -> str:
    """A campaign's one-line summary: runs trained, reused, failed."""
    failed = getattr(report, "failed", 0)
    tail = f", {failed} failed (marked in the table; run again to retry them)" if failed else ""
    return f"{report.trained} runs trained, {report.reused} reused from {report.folder}{tail}"


def _print_report(text: str, summary: str, files: list[Path]) -> None:
    """A campaign's table, its one-line summary and the files it wrote."""
    print(text)
    print(summary)
    list_files(files)


@handle_errors
def benchmark_cmd(
    data: Annotated[Path, typer.Option(help="Dataset folder.")],
    models: Annotated[
        str | None,
        typer.Option(help=f"Comma-separated models, e.g. BPR,LightGCN,my.py:Mine (each {MODEL_SPEC_HELP}; or --plan)."),
    ] = None,
    plan: Annotated[
        Path | None, typer.Option(help="YAML of table rows (model, label, set, grid, modalities) instead of --models.")
    ] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds; mean ± std over them.")] = "999",
    grid: Annotated[bool, typer.Option("--grid", help="Search each model's search_space, select on valid.")] = False,
    out: Annotated[Path | None, typer.Option(help="Report folder (default reports/benchmark-<dataset>).")] = None,
    set_: Annotated[SetOverrides, set_option("Override for every model, key=value.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs for every model.")] = None,
    target: Annotated[str | None, typer.Option(help="Row of Improv. % and t-tests (default: best).")] = None,
    modalities: Annotated[
        str | None, typer.Option(help="Comma-separated content modalities for every model (default: all).")
    ] = None,
    device: DeviceOption = "cpu",
    preset: Annotated[
        str | None,
        typer.Option(help="Preset of every model's YAML; applied only when named (default, or none: no preset)."),
    ] = None,
    reuse_only: Annotated[
        bool, typer.Option("--reuse-only", help="Train nothing: tabulate the rows whose runs have all finished.")
    ] = False,
    protocol: Annotated[
        str,
        typer.Option(
            help="default | cold-items (split off a share of the items once, add Popularity and Random rows)."
        ),
    ] = "default",
    cold_ratio: Annotated[float, typer.Option(help="cold-items: share of the items held out.")] = 0.2,
    eval_: Annotated[
        str | None,
        typer.Option("--eval", help="warm | cold | all (default: cold on a cold-items split, else warm)."),
    ] = None,
    threads: ThreadsOption = None,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    cpus_per_trial: CpusPerTrialOption = 1,
    gpus_per_trial: GpusPerTrialOption = 0,
    workers_per_trial: WorkersPerTrialOption = 1,
) -> None:
    """Train every model under one protocol; table (Markdown, CSV, LaTeX) with significance tests.

    Popularity and Random (untrained reference rankers) may be named in --models.
    """
    configure_threads(threads)
    from modalrec.experiments.benchmark import run_benchmark
    from modalrec.experiments.plans import load_plan

    if (models is None) == (plan is None):
        raise ModalrecError("give either --models or --plan")
    rows = load_plan(plan) if plan is not None else None
    with start_campaign(
        device, executor, ray_address, cpus_per_trial, gpus_per_trial, threads, workers_per_trial
    ) as campaign:
        report = run_benchmark(
            split_list(models) or [],
            data,
            parse_seeds(seeds),
            grid,
            out,
            config_overrides(set_, epochs=epochs),
            target,
            modalities=split_list(modalities),
            plan=rows,
            preset=preset,
            reuse_only=reuse_only,
            protocol=protocol,
            cold_ratio=cold_ratio,
            eval_mode=eval_,
            **campaign,
        )
    _print_report(report.table.to_markdown(), _trained_line(report), report.files)


@handle_errors
def ablate_cmd(
    model: Annotated[str, typer.Argument(help="MARIO or MeAIM.")],
    data: Annotated[Path, typer.Option(help="Dataset folder.")],
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "999",
    out: Annotated[Path | None, typer.Option(help="Report folder (default reports/ablate-<dataset>-<model>).")] = None,
    set_: Annotated[SetOverrides, set_option("Override for every variant, key=value.")] = None,
    epochs: EpochsOption = None,
    device: DeviceOption = "cpu",
    threads: ThreadsOption = None,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    cpus_per_trial: CpusPerTrialOption = 1,
    gpus_per_trial: GpusPerTrialOption = 0,
    workers_per_trial: WorkersPerTrialOption = 1,
) -> None:
    """The paper's ablations of MARIO or MeAIM in one table."""
    configure_threads(threads)
    from modalrec.experiments.ablate import run_ablation

    with start_campaign(
        device, executor, ray_address, cpus_per_trial, gpus_per_trial, threads, workers_per_trial
    ) as campaign:
        report = run_ablation(model, data, parse_seeds(seeds), out, config_overrides(set_, epochs=epochs), **campaign)
    _print_report(report.table.to_markdown(), _trained_line(report), report.files)


@handle_errors
def sweep_cmd(
    model: Annotated[str, typer.Argument(help=f"Model: {MODEL_SPEC_HELP}.")],
    data: Annotated[Path, typer.Option(help="Dataset folder.")],
    param: Annotated[str, typer.Option(help="name=v1,v2,... (values are YAML; lists in brackets).")],
    param2: Annotated[str | None, typer.Option(help="Second parameter: a heat map instead of lines.")] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "999",
    out: Annotated[Path | None, typer.Option(help="Report folder (default reports/sweep-<dataset>-...).")] = None,
    set_: Annotated[SetOverrides, set_option("Fixed override, key=value.")] = None,
    epochs: EpochsOption = None,
    device: DeviceOption = "cpu",
    threads: ThreadsOption = None,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    cpus_per_trial: CpusPerTrialOption = 1,
    gpus_per_trial: GpusPerTrialOption = 0,
    workers_per_trial: WorkersPerTrialOption = 1,
) -> None:
    """One- or two-parameter sensitivity of Recall/NDCG@10/@20 (line plots or heat maps)."""
    configure_threads(threads)
    from modalrec.experiments.sweep import run_sweep

    params = [param] + ([param2] if param2 else [])
    with start_campaign(
        device, executor, ray_address, cpus_per_trial, gpus_per_trial, threads, workers_per_trial
    ) as campaign:
        report = run_sweep(
            model, data, params, parse_seeds(seeds), out, config_overrides(set_, epochs=epochs), **campaign
        )
    _print_report((report.folder / "sweep.md").read_text(), _trained_line(report), report.files)


@handle_errors
def tune_cmd(
    model: Annotated[str, typer.Argument(help=f"Model: {MODEL_SPEC_HELP}.")],
    data: Annotated[Path, typer.Option(help="Dataset folder.")],
    trials: Annotated[int, typer.Option(help="Finished (complete or pruned) trials the study should have in all.")],
    sampler: Annotated[str, typer.Option(help="tpe | random | grid (the finite search_space).")] = "tpe",
    pruner: Annotated[str, typer.Option(help="median | hyperband | none (on the per-epoch valid metric).")] = "median",
    storage: Annotated[
        str | None,
        typer.Option(help="Optuna storage URL (default sqlite:///<out>/study.db; postgresql://… to share a study)."),
    ] = None,
    study_name: Annotated[str | None, typer.Option(help="Study name (default <model>-<dataset>).")] = None,
    out: Annotated[Path | None, typer.Option(help="Report folder (default reports/tune-<dataset>-<model>).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampler (the training seed is the config's seed).")] = 0,
    set_: Annotated[SetOverrides, set_option("Fixed override (not searched), key=value.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs of every trial.")] = None,
    modalities: Annotated[str | None, typer.Option(help="Comma-separated content modalities (default: all).")] = None,
    preset: Annotated[str | None, typer.Option(help="Preset of the model's YAML (none: no preset).")] = None,
    device: DeviceOption = "cpu",
    threads: ThreadsOption = None,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    cpus_per_trial: CpusPerTrialOption = 1,
    gpus_per_trial: GpusPerTrialOption = 0,
    workers_per_trial: WorkersPerTrialOption = 1,
) -> None:
    """Optuna search of a model's search space, selected on validation; best config YAML, trials table, figures.

    Running it again (or on another machine with the same --storage) continues the study until it has
    --trials finished trials. Test is evaluated once, for the best trial.
    """
    configure_threads(threads)
    from modalrec.experiments.tune import run_tune

    with start_campaign(
        device, executor, ray_address, cpus_per_trial, gpus_per_trial, threads, workers_per_trial
    ) as campaign:
        report = run_tune(
            model,
            data,
            trials,
            out,
            storage,
            study_name,
            sampler,
            pruner,
            seed,
            config_overrides(set_, epochs=epochs),
            split_list(modalities),
            preset,
            **campaign,
        )
    summary = f"{report.ran_here} trials run here; the study has {report.finished} finished trials ({report.storage})"
    _print_report((report.folder / "trials.md").read_text(), summary, report.files)


@handle_errors
def analyze_preservation_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run directories.")],
    min_degree: Annotated[
        float | None, typer.Option(help="High-degree items: training degree above this (default: 90th pct).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default <first run>/analysis).")] = None,
    data: Annotated[Path | None, typer.Option(help="Dataset folder, if it moved since training.")] = None,
    device: DeviceOption = "cpu",
) -> None:
    """MARIO Table 6 / Fig. 3: mean |f-sim − p-sim| per modality, and its density."""
    from modalrec.analysis.preservation import analyze_preservation

    _, files = analyze_preservation(runs, min_degree, out, data, device, log=echo)
    print(next(f for f in files if f.name.startswith("preservation") and f.suffix == ".md").read_text())
    list_files(files)


@handle_errors
def analyze_modalities_cmd(
    directory: Annotated[Path, typer.Argument(help="Dataset folder.")],
    run: Annotated[Path | None, typer.Option(help="Trained run: adds its interaction modality.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default <run>/analysis or reports/).")] = None,
    max_items: Annotated[int, typer.Option(help="Random item sample above this many items.")] = 4000,
    heatmap_items: Annotated[int, typer.Option(help="Items in the heat maps.")] = 40,
    seed: Annotated[int, typer.Option(help="Seed of the item samples.")] = 0,
    device: DeviceOption = "cpu",
) -> None:
    """MARIO's motivation analysis: correlation of modality similarities, heat maps (Fig. 2)."""
    from modalrec.analysis.modalities import analyze_modalities

    if max_items < 2 or heatmap_items < 2:
        raise ModalrecError("--max-items and --heatmap-items must be at least 2")
    _, files = analyze_modalities(directory, run, out, max_items, heatmap_items, seed, device, log=echo)
    print(next(f for f in files if f.suffix == ".md").read_text())
    list_files(files)


@handle_errors
def analyze_tsne_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (shown side by side).")],
    modality: Annotated[str, typer.Option(help="Representation: a content modality, or interaction/id.")] = "text",
    users: Annotated[int, typer.Option(help="Random users.")] = 500,
    items: Annotated[int, typer.Option(help="Random items.")] = 500,
    seed: Annotated[int, typer.Option(help="Seed of the samples and of t-SNE.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Output folder (default <first run>/analysis).")] = None,
    data: Annotated[Path | None, typer.Option(help="Dataset folder, if it moved since training.")] = None,
    device: DeviceOption = "cpu",
) -> None:
    """MeAIM Figs. 5–6: t-SNE of users' and items' representations with the KDE of their angles."""
    from modalrec.analysis.tsne import analyze_tsne

    if users < 5 or items < 5:
        raise ModalrecError("--users and --items must be at least 5")
    _, files = analyze_tsne(runs, modality, users, items, seed, out, data, device, log=echo)
    list_files(files)
