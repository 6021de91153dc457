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

from modalrec.data.files import (
    SPLIT_NAMES,
    TEST,
    TRAIN,
    VALID,
    check_cold_items,
    feature_row_blocks,
    find_inter_file,
    read_cold_items,
    read_feature_file,
    read_inter_file,
    read_item_titles,
)
from modalrec.errors import DataError
from modalrec.io import write_npy, write_text

__all__ = [
    "COLD_ITEMS_FILE",
    "FEATURE_SUFFIX",
    "SPLIT_NAMES",
    "TEST",
    "TRAIN",
    "VALID",
    "Dataset",
    "clean_interactions",
    "find_inter_file",
    "load_dataset",
    "read_feature_file",
    "read_inter_file",
    "read_item_titles",
    "write_dataset",
]

FEATURE_SUFFIX = "_feat.npy"
COLD_ITEMS_FILE = "cold_items.txt"  # written by the cold-items split: "itemID<TAB>split" (valid | test)


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
            x = self.features[modality]
            h = hashlib.sha256(f"{x.shape}{x.dtype}".encode())
            for _, block in feature_row_blocks(x):  # the same bytes as the whole matrix's, without a copy of it
                h.update(np.ascontiguousarray(block).tobytes())
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
