"""Reading, validating and writing dataset folders (MMRec layout).

A dataset folder holds exactly one ``<name>.inter`` file (tab-separated, header with at
least ``userID itemID x_label``; ``rating`` and ``timestamp`` are optional, extra columns
are ignored), any number of ``<modality>_feat.npy`` files with one row per item, and an
optional ``item_text.tsv`` whose first column is the item id and last column the text.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from modalrec.errors import DataError
from modalrec.io import write_npy, write_text

REQUIRED_COLUMNS = ("userID", "itemID", "x_label")
FEATURE_SUFFIX = "_feat.npy"
COLD_ITEMS_FILE = "cold_items.txt"  # written by the cold-items split: "itemID<TAB>split" (valid | test)
TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {"train": TRAIN, "valid": VALID, "test": TEST}


@dataclass
class Dataset:
    """Interactions and item features of one dataset, validated and de-duplicated.

    ``users``/``items``/``labels`` hold one entry per interaction (x_label 0/1/2 =
    train/valid/test); ``features`` maps a modality name to an ``(n_items, dim)``
    float32 array whose row j belongs to item j.
    """

    name: str
    n_users: int
    n_items: int
    users: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    timestamps: np.ndarray | None = None
    features: dict[str, np.ndarray] = field(default_factory=dict)
    item_titles: dict[int, str] | None = None
    path: Path | None = None
    warnings: list[str] = field(default_factory=list)
    # Cold items (``cold_items.txt``, cold-items split): ids, sorted, and the split (VALID/TEST) whose
    # interactions each one holds. Empty for every other dataset. No cold item has a training interaction.
    cold_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    cold_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    # ----------------------------------------------------------------- splits
    def split(self, split: str | int) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) of one split, by name or x_label value."""
        label = SPLIT_NAMES[split] if isinstance(split, str) else split
        mask = self.labels == label
        return self.users[mask], self.items[mask]

    def split_matrix(self, split: str | int) -> sp.csr_matrix:
        """Binary user × item CSR matrix of one split (sorted indices)."""
        u, i = self.split(split)
        m = sp.csr_matrix((np.ones(len(u), dtype=np.float32), (u, i)), shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        m.sort_indices()
        m.data[:] = 1.0
        return m

    @cached_property
    def train_matrix(self) -> sp.csr_matrix:
        """The training interaction matrix R (the only matrix any model may learn from)."""
        return self.split_matrix(TRAIN)

    @property
    def modalities(self) -> list[str]:
        return list(self.features)

    @property
    def has_cold_items(self) -> bool:
        """Whether the dataset declares cold items (a cold-items split)."""
        return self.cold_items.size > 0

    def cold_items_of(self, split: str | int | None = None) -> np.ndarray:
        """The declared cold items, all of them or those held out for one split (valid | test)."""
        if split is None:
            return self.cold_items
        label = SPLIT_NAMES[split] if isinstance(split, str) else split
        return self.cold_items[self.cold_labels == label]

    def select_modalities(self, names: list[str] | None) -> Dataset:
        """A view of this dataset with only the named modalities (all when ``names`` is None)."""
        if names is None:
            return self
        missing = [n for n in names if n not in self.features]
        if missing:
            where = self.path if self.path is not None else self.name
            raise DataError(
                where,
                f"modality {missing[0]!r} not found (available: {', '.join(self.features) or 'none'})",
            )
        ds = Dataset(
            name=self.name,
            n_users=self.n_users,
            n_items=self.n_items,
            users=self.users,
            items=self.items,
            labels=self.labels,
            timestamps=self.timestamps,
            features={n: self.features[n] for n in names},
            item_titles=self.item_titles,
            path=self.path,
            warnings=list(self.warnings),
            cold_items=self.cold_items,
            cold_labels=self.cold_labels,
        )
        return ds

    # ----------------------------------------------------------- fingerprints
    @cached_property
    def interactions_hash(self) -> str:
        """Content hash of the training interactions (keys graph caches built from R)."""
        u, i = self.split(TRAIN)
        h = hashlib.sha256(f"{self.n_users}x{self.n_items}".encode())
        h.update(np.ascontiguousarray(u, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(i, dtype=np.int64).tobytes())
        return h.hexdigest()[:24]

    def feature_hash(self, modality: str) -> str:
        """Content hash of one modality's feature matrix (keys kNN-graph caches)."""
        cache = self.__dict__.setdefault("_feature_hashes", {})
        if modality not in cache:
            x = np.ascontiguousarray(self.features[modality])
            h = hashlib.sha256(f"{x.shape}{x.dtype}".encode())
            h.update(x.tobytes())
            cache[modality] = h.hexdigest()[:24]
        return cache[modality]

    @cached_property
    def fingerprint(self) -> str:
        """Content hash of everything a model sees: all splits and the selected features."""
        h = hashlib.sha256(f"{self.n_users}x{self.n_items}".encode())
        for arr in (self.users, self.items, self.labels):
            h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
        for m in sorted(self.features):
            h.update(m.encode())
            h.update(self.feature_hash(m).encode())
        if self.has_cold_items:  # only then: fingerprints of datasets without cold items stay as they were
            h.update(b"cold")
            h.update(np.ascontiguousarray(self.cold_items, dtype=np.int64).tobytes())
            h.update(np.ascontiguousarray(self.cold_labels, dtype=np.int64).tobytes())
        return h.hexdigest()[:24]

    # ---------------------------------------------------------------- summary
    def summary(self) -> dict:
        """Counts, density and modalities, as printed by ``modalrec data validate``."""
        counts = {name: int((self.labels == v).sum()) for name, v in SPLIT_NAMES.items()}
        train_users, train_items = self.split(TRAIN)
        n_train_items = int(np.unique(train_items).size)
        n_train_users = int(np.unique(train_users).size)
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": int(len(self.users)),
            "per_split": counts,
            "density": len(self.users) / max(1, self.n_users * self.n_items),
            "items_without_training_interactions": self.n_items - n_train_items,
            # ids with no training interaction (their valid/test rows were dropped): never trained or evaluated
            "users_without_training_interactions": self.n_users - n_train_users,
            "modalities": {m: int(x.shape[1]) for m, x in self.features.items()},
            "has_titles": self.item_titles is not None,
            "cold_items": {name: int((self.cold_labels == v).sum()) for name, v in SPLIT_NAMES.items() if v != TRAIN}
            if self.has_cold_items
            else None,
            "warnings": list(self.warnings),
        }

    def title(self, item: int) -> str | None:
        return None if self.item_titles is None else self.item_titles.get(int(item))


# ====================================================================== loading
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
    """Parse and check an ``.inter`` file; errors name the file and line."""
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
    out: dict[str, np.ndarray] = {}

    def col(name: str) -> list[str]:
        return [v.strip() for v in cols[header.index(name)]]

    def relocate(err: DataError) -> DataError:
        if err.line is None:
            return err
        return DataError(path, err.message, line=line_of_row[err.line - 2])

    try:
        out["users"] = _parse_int_column(path, col("userID"), "userID")
        out["items"] = _parse_int_column(path, col("itemID"), "itemID")
        labels = _parse_int_column(path, col("x_label"), "x_label")
        bad = ~np.isin(labels, (TRAIN, VALID, TEST))
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(path, f"x_label {int(labels[row])} is not 0, 1 or 2 (train/valid/test)", line=row + 2)
        out["labels"] = labels
        if "timestamp" in header:
            out["timestamps"] = _parse_float_column(path, col("timestamp"), "timestamp")
        out["n_users"] = np.int64(_check_contiguous(path, out["users"], "userID"))
        out["n_items"] = np.int64(_check_contiguous(path, out["items"], "itemID"))
    except DataError as err:
        raise relocate(err) from None
    return out


def read_feature_file(path: Path, n_items: int) -> np.ndarray:
    """Load ``<modality>_feat.npy``; check shape, row count and finiteness."""
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for corrupt files
        raise DataError(path, f"cannot read as a .npy array ({exc})") from None
    if x.ndim != 2:
        raise DataError(path, f"expected a 2-D (items × dim) array, found shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(path, f"expected numeric features, found dtype {x.dtype}")
    if x.shape[0] != n_items:
        raise DataError(path, f"has {x.shape[0]} rows but the dataset has {n_items} items (row j must be item j)")
    x = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(x)
    if not finite.all():
        r, c = np.argwhere(~finite)[0]
        kind = "NaN" if np.isnan(x[r, c]) else "an infinite value"
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


def clean_interactions(
    users: np.ndarray, items: np.ndarray, labels: np.ndarray, timestamps: np.ndarray | None
) -> tuple[np.ndarray, list[str]]:
    """Indices of the interactions to keep, plus warnings.

    Repeated (user, item) pairs keep one occurrence — the one in the earliest split
    (train before valid before test), then the earliest line — so a repeat never leaks
    a training item into evaluation. Valid/test interactions of users with no training
    interaction are dropped (MMRec's cold-start filter).
    """
    warnings: list[str] = []
    n = len(users)
    order = np.lexsort((np.arange(n), labels, items, users))
    u, i = users[order], items[order]
    first = np.ones(n, dtype=bool)
    first[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    keep = np.sort(order[first])
    n_dup = n - keep.size
    if n_dup:
        warnings.append(f"{n_dup} repeated (user, item) pairs removed (kept the earliest split's one)")
    has_train = np.zeros(int(users.max()) + 1, dtype=bool)
    has_train[users[keep][labels[keep] == TRAIN]] = True
    cold = ~has_train[users[keep]]
    if cold.any():
        n_users_cold = int(np.unique(users[keep][cold]).size)
        warnings.append(
            f"{int(cold.sum())} valid/test interactions of {n_users_cold} users with no training interaction dropped"
        )
        keep = keep[~cold]
    return keep, warnings


def load_dataset(directory: str | Path, modalities: list[str] | None = None) -> Dataset:
    """Load and validate a dataset folder.

    Raises :class:`DataError` (naming the file and line or field) for anything a model
    could not train on; fixable issues (repeats, cold-start users) become warnings.
    """
    directory = Path(directory)
    inter_path = find_inter_file(directory)
    parsed = read_inter_file(inter_path)
    n_users, n_items = int(parsed["n_users"]), int(parsed["n_items"])
    keep, warnings = clean_interactions(parsed["users"], parsed["items"], parsed["labels"], parsed.get("timestamps"))
    users, items, labels = parsed["users"][keep], parsed["items"][keep], parsed["labels"][keep]
    timestamps = parsed["timestamps"][keep] if "timestamps" in parsed else None
    if not (labels == TRAIN).any():
        raise DataError(inter_path, "the training split (x_label 0) is empty")

    available = {p.name[: -len(FEATURE_SUFFIX)]: p for p in sorted(directory.glob(f"*{FEATURE_SUFFIX}"))}
    wanted = list(available) if modalities is None else list(modalities)
    for m in wanted:
        if m not in available:
            raise DataError(
                directory / f"{m}{FEATURE_SUFFIX}",
                f"modality {m!r} requested but no such file (available: {', '.join(available) or 'none'})",
            )
    features = {m: read_feature_file(available[m], n_items) for m in wanted}

    titles_path = directory / "item_text.tsv"
    titles = read_item_titles(titles_path, n_items) if titles_path.exists() else None
    cold_path = directory / COLD_ITEMS_FILE
    cold_items, cold_labels = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if cold_path.exists():
        cold_items, cold_labels = read_cold_items(cold_path, n_items)
        check_cold_items(cold_path, inter_path, parsed["items"], parsed["labels"], cold_items)
    return Dataset(
        name=inter_path.stem,
        n_users=n_users,
        n_items=n_items,
        users=users,
        items=items,
        labels=labels,
        timestamps=timestamps,
        features=features,
        item_titles=titles,
        path=directory.resolve(),
        warnings=[f"{inter_path.name}: {w}" for w in warnings],
        cold_items=cold_items,
        cold_labels=cold_labels,
    )


# ====================================================================== writing
def _number(value: float) -> str:
    """Exact text for a number: integers without exponent (unix times stay exact), else repr."""
    f = float(value)
    return str(int(f)) if f.is_integer() else repr(f)


def write_dataset(
    out_dir: str | Path,
    name: str,
    users: np.ndarray,
    items: np.ndarray,
    labels: np.ndarray,
    timestamps: np.ndarray | None = None,
    ratings: np.ndarray | None = None,
    features: dict[str, np.ndarray] | None = None,
    titles: dict[int, str] | None = None,
    cold_items: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Write a new dataset folder; refuses to touch an existing path.

    ``cold_items`` = (item ids, split labels VALID/TEST) writes ``cold_items.txt``.
    """
    out = Path(out_dir)
    if out.exists():
        raise DataError(out, "already exists; choose a new output directory (nothing was written)")
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        n = len(users)
        ts = timestamps if timestamps is not None else np.zeros(n)
        rt = ratings if ratings is not None else np.ones(n)
        body = "\n".join(
            f"{u}\t{i}\t{_number(r)}\t{_number(t)}\t{x}"
            for u, i, r, t, x in zip(
                users.tolist(), items.tolist(), rt.tolist(), ts.tolist(), labels.tolist(), strict=True
            )
        )
        write_text(tmp / f"{name}.inter", "userID\titemID\trating\ttimestamp\tx_label\n" + body + "\n")
        for m, x in (features or {}).items():
            write_npy(tmp / f"{m}{FEATURE_SUFFIX}", np.ascontiguousarray(x, dtype=np.float32))
        if titles:
            lines = ["itemID\ttext"] + [f"{i}\t{t}" for i, t in sorted(titles.items())]
            write_text(tmp / "item_text.tsv", "\n".join(lines) + "\n")
        if cold_items is not None:
            names = {VALID: "valid", TEST: "test"}
            ids, labs = cold_items
            lines = ["itemID\tsplit"] + [
                f"{i}\t{names[lab]}" for i, lab in sorted(zip(ids.tolist(), labs.tolist(), strict=True))
            ]
            write_text(tmp / COLD_ITEMS_FILE, "\n".join(lines) + "\n")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
