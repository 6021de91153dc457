"""Reading and checking the files of a dataset folder: the ``.inter`` table, feature matrices, titles, cold items.

Each reader raises :class:`~modalrec.errors.DataError` naming the file, and the line or field, of the first
problem. :mod:`modalrec.data.dataset` assembles a :class:`~modalrec.data.dataset.Dataset` from them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from modalrec.errors import DataError

REQUIRED_COLUMNS = ("userID", "itemID", "x_label")
TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {"train": TRAIN, "valid": VALID, "test": TEST}


def find_inter_file(directory: Path) -> Path:
    if not directory.is_dir():
        raise DataError(directory, "not a directory")
    inters = sorted(directory.glob("*.inter"))
    if not inters:
        raise DataError(directory, "no *.inter file found (expected exactly one)")
    if len(inters) > 1:
        names = ", ".join(p.name for p in inters)
        raise DataError(directory, f"expected exactly one *.inter file, found {len(inters)}: {names}")
    return inters[0]


def _parse_int_column(path: Path, values: list[str], column: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.str_).astype(np.int64)
    except (ValueError, OverflowError):
        for row, v in enumerate(values):
            try:
                np.asarray([v], dtype=np.str_).astype(np.int64)
            except ValueError:
                raise DataError(path, f"{column} {v!r} is not an integer", line=row + 2) from None
            except OverflowError:
                raise DataError(path, f"{column} {v!r} is out of the 64-bit integer range", line=row + 2) from None
        raise  # pragma: no cover - unreachable: one of the values must fail


def _parse_float_column(path: Path, values: list[str], column: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.str_).astype(np.float64)
    except ValueError:
        for row, v in enumerate(values):
            try:
                float(v)
            except ValueError:
                raise DataError(path, f"{column} {v!r} is not a number", line=row + 2) from None
        raise  # pragma: no cover


def _check_contiguous(path: Path, ids: np.ndarray, column: str) -> int:
    if ids.size == 0:
        return 0
    lo = int(ids.min())
    if lo < 0:
        row = int(np.argmax(ids < 0))
        raise DataError(path, f"{column} {int(ids[row])} is negative; ids must be 0-based", line=row + 2)
    # np.unique instead of a 0..max presence mask: a huge id must give an error, not a huge allocation.
    present = np.unique(ids)
    n = int(present[-1]) + 1
    if present.size != n:
        first_missing = int(np.argmax(present != np.arange(present.size)))
        raise DataError(
            path,
            f"column {column}: ids must be 0-based and contiguous, but {n - present.size} "
            f"of 0..{n - 1} never occur (first missing: {first_missing})",
        )
    return n


def read_inter_file(path: Path) -> dict[str, np.ndarray]:
    """Parse and check an ``.inter`` file; errors name the file and line.

    A file whose every field is a number is read by NumPy's C reader (10M lines in seconds, no per-field
    Python objects: the line-by-line reader held ~0.7 KB per line); anything that reader or the checks
    refuse is read again line by line, which names the first problem's line.
    """
    try:
        return _read_numeric_inter_file(path)
    except (DataError, ValueError, UnicodeDecodeError, Warning, OSError):
        return _read_inter_file_by_line(path)


def _read_numeric_inter_file(path: Path) -> dict[str, np.ndarray]:
    """The fast path of :func:`read_inter_file`; raises on anything it does not take (the caller falls back)."""
    with path.open(encoding="utf-8") as f:
        header = [c.strip().split(":")[0] for c in f.readline().rstrip("\r\n").split("\t")]
    if any(col not in header for col in REQUIRED_COLUMNS) or len(set(header)) != len(header):
        raise ValueError("header")
    # the required columns (ids and the split label) are integers, every other one a number
    dtype = np.dtype([(c, np.int64 if c in REQUIRED_COLUMNS else np.float64) for c in header])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty table warns
        table = np.loadtxt(path, delimiter="\t", skiprows=1, dtype=dtype, comments=None, ndmin=1, encoding="utf-8")
    if table.size == 0:
        raise ValueError("empty")
    column = {c: np.ascontiguousarray(table[c]) for c in header}
    return _checked_columns(path, column["userID"], column["itemID"], column["x_label"], column.get("timestamp"))


def _checked_columns(
    path: Path, users: np.ndarray, items: np.ndarray, labels: np.ndarray, timestamps: np.ndarray | None
) -> dict[str, np.ndarray]:
    """The parsed columns after the checks both readers share; a DataError's line counts the rows as parsed
    (the line-by-line reader maps it to the file's line)."""
    bad = ~np.isin(labels, (TRAIN, VALID, TEST))
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(path, f"x_label {int(labels[row])} is not 0, 1 or 2 (train/valid/test)", line=row + 2)
    out = {"users": users, "items": items, "labels": labels}
    if timestamps is not None:
        out["timestamps"] = timestamps
    out["n_users"] = np.int64(_check_contiguous(path, users, "userID"))
    out["n_items"] = np.int64(_check_contiguous(path, items, "itemID"))
    return out


def _read_inter_file_by_line(path: Path) -> dict[str, np.ndarray]:
    """:func:`read_inter_file` line by line: slow, but its errors name the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(path, "empty file: expected a header line 'userID itemID rating timestamp x_label'", line=1)
    header = [c.strip() for c in lines[0].split("\t")]
    # Accept RecBole-style typed headers such as 'userID:token'.
    header = [c.split(":")[0] for c in header]
    for col in REQUIRED_COLUMNS:
        if col not in header:
            raise DataError(
                path,
                f"missing column {col!r} in header (found: {' '.join(header)}); the file must be tab-separated",
                line=1,
            )
    width = len(header)
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != width:
            raise DataError(path, f"expected {width} tab-separated fields, found {len(fields)}", line=n)
        rows.append(fields)
    if not rows:
        raise DataError(path, "no interactions after the header")
    # Line numbers in errors must refer to the file, so remember where each row came from.
    line_of_row = [n for n, line in enumerate(lines[1:], start=2) if line.strip()]
    cols = list(zip(*rows, strict=True))

    def col(name: str) -> list[str]:
        return [v.strip() for v in cols[header.index(name)]]

    def relocate(err: DataError) -> DataError:
        if err.line is None:
            return err
        return DataError(path, err.message, line=line_of_row[err.line - 2])

    try:
        users = _parse_int_column(path, col("userID"), "userID")
        items = _parse_int_column(path, col("itemID"), "itemID")
        labels = _parse_int_column(path, col("x_label"), "x_label")
        stamps = _parse_float_column(path, col("timestamp"), "timestamp") if "timestamp" in header else None
        return _checked_columns(path, users, items, labels, stamps)
    except DataError as err:
        raise relocate(err) from None


# Rows per block when a feature matrix is checked or hashed: a whole-matrix temporary would cost as much
# memory as the matrix itself, which a memory-mapped file exists to avoid.
FEATURE_BLOCK_BYTES = 64 * 2**20


def feature_row_blocks(x: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, block) of ``x`` in row blocks of about 64 MiB."""
    rows = max(1, FEATURE_BLOCK_BYTES // max(1, x.shape[1] * x.itemsize))
    for lo in range(0, x.shape[0], rows):
        yield lo, x[lo : lo + rows]


def read_feature_file(path: Path, n_items: int) -> np.ndarray:
    """Load ``<modality>_feat.npy``; check shape, row count and finiteness.

    A C-ordered float32 file is memory-mapped (copy-on-write: nothing is read until used, and the
    operating system may drop its pages again), so a feature matrix larger than memory can be
    opened; any other numeric dtype (float16 — half the disk —, float64, integers) is accepted and
    converted to float32 in memory. Finiteness is checked in row blocks.
    """
    try:
        x = np.load(path, mmap_mode="c", allow_pickle=False)
    except Exception as exc:  # numpy raises several types for corrupt files
        raise DataError(path, f"cannot read as a .npy array ({exc})") from None
    if x.ndim != 2:
        raise DataError(path, f"expected a 2-D (items × dim) array, found shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(path, f"expected numeric features, found dtype {x.dtype}")
    if x.shape[0] != n_items:
        raise DataError(path, f"has {x.shape[0]} rows but the dataset has {n_items} items (row j must be item j)")
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        x = np.ascontiguousarray(x, dtype=np.float32)
    for lo, block in feature_row_blocks(x):
        finite = np.isfinite(block)
        if not finite.all():
            r, c = np.argwhere(~finite)[0]
            kind = "NaN" if np.isnan(block[r, c]) else "an infinite value"
            r += lo
            raise DataError(path, f"row {r} (item {r}), column {c} holds {kind}; features must be finite")
    return x


def read_item_titles(path: Path, n_items: int) -> dict[int, str]:
    titles: dict[int, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            item = int(fields[0])
        except ValueError:
            if n == 1:  # header line
                continue
            raise DataError(path, f"item id {fields[0]!r} is not an integer", line=n) from None
        if not 0 <= item < n_items:
            raise DataError(path, f"item id {item} outside 0..{n_items - 1}", line=n)
        titles[item] = fields[-1].strip()
    return titles


def read_cold_items(path: Path, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``cold_items.txt``: a header ``itemID split``, then one ``<item id> <valid|test>`` line per cold item.

    Returns (items sorted, their split labels). Errors name the file and line.
    """
    items, labels = [], []
    seen: dict[int, int] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")]
        if n == 1 and fields[0] == "itemID":
            continue
        if len(fields) != 2:
            raise DataError(path, f"expected 2 tab-separated fields (itemID, split), found {len(fields)}", line=n)
        try:
            item = int(fields[0])
        except ValueError:
            raise DataError(path, f"item id {fields[0]!r} is not an integer", line=n) from None
        if not 0 <= item < n_items:
            raise DataError(path, f"item id {item} outside 0..{n_items - 1}", line=n)
        if fields[1] not in ("valid", "test"):
            raise DataError(path, f"split {fields[1]!r} must be valid or test", line=n)
        if item in seen:
            raise DataError(path, f"item {item} is listed twice (lines {seen[item]} and {n})", line=n)
        seen[item] = n
        items.append(item)
        labels.append(SPLIT_NAMES[fields[1]])
    order = np.argsort(np.asarray(items, dtype=np.int64), kind="stable")
    return np.asarray(items, dtype=np.int64)[order], np.asarray(labels, dtype=np.int64)[order]


def check_cold_items(path: Path, inter_path: Path, items: np.ndarray, labels: np.ndarray, cold: np.ndarray) -> None:
    """No cold item may have a training interaction: that would train on a held-out item."""
    is_cold = np.zeros(int(max(items.max(initial=-1), cold.max(initial=-1))) + 1, dtype=bool)
    is_cold[cold] = True
    leak = np.flatnonzero((labels == TRAIN) & is_cold[items])
    if leak.size:
        row = int(leak[0])
        raise DataError(
            path,
            f"item {int(items[row])} is listed as cold but has {leak.size} training interaction(s) "
            f"(first: {inter_path}:{row + 2}, x_label 0); cold items must never be trained on",
        )
