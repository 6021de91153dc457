"""``modalrec data prepare``: raw review dumps → a dataset folder in the MMRec layout.

Pipeline: read (format detected from the content) → implicit feedback (optional rating
threshold) → de-duplication → iterative k-core → contiguous re-indexing → split →
features → folder. The folder is built in a temporary sibling, validated with
:func:`~modalrec.data.dataset.load_dataset`, and renamed into place at the very end, so a
failure leaves nothing behind.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

import modalrec
from modalrec.data.dataset import SPLIT_NAMES, load_dataset
from modalrec.data.prepare.features import ItemSide, binary_image_features, image_file_features, text_features
from modalrec.data.prepare.filtering import KeptInteractions, check_ids, keep_interactions
from modalrec.data.prepare.folder import REPORT_FILE, normal_permissions, write_folder
from modalrec.data.prepare.images import list_images
from modalrec.data.prepare.interactions import RawInteractions, check_interaction_columns, read_interactions
from modalrec.data.prepare.item_meta import check_meta_columns
from modalrec.data.prepare.options import PrepareOptions
from modalrec.data.prepare.runlog import RunLog, file_info
from modalrec.data.split import split_labels
from modalrec.errors import DataError, ModalrecError
from modalrec.io import write_json


@dataclass
class PrepareResult:
    """The dataset folder written and its ``prepare.json`` report."""

    path: Path
    report: dict

    def summary(self) -> str:
        """One line for the terminal: the folder, its final counts (per split) and the features written."""
        f = self.report["counts"]["final"]
        sections = (("text", self.report["text"]), ("image", self.report["image"]))
        mods = ", ".join(f"{m} ({r['dim']})" for m, r in sections if r and "dim" in r) or "none"
        return (
            f"wrote {self.path}: {f['users']:,} users, {f['items']:,} items, {f['interactions']:,} interactions ("
            + ", ".join(f"{k} {v:,}" for k, v in f["per_split"].items())
            + f"); features: {mods}"
        )


def prepare_dataset(
    reviews: str | Path,
    out: str | Path,
    options: PrepareOptions | None = None,
    *,
    text_encoder=None,
    image_encoder=None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> PrepareResult:
    """Build a dataset folder ``out`` (which must not exist) from the interactions in ``reviews``.

    ``options`` (default: :class:`PrepareOptions` ``()``) names the other inputs and settings.
    ``text_encoder``/``image_encoder`` replace the default offline models (see
    :mod:`modalrec.data.encode`); those are loaded only when needed. ``progress`` shows the
    encoders' progress bars on stderr; ``log`` receives one line per step. Items without text,
    feature or readable image get the mean row of the others, counted in ``prepare.json``.
    """
    run = RunLog(log or (lambda _msg: None), progress)
    reviews, out = Path(reviews), Path(out)
    options = options if options is not None else PrepareOptions()
    name, image_files = _check_arguments(reviews, out, options, run)
    # The inputs' first lines (format, columns) are checked before anything slow; then the encoders
    # are loaded: a missing package should stop the command before any long read.
    check_interaction_columns(reviews, options.review_format, options.column_names)
    if options.meta is not None:
        check_meta_columns(options.meta, options.meta_format, options.item_col, options.text_cols)
    text_encoder, image_encoder = _load_encoders(options, run, text_encoder, image_encoder)
    raw, counts = _read(reviews, options, run)
    kept = _filter(raw, reviews, options, run, counts)
    labels = _split(kept, reviews, options, run, counts)
    side = ItemSide(inputs={"reviews": file_info(reviews, raw.format)})
    if options.meta is not None:
        text_features(options.meta, options, kept, text_encoder, run, side)
    if options.image_features is not None:
        binary_image_features(options.image_features, options.image_feature_dim, kept, run, side)
    elif options.images is not None:
        image_file_features(options.images, image_files, image_encoder, options.batch_size, kept, run, side)
    report = _report(name, options, raw, counts, side, run)
    _write_atomically(out, name, kept, labels, raw, side, report, run)
    run.say(f"wrote {out}")
    return PrepareResult(out, report)


def _check_arguments(reviews: Path, out: Path, options: PrepareOptions, run: RunLog) -> tuple[str, dict[str, Path]]:
    """Refuse an existing ``out``, bad settings and missing inputs before reading anything;
    returns the dataset name and the image files by item id (``--images``)."""
    if out.exists():
        raise DataError(out, "already exists; choose a new output directory (nothing was written)")
    name = options.validate(out)
    for p in (reviews, options.meta, options.image_features):
        if p is not None and not p.is_file():
            raise DataError(p, "no such file" if not p.exists() else "not a regular file")
    image_files: dict[str, Path] = {}
    if options.images is not None:
        image_files, ambiguous = list_images(options.images)
        if ambiguous:
            run.warn(
                f"{ambiguous} image files share an item id with another file in {options.images}; "
                "the first by name was used"
            )
    return name, image_files


def _load_encoders(options: PrepareOptions, run: RunLog, text_encoder, image_encoder) -> tuple:
    """The text and image encoders the inputs need, loaded offline unless given."""
    with run.stage("load_encoders"):
        if options.meta is not None and options.text and text_encoder is None:
            from modalrec.data.encode import check_device, load_text_encoder

            run.say("loading the text model (offline)")
            text_encoder = load_text_encoder(options.text_model, check_device(options.device))
        if options.images is not None and image_encoder is None:
            from modalrec.data.encode import check_device, load_image_encoder

            run.say("loading the image model (offline)")
            image_encoder = load_image_encoder(check_device(options.device))
    return text_encoder, image_encoder


def _read(reviews: Path, options: PrepareOptions, run: RunLog) -> tuple[RawInteractions, dict]:
    """Every interaction of the file, and the report's ``counts`` started with the raw ones."""
    with run.stage("read_interactions"):
        raw = read_interactions(reviews, options.review_format, options.column_names)
    run.say(
        f"read {len(raw):,} interactions ({raw.format}) of {len(raw.user_ids):,} users and "
        f"{len(raw.item_ids):,} items from {reviews}"
    )
    return raw, {"records": len(raw), "users_raw": len(raw.user_ids), "items_raw": len(raw.item_ids)}


def _filter(
    raw: RawInteractions, reviews: Path, options: PrepareOptions, run: RunLog, counts: dict
) -> KeptInteractions:
    """Rating threshold, de-duplication, k-core and re-indexing (see :mod:`~modalrec.data.prepare.filtering`)."""
    with run.stage("filter"):
        kept = keep_interactions(raw, reviews, options.min_rating, options.kcore, counts)
    check_ids(reviews, kept)
    run.say(
        f"{options.kcore}-core: {kept.n_users:,} users, {kept.n_items:,} items, {len(kept):,} interactions "
        f"({counts['duplicates']:,} repeats removed, {counts['kcore_passes']} passes)"
    )
    return kept


def _split(kept: KeptInteractions, reviews: Path, options: PrepareOptions, run: RunLog, counts: dict) -> np.ndarray:
    """The split label of every kept interaction; the final counts go into ``counts``."""
    with run.stage("split"):
        labels = split_labels(options.split, kept.users, kept.timestamps, options.seed, source=reviews)
    counts["final"] = {
        "users": kept.n_users,
        "items": kept.n_items,
        "interactions": int(len(kept)),
        "density": len(kept) / (kept.n_users * kept.n_items),
        "per_split": {k: int((labels == v).sum()) for k, v in SPLIT_NAMES.items()},
    }
    return labels


def _report(
    name: str, options: PrepareOptions, raw: RawInteractions, counts: dict, side: ItemSide, run: RunLog
) -> dict:
    """``prepare.json``: inputs, parameters, counts, features; ``files`` is filled in when written.

    ``warnings`` and ``timings_s`` are the run's own list and dict: the last stages add to them.
    """
    return {
        "modalrec": modalrec.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "name": name,
        "inputs": side.inputs,
        "parameters": {
            "kcore": options.kcore,
            "split": options.split,
            "seed": options.seed,
            "min_rating": options.min_rating,
            "format": options.review_format,
            "meta_format": options.meta_format,
            "columns": raw.columns,
            "implicit": "every kept interaction is a positive; rating is kept as a column only",
            "dedup": "repeated (user, item) pairs keep the earliest",
            "ids": "contiguous from 0 in the order of the original ids (numeric when all are integers)",
            "text": options.text if options.meta is not None else None,
            "text_model": None if options.text_model is None else str(options.text_model),
            "device": options.device,
            "batch_size": options.batch_size,
        },
        "counts": counts,
        "text": side.text,
        "image": side.image,
        "files": [],
        "warnings": run.warnings,
        "timings_s": run.timings,
        "environment": {"python": platform.python_version(), "numpy": np.__version__, "platform": platform.platform()},
    }


def _write_atomically(
    out: Path,
    name: str,
    kept: KeptInteractions,
    labels: np.ndarray,
    raw: RawInteractions,
    side: ItemSide,
    report: dict,
    run: RunLog,
) -> None:
    """Write the folder into a temporary sibling of ``out``, validate it by loading it, and rename
    it into place; on any failure the temporary folder is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        with run.stage("write"):
            files = write_folder(tmp, name, kept, labels, side.features, side.item_texts, raw)
        with run.stage("validate"):
            ds = load_dataset(tmp)
            if (ds.n_users, ds.n_items) != (kept.n_users, kept.n_items):  # pragma: no cover - a bug, not bad input
                raise ModalrecError(f"internal error: the written dataset does not read back ({tmp})")
            run.warnings.extend(ds.warnings)
        run.record_total()
        report["files"] = files + [REPORT_FILE]
        write_json(tmp / REPORT_FILE, report)
        normal_permissions(tmp)
        if out.exists():
            raise DataError(out, "appeared while preparing; nothing was written")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
