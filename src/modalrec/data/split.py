"""Re-splitting interactions into train/valid/test (x_label 0/1/2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modalrec.data.dataset import (
    FEATURE_SUFFIX,
    TEST,
    TRAIN,
    VALID,
    find_inter_file,
    read_feature_file,
    read_inter_file,
    read_item_titles,
    write_dataset,
)
from modalrec.errors import DataError

SPLIT_PROTOCOLS = ("mmrec", "loo", "temporal")  # per-interaction protocols (also offered by ``data prepare``)
COLD_ITEMS = "cold-items"
RESPLIT_PROTOCOLS = (*SPLIT_PROTOCOLS, COLD_ITEMS)
COLD_ORDERS = ("random", "time")


def _rank_within_user(users: np.ndarray, sort_key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each interaction in its user's order by ``sort_key`` and the user's count."""
    n = len(users)
    order = np.lexsort((np.arange(n), sort_key, users))
    counts = np.bincount(users, minlength=int(users.max()) + 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts[users[order]]
    return rank, counts[users]


def split_mmrec(users: np.ndarray, seed: int) -> np.ndarray:
    """MMRec's per-user random 8:1:1 rule (docs/protocol.md#split).

    Each user's interactions are shuffled; with n < 10 the last goes to test and the
    second-last to valid; otherwise vt = floor(0.2 n), valid = floor(vt / 2),
    test = vt − valid, taken from the end of the shuffled order.
    """
    rng = np.random.default_rng(seed)
    rank, n = _rank_within_user(users, rng.random(len(users)))
    vt = np.where(n < 10, np.minimum(n, 2), (0.2 * n).astype(np.int64))
    n_valid = np.where(n < 10, (n >= 2).astype(np.int64), vt // 2)
    n_test = vt - n_valid
    labels = np.full(len(users), TRAIN, dtype=np.int64)
    labels[rank >= n - n_test] = TEST
    labels[(rank >= n - n_test - n_valid) & (rank < n - n_test)] = VALID
    return labels


def split_loo(users: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Leave-one-out by time: each user's last interaction is test, the one before valid.

    Users with two interactions get only a test item; users with one keep it in train.
    Ties in time are broken by file order.
    """
    rank, n = _rank_within_user(users, timestamps)
    labels = np.full(len(users), TRAIN, dtype=np.int64)
    labels[(rank == n - 1) & (n >= 2)] = TEST
    labels[(rank == n - 2) & (n >= 3)] = VALID
    return labels


def split_temporal(timestamps: np.ndarray, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> np.ndarray:
    """Global time cut: the earliest 80 % of interactions train, the next 10 % valid, the rest test."""
    n = len(timestamps)
    order = np.argsort(timestamps, kind="stable")
    cut_train = int(round(ratios[0] * n))
    cut_valid = int(round((ratios[0] + ratios[1]) * n))
    labels = np.empty(n, dtype=np.int64)
    labels[order[:cut_train]] = TRAIN
    labels[order[cut_train:cut_valid]] = VALID
    labels[order[cut_valid:]] = TEST
    return labels


def split_labels(
    protocol: str, users: np.ndarray, timestamps: np.ndarray | None, seed: int = 999, source: object = "split"
) -> np.ndarray:
    """x_label for each interaction under ``protocol`` (mmrec | loo | temporal)."""
    if protocol == "mmrec":
        return split_mmrec(users, seed)
    if protocol not in SPLIT_PROTOCOLS:
        raise DataError(source, f"unknown split protocol {protocol!r} (choose from {', '.join(SPLIT_PROTOCOLS)})")
    if timestamps is None:
        raise DataError(source, f"protocol {protocol!r} needs a 'timestamp' column")
    if protocol == "loo":
        return split_loo(users, timestamps)
    return split_temporal(timestamps)


def split_cold_items(
    items: np.ndarray,
    n_items: int,
    ratio: float,
    seed: int,
    timestamps: np.ndarray | None = None,
    by: str = "random",
    source: object = "split",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Item cold-start split: (x_label per interaction, cold item ids, their split labels).

    round(ratio · n) of the n items that occur become cold: chosen uniformly at random
    (``by="random"``, seeded) or the newest ones by their first interaction (``by="time"``;
    ties by item id). Every interaction of a cold item leaves train; the cold items are
    divided by ITEM between valid and test — half each (test gets the odd one), at random,
    or by time the older half to valid and the newest to test — so valid and test cold items
    are disjoint. All other interactions stay in train.
    """
    if not 0.0 < ratio < 1.0:
        raise DataError(source, f"--cold-ratio {ratio} must be between 0 and 1 (exclusive)")
    if by not in COLD_ORDERS:
        raise DataError(source, f"--by {by!r}: choose random or time")
    present = np.unique(items)
    n_cold = int(round(ratio * present.size))
    if n_cold < 2:
        raise DataError(
            source, f"--cold-ratio {ratio} makes {n_cold} of {present.size} items cold; at least 2 are needed"
        )
    if n_cold >= present.size:
        raise DataError(source, f"--cold-ratio {ratio} leaves no item for training")
    if by == "time":
        if timestamps is None:
            raise DataError(source, "--by time needs a 'timestamp' column")
        first = np.full(n_items, np.inf)
        np.minimum.at(first, items, timestamps)
        order = present[np.lexsort((present, first[present]))]  # oldest first; ties by id
        cold = order[-n_cold:]  # the newest items, oldest of them first
    else:
        rng = np.random.default_rng(seed)
        cold = rng.permutation(present)[:n_cold]
    n_valid = n_cold // 2
    cold_labels = np.full(n_cold, TEST, dtype=np.int64)
    cold_labels[:n_valid] = VALID  # random: a random half; time: the older half
    label_of = np.full(n_items, TRAIN, dtype=np.int64)
    label_of[cold] = cold_labels
    order = np.argsort(cold)
    return label_of[items], cold[order].astype(np.int64), cold_labels[order]


def resplit_dataset(
    src: str | Path,
    protocol: str,
    seed: int,
    out: str | Path,
    cold_ratio: float = 0.2,
    by: str = "random",
) -> Path:
    """Write a copy of the dataset at ``src`` with new x_labels into ``out`` (which must not exist).

    Repeated (user, item) pairs are collapsed to their earliest occurrence first, so a
    repeat can never land in train and test at once. ``cold-items`` (see
    :func:`split_cold_items`, ``cold_ratio`` and ``by``) also writes ``cold_items.txt``.
    """
    src, out = Path(src), Path(out)
    if out.exists():
        raise DataError(out, "already exists; choose a new output directory (the input is never overwritten)")
    inter = find_inter_file(src)
    parsed = read_inter_file(inter)
    users, items = parsed["users"], parsed["items"]
    ts = parsed.get("timestamps")
    n = len(users)
    order = np.lexsort((np.arange(n), ts if ts is not None else np.zeros(n), items, users))
    first = np.ones(n, dtype=bool)
    first[1:] = (users[order][1:] != users[order][:-1]) | (items[order][1:] != items[order][:-1])
    keep = np.sort(order[first])
    users, items = users[keep], items[keep]
    ts = ts[keep] if ts is not None else None
    n_items = int(parsed["n_items"])
    cold = None
    if protocol == COLD_ITEMS:
        labels, cold_ids, cold_labels = split_cold_items(items, n_items, cold_ratio, seed, ts, by, source=inter)
        cold = (cold_ids, cold_labels)
    elif protocol not in RESPLIT_PROTOCOLS:
        raise DataError(inter, f"unknown split protocol {protocol!r} (choose from {', '.join(RESPLIT_PROTOCOLS)})")
    else:
        labels = split_labels(protocol, users, ts, seed, source=inter)
    features = {
        p.name[: -len(FEATURE_SUFFIX)]: read_feature_file(p, n_items) for p in sorted(src.glob(f"*{FEATURE_SUFFIX}"))
    }
    titles_path = src / "item_text.tsv"
    titles = read_item_titles(titles_path, n_items) if titles_path.exists() else None
    return write_dataset(out, inter.stem, users, items, labels, ts, None, features, titles, cold)
