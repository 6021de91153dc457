"""``modalrec data prepare``: raw review dumps → a dataset folder in the MMRec layout.

Pipeline: read (format detected from the content) → implicit feedback (optional rating
threshold) → de-duplication → iterative k-core → contiguous re-indexing → split →
features → folder. The folder is built in a temporary sibling, validated with
:func:`~modalrec.data.dataset.load_dataset`, and renamed into place at the very end, so a
failure leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

import modalrec
from modalrec.data.dataset import FEATURE_SUFFIX, SPLIT_NAMES, load_dataset
from modalrec.data.prepare.kcore import kcore_mask
from modalrec.data.prepare.readers import (
    META_FORMATS,
    REVIEW_FORMATS,
    RawInteractions,
    check_interaction_columns,
    check_meta_columns,
    list_images,
    read_image_features,
    read_interactions,
    read_item_meta,
)
from modalrec.data.split import SPLIT_PROTOCOLS, split_labels
from modalrec.errors import DataError, ModalrecError
from modalrec.io import write_json, write_npy, write_text

REPORT_FILE = "prepare.json"
_INTEGER = re.compile(r"[+-]?\d+")
USER_MAPPING = "u_id_mapping.csv"
ITEM_MAPPING = "i_id_mapping.csv"
ITEM_TEXT = "item_text.tsv"
EXAMPLES = 10  # how many ids a report lists for each kind of missing feature


@dataclass
class PrepareResult:
    path: Path
    report: dict


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _file_info(path: Path, fmt: str | None = None) -> dict:
    info = {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    if fmt is not None:
        info["format"] = fmt
    return info


def _folder_info(directory: Path, files: dict[str, Path]) -> dict:
    """sha256 over the sorted lines 'name<TAB>sha256' of the image files found."""
    h = hashlib.sha256()
    for p in sorted(files.values()):
        h.update(f"{p.name}\t{sha256_file(p)}\n".encode())
    return {"path": str(directory.resolve()), "files": len(files), "sha256": h.hexdigest()}


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


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
    with _progress(progress) as bar:
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
    with _progress(progress) as bar:
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
    x = np.asarray(x, dtype=np.float32).copy()
    x[~found] = x[found].mean(axis=0)
    return x


def _describe(encoder) -> dict:
    describe = getattr(encoder, "describe", None)
    if callable(describe):
        return describe()
    return {"model": getattr(encoder, "name", type(encoder).__name__)}


def _reindex(codes: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """New contiguous ids in the order of the original ids: numeric when every id is an integer
    (2 before 10), else by the id string; returns (new ids, original ids by new id)."""
    uniq = np.unique(codes)
    original = np.asarray([names[c] for c in uniq.tolist()], dtype=str)
    if original.size and all(_INTEGER.fullmatch(x) for x in original.tolist()):
        # Python ints: no overflow for long ids; ties ("7" and "007") keep the string order
        order = np.asarray(sorted(range(original.size), key=lambda j: (int(original[j]), original[j])), dtype=np.int64)
    else:
        order = np.argsort(original, kind="stable")
    new_of_code = np.full(len(names), -1, dtype=np.int64)
    new_of_code[uniq[order]] = np.arange(len(uniq))
    return new_of_code[codes], original[order]


def _format_numbers(x: np.ndarray) -> list[str]:
    """Integers without a decimal point or exponent (unix times stay exact); other values in full."""
    if np.all(np.isfinite(x)) and np.all(x == np.round(x)) and np.all(np.abs(x) < 2**53):
        return [str(v) for v in x.astype(np.int64).tolist()]
    return [repr(v) for v in x.tolist()]


def _check_id(kind: str, path: Path, ids: Sequence[str]) -> None:
    for s in ids:
        if "\t" in s or "\n" in s or "\r" in s:
            raise DataError(path, f"{kind} id {s!r} contains a tab or line break")


def prepare_dataset(
    reviews: str | Path,
    out: str | Path,
    *,
    meta: str | Path | None = None,
    image_features: str | Path | None = None,
    images: str | Path | None = None,
    kcore: int = 5,
    split: str = "mmrec",
    seed: int = 999,
    min_rating: float | None = None,
    review_format: str = "auto",
    meta_format: str = "auto",
    user_col: str | None = None,
    item_col: str | None = None,
    rating_col: str | None = None,
    time_col: str | None = None,
    text_cols: list[str] | None = None,
    text: bool = True,
    text_model: str | Path | None = None,
    text_encoder=None,
    image_encoder=None,
    device: str = "cpu",
    batch_size: int = 64,
    name: str | None = None,
    image_feature_dim: int = 4096,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> PrepareResult:
    """Build a dataset folder ``out`` (which must not exist) from raw review dumps.

    ``reviews`` holds the interactions; ``meta`` the item metadata (→ ``item_text.tsv`` and,
    with ``text``, ``text_feat.npy``); ``image_features`` an Amazon binary feature file or
    ``images`` a folder of ``<item id>.<ext>`` files (→ ``image_feat.npy``). Items without
    text, feature or readable image get the mean row of the others; they are counted in
    ``prepare.json``. ``text_encoder``/``image_encoder`` replace the default offline models
    (see :mod:`modalrec.data.encode`); they are loaded only when needed.
    """
    t_start = time.perf_counter()
    say = log or (lambda _msg: None)
    timings: dict[str, float] = {}
    warnings: list[str] = []

    @contextmanager
    def stage(key: str):
        t0 = time.perf_counter()
        yield
        timings[key] = round(time.perf_counter() - t0, 3)

    # ------------------------------------------------------------ arguments
    reviews, out = Path(reviews), Path(out)
    meta = Path(meta) if meta is not None else None
    image_features = Path(image_features) if image_features is not None else None
    images = Path(images) if images is not None else None
    if out.exists():
        raise DataError(out, "already exists; choose a new output directory (nothing was written)")
    if image_features is not None and images is not None:
        raise ModalrecError("--image-features and --images are mutually exclusive (give one image source)")
    if split not in SPLIT_PROTOCOLS:
        raise ModalrecError(f"--split {split!r}: choose from {', '.join(SPLIT_PROTOCOLS)}")
    if review_format not in ("auto", *REVIEW_FORMATS):
        raise ModalrecError(f"--format {review_format!r}: choose from auto, {', '.join(REVIEW_FORMATS)}")
    if meta_format not in ("auto", *META_FORMATS):
        raise ModalrecError(f"--meta-format {meta_format!r}: choose from auto, {', '.join(META_FORMATS)}")
    if kcore < 0:
        raise ModalrecError(f"--kcore must be ≥ 0, got {kcore}")
    if batch_size < 1:
        raise ModalrecError(f"--batch-size must be ≥ 1, got {batch_size}")
    name = name or out.name
    if not name or name.startswith(".") or "/" in name or os.sep in name:
        raise ModalrecError(f"dataset name {name!r} must be a plain file name")
    for p in (reviews, meta, image_features):
        if p is not None and not p.is_file():
            raise DataError(p, "no such file" if not p.exists() else "not a regular file")
    image_files: dict[str, Path] = {}
    if images is not None:
        image_files, ambiguous = list_images(images)
        if ambiguous:
            warnings.append(
                f"{ambiguous} image files share an item id with another file in {images}; the first by name was used"
            )

    # The inputs' first lines (format, columns) are checked before anything slow; then the encoders
    # are loaded: a missing package should stop the command before any long read.
    check_interaction_columns(reviews, review_format, user_col, item_col, rating_col, time_col)
    if meta is not None:
        check_meta_columns(meta, meta_format, item_col, text_cols)
    with stage("load_encoders"):
        if meta is not None and text and text_encoder is None:
            from modalrec.data.encode import check_device, load_text_encoder

            say("loading the text model (offline)")
            text_encoder = load_text_encoder(text_model, check_device(device))
        if images is not None and image_encoder is None:
            from modalrec.data.encode import check_device, load_image_encoder

            say("loading the image model (offline)")
            image_encoder = load_image_encoder(check_device(device))

    # ------------------------------------------------------------ interactions
    with stage("read_interactions"):
        raw: RawInteractions = read_interactions(reviews, review_format, user_col, item_col, rating_col, time_col)
    say(
        f"read {len(raw):,} interactions ({raw.format}) of {len(raw.user_ids):,} users and "
        f"{len(raw.item_ids):,} items from {reviews}"
    )
    counts: dict = {"records": len(raw), "users_raw": len(raw.user_ids), "items_raw": len(raw.item_ids)}

    with stage("filter"):
        keep = np.ones(len(raw), dtype=bool)
        if min_rating is not None:
            if raw.ratings is None:
                raise DataError(
                    reviews, "--min-rating given but the file has no rating column (name it with --rating-col)"
                )
            keep = raw.ratings >= min_rating
            counts["below_min_rating"] = int((~keep).sum())
            if not keep.any():
                raise DataError(reviews, f"no interaction has a rating ≥ {min_rating:g}")
        idx = np.flatnonzero(keep)
        # De-duplicate (user, item): keep the earliest (then the first in the file).
        ts_all = raw.timestamps if raw.timestamps is not None else np.zeros(len(raw))
        u, i = raw.users[idx], raw.items[idx]
        order = np.lexsort((idx, ts_all[idx], i, u))
        first = np.ones(len(idx), dtype=bool)
        first[1:] = (u[order][1:] != u[order][:-1]) | (i[order][1:] != i[order][:-1])
        sel = np.sort(idx[order[first]])
        counts["duplicates"] = int(len(idx) - len(sel))
        before = {
            "users": int(np.unique(raw.users[sel]).size),
            "items": int(np.unique(raw.items[sel]).size),
            "interactions": int(len(sel)),
        }
        counts["before_kcore"] = before
        kmask, passes = kcore_mask(raw.users[sel], raw.items[sel], kcore)
        sel = sel[kmask]
        counts["kcore_passes"] = passes
        if sel.size == 0:
            raise DataError(
                reviews,
                f"no interaction is left after the {kcore}-core filter ({before['users']:,} users, "
                f"{before['items']:,} items, {before['interactions']:,} interactions before it); lower --kcore",
            )
        users, user_names = _reindex(raw.users[sel], raw.user_ids)
        items, item_names = _reindex(raw.items[sel], raw.item_ids)
        ts = raw.timestamps[sel] if raw.timestamps is not None else None
        ratings = raw.ratings[sel] if raw.ratings is not None else None
        # Canonical order: by user, then time, then item id (the mmrec shuffle is seeded on top of it).
        order = np.lexsort((items, ts if ts is not None else np.zeros(len(sel)), users))
        users, items = users[order], items[order]
        ts = ts[order] if ts is not None else None
        ratings = ratings[order] if ratings is not None else None
        n_users, n_items = len(user_names), len(item_names)
        counts["removed_by_kcore"] = {
            "users": before["users"] - n_users,
            "items": before["items"] - n_items,
            "interactions": before["interactions"] - len(users),
        }
    _check_id("user", reviews, user_names.tolist())
    _check_id("item", reviews, item_names.tolist())
    say(
        f"{kcore}-core: {n_users:,} users, {n_items:,} items, {len(users):,} interactions "
        f"({counts['duplicates']:,} repeats removed, {passes} passes)"
    )

    with stage("split"):
        labels = split_labels(split, users, ts, seed, source=reviews)
    per_split = {k: int((labels == v).sum()) for k, v in SPLIT_NAMES.items()}
    counts["final"] = {
        "users": n_users,
        "items": n_items,
        "interactions": int(len(users)),
        "density": len(users) / (n_users * n_items),
        "per_split": per_split,
    }

    inputs: dict = {"reviews": _file_info(reviews, raw.format)}
    features: dict[str, np.ndarray] = {}
    item_texts: list[str] | None = None
    text_report: dict | None = None
    image_report: dict | None = None
    row_of_item = {n: r for r, n in enumerate(item_names.tolist())}

    # ------------------------------------------------------------ text
    if meta is not None:
        with stage("read_meta"):
            m = read_item_meta(meta, meta_format, set(row_of_item), item_col, text_cols)
        inputs["meta"] = _file_info(meta, m.format)
        item_texts = [m.texts.get(n, "") for n in item_names.tolist()]
        has_record = np.array([n in m.texts for n in item_names.tolist()])
        has_text = np.array([bool(t) for t in item_texts])
        if not has_record.any():
            raise DataError(
                meta,
                f"none of the {n_items:,} items has a record here (do its item ids match the "
                f"interactions'? first item: {item_names[0]!r})",
            )
        if not has_text.any():
            raise DataError(meta, f"none of the {n_items:,} items has any text in the fields {m.text_fields}")
        text_report = {
            "fields": m.text_fields,
            "composition": "fields joined as sentences ('. '), missing ones skipped",
            "meta_records": m.records,
            "meta_duplicates": m.duplicates,
            "items_with_text": int(has_text.sum()),
            "items_without_record": int((~has_record).sum()),
            "items_with_empty_text": int((has_record & ~has_text).sum()),
            "without_text_examples": item_names[~has_text][:EXAMPLES].tolist(),
            "fill": "mean of the encoded items" if text else None,
        }
        n_missing = int((~has_text).sum())
        if n_missing:
            warnings.append(
                f"{n_missing:,} of {n_items:,} items have no text ({text_report['items_without_record']:,} without a "
                f"metadata record, {text_report['items_with_empty_text']:,} with empty fields)"
                + ("; their text feature is the mean of the others" if text else "")
            )
        if text:
            say(f"encoding {int(has_text.sum()):,} item texts")
            with stage("encode_text"):
                enc = encode_texts(
                    text_encoder, [t for t, h in zip(item_texts, has_text, strict=True) if h], batch_size, progress
                )
                x = np.zeros((n_items, enc.shape[1]), dtype=np.float32)
                x[has_text] = enc
                features["text"] = _mean_fill(x, has_text)
            text_report["encoder"] = _describe(text_encoder)
            text_report["dim"] = int(enc.shape[1])
        say(f"text: {int(has_text.sum()):,} of {n_items:,} items have text")

    # ------------------------------------------------------------ images
    if image_features is not None:
        with stage("read_image_features"):
            x, found, records, dups = read_image_features(image_features, row_of_item, image_feature_dim)
        inputs["image_features"] = _file_info(
            image_features, f"amazon-binary (10-byte ASIN + {image_feature_dim} float32 little-endian)"
        )
        if not found.any():
            raise DataError(
                image_features,
                f"none of the {n_items:,} items has a feature here (ASINs must match "
                f"the item ids; first item: {item_names[0]!r})",
            )
        features["image"] = _mean_fill(x, found)
        image_report = {
            "source": "binary feature file",
            "dim": image_feature_dim,
            "records": records,
            "duplicate_records": dups,
            "items_with_feature": int(found.sum()),
            "items_missing": int((~found).sum()),
            "missing_examples": item_names[~found][:EXAMPLES].tolist(),
            "fill": "mean of the items with a feature",
        }
        if (~found).any():
            warnings.append(
                f"{int((~found).sum()):,} of {n_items:,} items have no image feature in "
                f"{image_features.name}; their image feature is the mean of the others"
            )
        say(f"image: {int(found.sum()):,} of {n_items:,} items have a feature")
    elif images is not None:
        inputs["images"] = _folder_info(images, image_files)
        with_file = np.array([n in image_files for n in item_names.tolist()])
        rows = np.flatnonzero(with_file)
        say(f"encoding {len(rows):,} item images")
        with stage("encode_images"):
            enc, ok_pos, bad = encode_image_files(
                image_encoder, [image_files[item_names[r]] for r in rows.tolist()], batch_size, progress
            )
        found = np.zeros(n_items, dtype=bool)
        found[rows[ok_pos]] = True
        if not found.any():
            raise DataError(
                images,
                f"none of the {n_items:,} items has a readable image (files must be named "
                f"<item id>.<ext>; first item: {item_names[0]!r}; {len(bad)} unreadable)",
            )
        x = np.zeros((n_items, enc.shape[1]), dtype=np.float32)
        x[found] = enc
        features["image"] = _mean_fill(x, found)
        unreadable = [(item_names[rows[p]], image_files[item_names[rows[p]]].name, why) for p, why in bad]
        image_report = {
            "source": "image files",
            "encoder": _describe(image_encoder),
            "dim": int(enc.shape[1]),
            "items_with_feature": int(found.sum()),
            "items_without_file": int((~with_file).sum()),
            "missing_examples": item_names[~with_file][:EXAMPLES].tolist(),
            "unreadable": len(bad),
            "unreadable_examples": [{"item": a, "file": f, "error": w} for a, f, w in unreadable[:EXAMPLES]],
            "fill": "mean of the items with a readable image",
        }
        if (~with_file).any():
            warnings.append(
                f"{int((~with_file).sum()):,} of {n_items:,} items have no image file in {images}; "
                "their image feature is the mean of the others"
            )
        if bad:
            shown = ", ".join(f for _, f, _ in unreadable[:3]) + (", …" if len(bad) > 3 else "")
            warnings.append(f"{len(bad):,} image files could not be read ({shown}); mean-filled")
        say(f"image: {int(found.sum()):,} of {n_items:,} items have a readable image")

    # ------------------------------------------------------------ write
    report = {
        "modalrec": modalrec.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "name": name,
        "inputs": inputs,
        "parameters": {
            "kcore": kcore,
            "split": split,
            "seed": seed,
            "min_rating": min_rating,
            "format": review_format,
            "meta_format": meta_format,
            "columns": raw.columns,
            "implicit": "every kept interaction is a positive; rating is kept as a column only",
            "dedup": "repeated (user, item) pairs keep the earliest",
            "ids": "contiguous from 0 in the order of the original ids (numeric when all are integers)",
            "text": text if meta is not None else None,
            "text_model": None if text_model is None else str(text_model),
            "device": device,
            "batch_size": batch_size,
        },
        "counts": counts,
        "text": text_report,
        "image": image_report,
        "files": [],
        "warnings": warnings,
        "timings_s": timings,
        "environment": {"python": platform.python_version(), "numpy": np.__version__, "platform": platform.platform()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        with stage("write"):
            files = _write_folder(
                tmp, name, users, items, labels, ts, ratings, features, user_names, item_names, item_texts, raw
            )
        with stage("validate"):
            ds = load_dataset(tmp)
            if (ds.n_users, ds.n_items) != (n_users, n_items):  # pragma: no cover - a bug, not bad input
                raise ModalrecError(f"internal error: the written dataset does not read back ({tmp})")
            warnings.extend(ds.warnings)
        timings["total"] = round(time.perf_counter() - t_start, 3)
        report["files"] = files + [REPORT_FILE]
        write_json(tmp / REPORT_FILE, report)
        _normal_permissions(tmp)
        if out.exists():
            raise DataError(out, "appeared while preparing; nothing was written")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"wrote {out}")
    return PrepareResult(out, report)


def _normal_permissions(d: Path) -> None:
    """mkdtemp/mkstemp create 0700/0600 entries; give the finished folder the usual umask-based modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(d, 0o777 & ~umask)
    for p in d.iterdir():
        os.chmod(p, 0o666 & ~umask)


def _write_folder(
    d: Path, name: str, users, items, labels, ts, ratings, features, user_names, item_names, item_texts, raw
) -> list[str]:
    files = []
    n = len(users)
    cols = [
        [str(v) for v in users.tolist()],
        [str(v) for v in items.tolist()],
        _format_numbers(ratings) if ratings is not None else ["1"] * n,
    ]
    header = ["userID", "itemID", "rating"]
    if ts is not None:
        cols.append(_format_numbers(ts))
        header.append("timestamp")
    cols.append([str(v) for v in labels.tolist()])
    header.append("x_label")
    body = "\n".join("\t".join(row) for row in zip(*cols, strict=True))
    write_text(d / f"{name}.inter", "\t".join(header) + "\n" + body + "\n")
    files.append(f"{name}.inter")

    amazon = raw.format != "table"
    u_src = "user_id" if amazon else raw.columns["user"]
    i_src = "asin" if amazon else raw.columns["item"]
    write_text(d / USER_MAPPING, f"{u_src}\tuserID\n" + "".join(f"{s}\t{j}\n" for j, s in enumerate(user_names)))
    write_text(d / ITEM_MAPPING, f"{i_src}\titemID\n" + "".join(f"{s}\t{j}\n" for j, s in enumerate(item_names)))
    files += [USER_MAPPING, ITEM_MAPPING]
    for m, x in features.items():
        write_npy(d / f"{m}{FEATURE_SUFFIX}", np.ascontiguousarray(x, dtype=np.float32))
        files.append(f"{m}{FEATURE_SUFFIX}")
    if item_texts is not None:
        lines = [f"itemID\t{i_src}\ttext"] + [
            f"{j}\t{s}\t{t}" for j, (s, t) in enumerate(zip(item_names, item_texts, strict=True))
        ]
        write_text(d / ITEM_TEXT, "\n".join(lines) + "\n")
        files.append(ITEM_TEXT)
    return files
