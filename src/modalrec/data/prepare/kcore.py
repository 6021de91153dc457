"""Iterative k-core filtering of a bipartite user–item graph (vectorised)."""

from __future__ import annotations

import numpy as np


def kcore_mask(users: np.ndarray, items: np.ndarray, k_user: int, k_item: int | None = None) -> tuple[np.ndarray, int]:
    """Mask of the interactions in the maximal k-core, and the number of passes it took.

    The maximal k-core is the largest set of users and items in which every user has at
    least ``k_user`` and every item at least ``k_item`` interactions among themselves; it
    is unique, and repeatedly dropping every interaction of a user or item below its
    threshold (all of them at once, with ``np.bincount``) until nothing changes finds it.
    ``users``/``items`` are non-negative integer codes; pairs should be de-duplicated first
    (a repeated pair counts twice).
    """
    k_item = k_user if k_item is None else k_item
    n = len(users)
    keep = np.ones(n, dtype=bool)
    if n == 0 or (k_user <= 1 and k_item <= 1):
        return keep, 0
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    idx = np.arange(n)  # indices of the interactions still alive
    passes = 0
    while idx.size:
        passes += 1
        u, i = users[idx], items[idx]
        u_deg = np.bincount(u, minlength=n_users)
        i_deg = np.bincount(i, minlength=n_items)
        ok = (u_deg[u] >= k_user) & (i_deg[i] >= k_item)
        if ok.all():
            break
        keep[idx[~ok]] = False
        idx = idx[ok]
    return keep, passes
