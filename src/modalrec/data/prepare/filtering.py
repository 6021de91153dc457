"""Raw interactions → the kept ones: implicit feedback (optional rating threshold) →
de-duplication → iterative k-core → contiguous re-indexing in a canonical order.

Each step records what it removed in ``counts`` (the ``counts`` section of ``prepare.json``,
whose keys keep the order of the steps).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modalrec.data.prepare.interactions import RawInteractions
from modalrec.data.prepare.kcore import kcore_mask
from modalrec.errors import DataError

_INTEGER = re.compile(r"[+-]?\d+")


@dataclass
class KeptInteractions:
    """Interactions that passed every filter: new contiguous ids, ordered by user, then time, then item.

    ``user_names``/``item_names`` hold the original id of each new id.
    """

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray | None
    ratings: np.ndarray | None
    user_names: np.ndarray
    item_names: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.user_names)

    @property
    def n_items(self) -> int:
        return len(self.item_names)

    def __len__(self) -> int:
        return len(self.users)


def keep_interactions(
    raw: RawInteractions, source: Path, min_rating: float | None, kcore: int, counts: dict
) -> KeptInteractions:
    """Apply the filters in order; errors (nothing left) name ``source``, the interaction file."""
    idx = _rated_at_least(raw, source, min_rating, counts)
    sel = _first_of_each_pair(raw, idx, counts)
    sel = _kcore(raw, sel, source, kcore, counts)
    kept = _reindexed(raw, sel)
    before = counts["before_kcore"]
    counts["removed_by_kcore"] = {
        "users": before["users"] - kept.n_users,
        "items": before["items"] - kept.n_items,
        "interactions": before["interactions"] - len(kept),
    }
    return kept


def _rated_at_least(raw: RawInteractions, source: Path, min_rating: float | None, counts: dict) -> np.ndarray:
    """Positions of the interactions rated at least ``min_rating`` (all when it is None).

    Implicit feedback: every kept interaction is a positive, whatever its rating.
    """
    keep = np.ones(len(raw), dtype=bool)
    if min_rating is not None:
        if raw.ratings is None:
            raise DataError(source, "--min-rating given but the file has no rating column (name it with --rating-col)")
        keep = raw.ratings >= min_rating
        counts["below_min_rating"] = int((~keep).sum())
        if not keep.any():
            raise DataError(source, f"no interaction has a rating ≥ {min_rating:g}")
    return np.flatnonzero(keep)


def _first_of_each_pair(raw: RawInteractions, idx: np.ndarray, counts: dict) -> np.ndarray:
    """Sorted positions among ``idx`` with each (user, item) pair once: the earliest, then the first in the file."""
    ts_all = raw.timestamps if raw.timestamps is not None else np.zeros(len(raw))
    u, i = raw.users[idx], raw.items[idx]
    order = np.lexsort((idx, ts_all[idx], i, u))
    first = np.ones(len(idx), dtype=bool)
    first[1:] = (u[order][1:] != u[order][:-1]) | (i[order][1:] != i[order][:-1])
    sel = np.sort(idx[order[first]])
    counts["duplicates"] = int(len(idx) - len(sel))
    return sel


def _kcore(raw: RawInteractions, sel: np.ndarray, source: Path, kcore: int, counts: dict) -> np.ndarray:
    """The positions among ``sel`` in the maximal ``kcore``-core of users and items (none left: an error)."""
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
            source,
            f"no interaction is left after the {kcore}-core filter ({before['users']:,} users, "
            f"{before['items']:,} items, {before['interactions']:,} interactions before it); lower --kcore",
        )
    return sel


def _reindexed(raw: RawInteractions, sel: np.ndarray) -> KeptInteractions:
    """The interactions at ``sel`` with contiguous ids, in the canonical order (user, time, item)."""
    users, user_names = _reindex(raw.users[sel], raw.user_ids)
    items, item_names = _reindex(raw.items[sel], raw.item_ids)
    ts = raw.timestamps[sel] if raw.timestamps is not None else None
    ratings = raw.ratings[sel] if raw.ratings is not None else None
    # Canonical order: by user, then time, then item id (the mmrec shuffle is seeded on top of it).
    order = np.lexsort((items, ts if ts is not None else np.zeros(len(sel)), users))
    return KeptInteractions(
        users=users[order],
        items=items[order],
        timestamps=ts[order] if ts is not None else None,
        ratings=ratings[order] if ratings is not None else None,
        user_names=user_names,
        item_names=item_names,
    )


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


def check_ids(source: Path, kept: KeptInteractions) -> None:
    """Original ids must fit in one field of the tab-separated files written (no tab or line break)."""
    _check_id("user", source, kept.user_names.tolist())
    _check_id("item", source, kept.item_names.tolist())


def _check_id(kind: str, path: Path, ids: Sequence[str]) -> None:
    for s in ids:
        if "\t" in s or "\n" in s or "\r" in s:
            raise DataError(path, f"{kind} id {s!r} contains a tab or line break")
