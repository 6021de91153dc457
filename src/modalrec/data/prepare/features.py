"""Item features of ``data prepare``: texts from the metadata, image features from the Amazon
binary file or from image files, one row per kept item in the order of the new item ids.

Items without text, feature or readable image get the mean row of the others; they are
counted (with a few examples) in the ``text``/``image`` sections of ``prepare.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modalrec.data.prepare.filtering import KeptInteractions
from modalrec.data.prepare.images import read_image_features
from modalrec.data.prepare.item_meta import read_item_meta
from modalrec.data.prepare.options import PrepareOptions
from modalrec.data.prepare.runlog import EXAMPLES, RunLog, file_info, folder_info, progress_bar
from modalrec.errors import DataError, ModalrecError


@dataclass
class ItemSide:
    """What the item inputs add: the report's ``inputs`` entries (after ``reviews``), the feature
    matrices by modality, the composed item texts, and the report's ``text``/``image`` sections."""

    inputs: dict
    features: dict[str, np.ndarray] = field(default_factory=dict)
    item_texts: list[str] | None = None
    text: dict | None = None
    image: dict | None = None


# ====================================================================== encoding
def _check_block(x, n: int, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != n:
        raise ModalrecError(f"{what} encoder returned shape {x.shape} for a batch of {n}")
    if not np.isfinite(x).all():
        raise ModalrecError(f"{what} encoder returned non-finite values")
    return x


def encode_texts(encoder, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Encode ``texts`` in batches (rich progress bar on stderr when ``progress``)."""
    chunks = []
    with progress_bar(progress) as bar:
        task = bar.add_task("text features", total=len(texts))
        for s in range(0, len(texts), batch_size):
            batch = list(texts[s : s + batch_size])
            chunks.append(_check_block(encoder.encode(batch), len(batch), "text"))
            bar.advance(task, len(batch))
    return np.concatenate(chunks)


def encode_image_files(
    encoder, paths: Sequence[Path], batch_size: int = 64, progress: bool = False
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Encode image files in batches; returns ``(features of the readable ones, their positions,
    [(position, reason)] of the unreadable ones)``."""
    chunks, ok, bad = [], [], []
    with progress_bar(progress) as bar:
        task = bar.add_task("image features", total=len(paths))
        for s in range(0, len(paths), batch_size):
            loaded, rows = [], []
            for r in range(s, min(s + batch_size, len(paths))):
                try:
                    loaded.append(encoder.load(paths[r]))
                    rows.append(r)
                except Exception as exc:  # any decoder error means "unreadable"; counted and reported
                    bad.append((r, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
            if loaded:
                chunks.append(_check_block(encoder.encode(loaded), len(loaded), "image"))
                ok.extend(rows)
            bar.advance(task, min(batch_size, len(paths) - s))
    x = np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
    return x, np.asarray(ok, dtype=np.int64), bad


def _mean_fill(x: np.ndarray, found: np.ndarray) -> np.ndarray:
    """``x`` with the rows not ``found`` replaced by the mean of the found ones."""
    x = np.asarray(x, dtype=np.float32).copy()
    x[~found] = x[found].mean(axis=0)
    return x


def _spread(encoded: np.ndarray, found: np.ndarray) -> np.ndarray:
    """One row per item: the encoded rows at the items ``found``, the mean of them elsewhere."""
    x = np.zeros((len(found), encoded.shape[1]), dtype=np.float32)
    x[found] = encoded
    return _mean_fill(x, found)


def _none_found(path: Path, kept: KeptInteractions, what: str, hint: str, tail: str = "") -> DataError:
    """The error when not one kept item has ``what`` in an input (most likely its ids are not the
    interactions'): ``hint`` says how they must match; the first item id shows what was expected."""
    first = str(kept.item_names[0])  # a NumPy string's repr would read np.str_('…')
    return DataError(path, f"none of the {kept.n_items:,} items has {what} ({hint}first item: {first!r}{tail})")


def _describe(encoder) -> dict:
    describe = getattr(encoder, "describe", None)
    if callable(describe):
        return describe()
    return {"model": getattr(encoder, "name", type(encoder).__name__)}


# ====================================================================== text
def text_features(
    meta: Path, options: PrepareOptions, kept: KeptInteractions, encoder, run: RunLog, side: ItemSide
) -> None:
    """Compose each item's text from ``meta`` (→ ``item_text.tsv``) and, with ``options.text``,
    encode the items that have one (→ the ``text`` feature, mean-filled)."""
    has_text = _item_texts(meta, options, kept, run, side)
    n_items = kept.n_items
    if options.text:
        run.say(f"encoding {int(has_text.sum()):,} item texts")
        with run.stage("encode_text"):
            texts = [t for t, h in zip(side.item_texts, has_text, strict=True) if h]
            enc = encode_texts(encoder, texts, options.batch_size, run.progress)
            side.features["text"] = _spread(enc, has_text)
        side.text["encoder"] = _describe(encoder)
        side.text["dim"] = int(enc.shape[1])
    run.say(f"text: {int(has_text.sum()):,} of {n_items:,} items have text")


def _item_texts(meta: Path, options: PrepareOptions, kept: KeptInteractions, run: RunLog, side: ItemSide) -> np.ndarray:
    """Read the kept items' texts into ``side`` (and the report's ``text`` section); returns which
    items have a non-empty text. No item with a record, or none with text, is an error."""
    item_names, n_items = kept.item_names, kept.n_items
    with run.stage("read_meta"):
        m = read_item_meta(meta, options.meta_format, set(item_names.tolist()), options.item_col, options.text_cols)
    side.inputs["meta"] = file_info(meta, m.format)
    side.item_texts = [m.texts.get(n, "") for n in item_names.tolist()]
    has_record = np.array([n in m.texts for n in item_names.tolist()])
    has_text = np.array([bool(t) for t in side.item_texts])
    if not has_record.any():
        raise _none_found(meta, kept, "a record here", "do its item ids match the interactions'? ")
    if not has_text.any():
        raise DataError(meta, f"none of the {n_items:,} items has any text in the fields {m.text_fields}")
    side.text = {
        "fields": m.text_fields,
        "composition": "fields joined as sentences ('. '), missing ones skipped",
        "meta_records": m.records,
        "meta_duplicates": m.duplicates,
        "items_with_text": int(has_text.sum()),
        "items_without_record": int((~has_record).sum()),
        "items_with_empty_text": int((has_record & ~has_text).sum()),
        "without_text_examples": item_names[~has_text][:EXAMPLES].tolist(),
        "fill": "mean of the encoded items" if options.text else None,
    }
    n_missing = int((~has_text).sum())
    if n_missing:
        run.warn(
            f"{n_missing:,} of {n_items:,} items have no text ({side.text['items_without_record']:,} without a "
            f"metadata record, {side.text['items_with_empty_text']:,} with empty fields)"
            + ("; their text feature is the mean of the others" if options.text else "")
        )
    return has_text


# ====================================================================== images
def binary_image_features(path: Path, dim: int, kept: KeptInteractions, run: RunLog, side: ItemSide) -> None:
    """The ``image`` feature from an Amazon binary file of ``dim`` floats per ASIN (mean-filled)."""
    item_names, n_items = kept.item_names, kept.n_items
    row_of_item = {n: r for r, n in enumerate(item_names.tolist())}
    with run.stage("read_image_features"):
        x, found, records, dups = read_image_features(path, row_of_item, dim)
    side.inputs["image_features"] = file_info(path, f"amazon-binary (10-byte ASIN + {dim} float32 little-endian)")
    if not found.any():
        raise _none_found(path, kept, "a feature here", "ASINs must match the item ids; ")
    side.features["image"] = _mean_fill(x, found)
    side.image = {
        "source": "binary feature file",
        "dim": dim,
        "records": records,
        "duplicate_records": dups,
        "items_with_feature": int(found.sum()),
        "items_missing": int((~found).sum()),
        "missing_examples": item_names[~found][:EXAMPLES].tolist(),
        "fill": "mean of the items with a feature",
    }
    if (~found).any():
        run.warn(
            f"{int((~found).sum()):,} of {n_items:,} items have no image feature in "
            f"{path.name}; their image feature is the mean of the others"
        )
    run.say(f"image: {int(found.sum()):,} of {n_items:,} items have a feature")


def image_file_features(
    directory: Path,
    image_files: dict[str, Path],
    encoder,
    batch_size: int,
    kept: KeptInteractions,
    run: RunLog,
    side: ItemSide,
) -> None:
    """The ``image`` feature from the files ``<item id>.<ext>`` of ``directory`` (``image_files``:
    id → file), encoded by ``encoder``; items without a file or with an unreadable one are mean-filled."""
    item_names, n_items = kept.item_names, kept.n_items
    side.inputs["images"] = folder_info(directory, image_files)
    with_file = np.array([n in image_files for n in item_names.tolist()])
    rows = np.flatnonzero(with_file)
    run.say(f"encoding {len(rows):,} item images")
    with run.stage("encode_images"):
        paths = [image_files[item_names[r]] for r in rows.tolist()]
        enc, ok_pos, bad = encode_image_files(encoder, paths, batch_size, run.progress)
    found = np.zeros(n_items, dtype=bool)
    found[rows[ok_pos]] = True
    if not found.any():
        hint = "files must be named <item id>.<ext>; "
        raise _none_found(directory, kept, "a readable image", hint, f"; {len(bad)} unreadable")
    side.features["image"] = _spread(enc, found)
    unreadable = [(item_names[rows[p]], image_files[item_names[rows[p]]].name, why) for p, why in bad]
    side.image = {
        "source": "image files",
        "encoder": _describe(encoder),
        "dim": int(enc.shape[1]),
        "items_with_feature": int(found.sum()),
        "items_without_file": int((~with_file).sum()),
        "missing_examples": item_names[~with_file][:EXAMPLES].tolist(),
        "unreadable": len(bad),
        "unreadable_examples": [{"item": a, "file": f, "error": w} for a, f, w in unreadable[:EXAMPLES]],
        "fill": "mean of the items with a readable image",
    }
    if (~with_file).any():
        run.warn(
            f"{int((~with_file).sum()):,} of {n_items:,} items have no image file in {directory}; "
            "their image feature is the mean of the others"
        )
    if bad:
        shown = ", ".join(f for _, f, _ in unreadable[:3]) + (", …" if len(bad) > 3 else "")
        run.warn(f"{len(bad):,} image files could not be read ({shown}); mean-filled")
    run.say(f"image: {int(found.sum()):,} of {n_items:,} items have a readable image")
