"""A run's item index: approximate candidates for a dot-product model, re-ranked exactly (``--ann``).

Ranking a user exactly scores every item: one GEMV over the item table, O(I·d) per request. For a model
that ranks by the dot product of a (users, items) pair of tables, ``modalrec index RUN`` builds a FAISS
index over the item table (:func:`modalrec.ann.build_mips_index`: an inner-product inverted file, ``--kind
ivf``, the default, or an HNSW graph over maximum inner product search turned into an L2 search by one extra
coordinate, ``--kind hnsw``) and writes it into the run directory beside ``model.pt``:

* ``item_index.faiss``: the index (ids are item ids; an ID-only model's unscorable cold items are left out);
* ``item_index.json``: what it holds and how it was built — items, dimension, the kind and its parameters,
  build seconds, the search effort queries use (HNSW efSearch or IVF nprobe) and the recall@10 it gave
  against exact ranking on a seeded sample
  of users (through :meth:`ItemIndex.retrieve`, exclusions and all), and the identity of what it was
  built from (``model.pt``'s size, mtime and SHA-256, the model's source hash, the dataset's fingerprint),
  so that a stale index is refused instead of silently serving another model's neighbours.

A request then retrieves ``max(100, 10·k)`` candidates plus the user's excluded items that the index
holds, scores them exactly with the model's tables and keeps the top k (:meth:`ItemIndex.retrieve`,
the ``retrieve`` of :func:`modalrec.recommendation.recommend_user`): the scores are exact, the list is
approximate only in the items the index missed. Both files are derived: rebuilding replaces them, and
nothing else in the run directory is written (docs/scale.md#ann-retrieval).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modalrec.ann import (
    HNSW_EF_CONSTRUCTION,
    HNSW_NEIGHBOURS,
    IVF_TRAIN_PER_LIST,
    RECALL_TARGET,
    RETRIEVAL_NEEDS,
    build_mips_index,
    effort_name,
    faiss_module,
    index_dim,
    index_from_bytes,
    index_kind,
    index_to_bytes,
    search_effort_range,
    search_mips,
    tune_search_effort,
)
from modalrec.errors import ModalrecError, RunError
from modalrec.io import atomic_write, write_json
from modalrec.models import Recommender
from modalrec.recommendation import excluded, training_items, unscorable_items
from modalrec.run_load import LoadedRun
from modalrec.run_model import model_record

INDEX_FILE = "item_index.faiss"
INDEX_INFO = "item_index.json"
INDEX_FORMAT = "modalrec-item-index"
INDEX_VERSION = 2  # 2: the kind (hnsw or ivf) and its search effort; version 1 indexes are rebuilt
DEFAULT_INDEX_KIND = "ivf"  # measured against hnsw in benchmarks/logs/ann_retrieval.json
ANN_AUTO_FROM_ITEMS = 100_000  # without --ann/--exact, a run's index is used from this many indexed items
RECALL_USERS = 1000  # users sampled (seeded) to measure the index's recall@10 against exact ranking
RECALL_K = 10
MIN_CANDIDATES = 100


def candidate_count(k: int, n_excluded: int) -> int:
    """Candidates a request retrieves: max(100, 10·k), plus the excluded items the index holds (they are
    dropped after retrieval, so a user's long history does not eat the list)."""
    return max(MIN_CANDIDATES, 10 * k) + n_excluded


def dot_product_tables(model: Recommender) -> tuple[torch.Tensor, torch.Tensor]:
    """The (users, items) float32 CPU tables of a model that ranks by their dot product; any other model is a
    one-line error (an index of item vectors cannot answer its ranking). The model must be in eval mode."""
    if type(model).full_scores is not Recommender.full_scores:
        raise ModalrecError(
            f"{model.name} ranks with its own full_scores, not a dot product of user and item tables; --ann needs a "
            "dot-product model (exact ranking is used without --ann)"
        )
    with torch.no_grad():
        reps = model.representations()
    if not (
        isinstance(reps, tuple)
        and len(reps) == 2
        and all(isinstance(t, torch.Tensor) and t.dim() == 2 for t in reps)
        and reps[0].shape[1] == reps[1].shape[1]
    ):
        raise ModalrecError(
            f"{model.name}'s representations are not a (users, items) pair of tables; --ann needs a dot-product "
            "model (exact ranking is used without --ann)"
        )
    return reps[0].detach().float().cpu().contiguous(), reps[1].detach().float().cpu().contiguous()


def _sha256(path: Path, block: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def model_file_identity(run_dir: Path) -> dict[str, Any]:
    """``model.pt``'s size, mtime (ns) and SHA-256: the weights an index was built from."""
    path = run_dir / "model.pt"
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256(path)}


def _model_file_changed(run_dir: Path, recorded: dict[str, Any]) -> bool:
    """Whether ``model.pt`` differs from ``recorded`` (same size and mtime: the same file, no hashing)."""
    st = (run_dir / "model.pt").stat()
    if st.st_size != recorded.get("size"):
        return True
    if st.st_mtime_ns == recorded.get("mtime_ns"):
        return False
    return _sha256(run_dir / "model.pt") != recorded.get("sha256")


@dataclass
class ItemIndex:
    """A run's item index in use: the FAISS index, the model's tables it re-ranks with, its ``item_index.json``."""

    index: Any
    users: torch.Tensor  # (n_users, d) float32
    items: torch.Tensor  # (n_items, d) float32
    indexed: np.ndarray  # (n_items,) bool: the items the index holds
    info: dict[str, Any]
    effort: int  # the search's breadth: HNSW efSearch or IVF nprobe (:func:`modalrec.ann.search_mips`)

    @property
    def n_indexed(self) -> int:
        return int(self.index.ntotal)

    def retrieve(
        self, user: int, k: int, exclude: torch.Tensor | None = None, effort: int | None = None
    ) -> tuple[list[int], list[float], dict[str, Any]]:
        """The k best (items, exact scores) of ``user`` among the index's candidates, ``exclude`` left out, and
        ``{"method": "ann", "candidates": N}`` (N: items retrieved before the exclusions)."""
        u = self.users[user]
        excl = exclude.cpu().numpy().astype(np.int64) if exclude is not None and len(exclude) else None
        n = candidate_count(k, int(self.indexed[excl].sum()) if excl is not None else 0)
        if n >= self.n_indexed:  # the candidates would be every indexed item: take them all, no search
            cand = np.flatnonzero(self.indexed)
        else:
            found = search_mips(self.index, u[None].numpy(), n, effort or self.effort)[0]
            cand = found[found >= 0]
        retrieved = int(cand.size)
        if excl is not None:
            cand = cand[~np.isin(cand, excl)]
        ids = torch.from_numpy(np.ascontiguousarray(cand, dtype=np.int64))
        scores = (u[None] @ self.items[ids].T)[0]  # exact: the same GEMM form as the model's full ranking
        vals, pos = torch.topk(scores, min(k, ids.numel()))
        return ids[pos].tolist(), vals.tolist(), {"method": "ann", "candidates": retrieved}

    def summary(self) -> dict[str, Any]:
        """What ``/info`` says of the retrieval: the index's kind, size, search effort and measured recall."""
        r = self.info["recall"]
        kind = index_kind(self.index)
        return {
            "method": "ann",
            "index": INDEX_FILE,
            "kind": kind,
            "items": self.n_indexed,
            ("nprobe" if kind == "ivf" else "ef_search"): self.effort,
            "candidates": f"max({MIN_CANDIDATES}, 10*k) + the user's excluded items, re-ranked exactly",
            "recall_at_10": r["recall"],
            "recall_users": r["users"],
        }


def _recall_users(run: LoadedRun, seed: int) -> np.ndarray:
    """Up to :data:`RECALL_USERS` users with training interactions, drawn with ``seed``, sorted."""
    eligible = np.flatnonzero(np.diff(run.dataset.train_matrix.indptr) > 0)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(eligible, size=min(RECALL_USERS, eligible.size), replace=False))


def _exact_tops(idx: ItemIndex, users: np.ndarray, exclusions: list[torch.Tensor | None], block: int = 32) -> list:
    """Per user: (exact top-k items' k-th score, how many rankable items it needs), exclusions applied."""
    out = []
    for lo in range(0, users.size, block):
        part = users[lo : lo + block]
        scores = idx.users[torch.from_numpy(part)] @ idx.items.T
        for row, user_excl in zip(scores, exclusions[lo : lo + block], strict=True):
            if user_excl is not None and len(user_excl):
                row[user_excl] = -torch.inf
            vals = torch.topk(row, min(RECALL_K, row.numel())).values
            need = int(torch.isfinite(vals).sum())
            out.append((float(vals[need - 1]) if need else None, need))
    return out


def _measure_recall(idx: ItemIndex, run: LoadedRun, users: np.ndarray) -> Callable[[int], float]:
    """A function of search effort → recall@10 of :meth:`ItemIndex.retrieve` against exact ranking on ``users``
    (seen items excluded, as served; ties at the k-th exact score count as found)."""
    unscorable = unscorable_items(run.model, run.dataset)
    exclusions = [excluded(torch.from_numpy(training_items(run.dataset, int(u))), unscorable) for u in users]
    tops = _exact_tops(idx, users, exclusions)

    def recall_at(ef: int) -> float:
        hits = needed = 0
        for user, user_excl, (kth, need) in zip(users.tolist(), exclusions, tops, strict=True):
            if not need:
                continue
            _, scores, _ = idx.retrieve(user, RECALL_K, user_excl, effort=ef)
            # the re-rank's scores are exact: an item is in the exact top-k when its score reaches the k-th
            hits += sum(s >= kth - 1e-5 * max(abs(kth), 1.0) for s in scores[:need])  # rounding of two GEMMs
            needed += need
        return hits / needed if needed else 1.0

    return recall_at


def indexable_items(run: LoadedRun, n_items: int) -> np.ndarray:
    """(n_items,) bool: the items an index of the run holds — all but the cold items an ID-only model cannot score."""
    indexed = np.ones(n_items, dtype=bool)
    unscorable = unscorable_items(run.model, run.dataset)
    if unscorable is not None:
        indexed[unscorable.numpy()] = False
    return indexed


def build_item_index(
    run: LoadedRun, effort: int | None = None, seed: int = 0, kind: str = DEFAULT_INDEX_KIND
) -> dict[str, Any]:
    """Build the item index of a dot-product run and write ``item_index.faiss`` and ``item_index.json`` into its
    directory (atomically; an older index is replaced). ``kind``: ``ivf`` or ``hnsw``. ``effort`` (IVF nprobe or
    HNSW efSearch) None: the smallest of 1, 2, 4 … cells (IVF) or 128, 256, … 4096 (HNSW) whose recall@10 on
    the sampled users reaches 0.95. Returns what ``item_index.json`` holds."""
    faiss = faiss_module(*RETRIEVAL_NEEDS)
    users, items = dot_product_tables(run.model)
    indexed = indexable_items(run, items.shape[0])
    ids = np.flatnonzero(indexed)
    if ids.size == 0:
        raise ModalrecError(f"{run.path}: {run.model.name} can score none of the items: nothing to index")
    start = time.perf_counter()
    index = build_mips_index(items[torch.from_numpy(ids)], ids, kind)
    build_seconds = time.perf_counter() - start
    idx = ItemIndex(index, users, items, indexed, {}, effort or 0)
    sample = _recall_users(run, seed)
    start = time.perf_counter()
    recall_at = _measure_recall(idx, run, sample)
    first, last = search_effort_range(index)
    name = effort_name(kind)
    if effort is None:
        chosen, tried = tune_search_effort(recall_at, start=first, limit=last)
        rule = f"auto: the smallest {name} of {first}*2^i (at most {last}) reaching recall@{RECALL_K} {RECALL_TARGET}"
    else:
        chosen, tried, rule = effort, {effort: recall_at(effort)}, "given (--effort)"
    if kind == "ivf":
        params = {"nlist": int(index.nlist), "train_rows_per_list": IVF_TRAIN_PER_LIST, "metric": "inner product"}
        search = "inner product: the nprobe cells whose centroids score highest, scanned exactly"
    else:
        params = {"M": HNSW_NEIGHBOURS, "ef_construction": HNSW_EF_CONSTRUCTION}
        search = "maximum inner product through L2: items [v, sqrt(M^2 - |v|^2)], queries [u, 0]"
    data = index_to_bytes(index)
    info = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "index_file": INDEX_FILE,
        "index_bytes": len(data),
        "index_sha256": hashlib.sha256(data).hexdigest(),
        "items": int(ids.size),
        "n_items": int(items.shape[0]),
        "left_out": int(items.shape[0] - ids.size),
        "dim": int(items.shape[1]),
        "kind": kind,
        "search": search,
        "max_norm": float(items[torch.from_numpy(ids)].norm(dim=1).max()),
        kind: params,
        "search_effort": {"name": name, "value": chosen, "rule": rule},
        "build_seconds": round(build_seconds, 3),
        "build_threads": 1,
        "recall": {
            "k": RECALL_K,
            "recall": round(tried[chosen], 4),
            "users": int(sample.size),
            "seed": seed,
            "by_effort": {str(ef): round(r, 4) for ef, r in tried.items()},
            "candidates": f"max({MIN_CANDIDATES}, 10*k) + the user's excluded items, re-ranked exactly",
            "seconds": round(time.perf_counter() - start, 3),
        },
        "model": model_record(type(run.model)),
        "model_file": model_file_identity(run.path),
        "dataset_fingerprint": run.dataset.fingerprint,
        "faiss_version": faiss.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write(run.path / INDEX_FILE, lambda fh: fh.write(data), mode="wb")  # first: the json describes it
    write_json(run.path / INDEX_INFO, info)
    return info


def _rebuild(run_dir: Path, problem: str) -> RunError:
    return RunError(f"{run_dir}: {problem}; rebuild it with `modalrec index {run_dir}` (or leave out --ann)")


def _stale_reason(run: LoadedRun, info: dict[str, Any], items: torch.Tensor) -> str | None:
    """Why ``info`` no longer describes this run's item table, or None."""
    if _model_file_changed(run.path, info.get("model_file") or {}):
        return "model.pt changed since it was built"
    if info.get("dataset_fingerprint") != run.dataset.fingerprint:
        return "the dataset changed since it was built"
    built, now = (info.get("model") or {}).get("model_source_hash"), model_record(type(run.model))["model_source_hash"]
    if built != now:
        return f"the code of {run.model.name} changed since it was built"
    if (info.get("n_items"), info.get("dim")) != tuple(items.shape):
        return (
            f"it holds {info.get('n_items')} × {info.get('dim')} items, the model {items.shape[0]} × {items.shape[1]}"
        )
    return None


def open_item_index(run: LoadedRun) -> ItemIndex:
    """The run's item index, checked against the run: a model that is not a dot product, a missing, stale
    (weights, data or model code changed) or damaged index is a one-line error saying what to do."""
    users, items = dot_product_tables(run.model)
    index_path, info_path = run.path / INDEX_FILE, run.path / INDEX_INFO
    if not (index_path.is_file() and info_path.is_file()):
        raise RunError(
            f"{run.path}: no item index ({INDEX_FILE}); build it with `modalrec index {run.path}` (or leave out --ann)"
        )
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict) or info.get("format") != INDEX_FORMAT or info.get("version") != INDEX_VERSION:
        raise _rebuild(run.path, f"{INDEX_INFO} is not a modalrec item index (version {INDEX_VERSION})")
    reason = _stale_reason(run, info, items)
    if reason is not None:
        raise _rebuild(run.path, f"the item index is stale ({reason})")
    data = index_path.read_bytes()
    if len(data) != info.get("index_bytes") or hashlib.sha256(data).hexdigest() != info.get("index_sha256"):
        raise _rebuild(run.path, f"{INDEX_FILE} does not match {INDEX_INFO} (damaged or replaced)")
    index = index_from_bytes(data)
    if index.ntotal != info.get("items") or index_dim(index) != items.shape[1] or index_kind(index) != info["kind"]:
        raise _rebuild(run.path, f"{INDEX_FILE} holds {index.ntotal} vectors of {index_dim(index)} dims, not the run's")
    indexed = indexable_items(run, items.shape[0])
    return ItemIndex(index, users, items, indexed, info, int(info["search_effort"]["value"]))


def index_warning(info: dict[str, Any]) -> str | None:
    """Why an index as built cannot serve well, or None: it misses the recall target, or an IVF index must scan
    half of its cells or more to reach it (the items have little cluster structure; exact ranking is then as
    fast)."""
    r, e = info["recall"], info["search_effort"]
    if r["recall"] < RECALL_TARGET:
        return (
            f"recall@{r['k']} {r['recall']:.3f} is below {RECALL_TARGET} even at {e['name']} {e['value']}: --ann lists "
            "will miss items that exact ranking finds"
        )
    if info["kind"] == "ivf" and e["value"] * 2 >= info["ivf"]["nlist"]:
        return (
            f"the index scans {e['value']:,} of its {info['ivf']['nlist']:,} cells per request to reach recall "
            f"{RECALL_TARGET}: this item table has little cluster structure, and exact ranking (without --ann) is "
            "about as fast"
        )
    return None


def choose_item_index(run: LoadedRun, ann: bool | None) -> tuple[ItemIndex | None, str | None]:
    """The item index requests go through, or None for exact ranking, and a note to show (or None).

    ``ann`` True: the run's index (a one-line error when it cannot be used); False: exact. None (the default):
    the index when the run has one built, for a dot-product model, holding at least
    :data:`ANN_AUTO_FROM_ITEMS` items, fresh, and without an :func:`index_warning`; exact otherwise — below that
    size a request's GEMV costs about a millisecond and exact needs no index. A stale or damaged index is then
    noted, not used.
    """
    if ann is not None:
        return (open_item_index(run) if ann else None), None
    info_path = run.path / INDEX_INFO
    if not info_path.is_file():
        return None, None
    try:
        info = json.loads(info_path.read_text())
        items = int(info["items"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"{info_path} cannot be read: ranking exactly (rebuild it with `modalrec index {run.path}`)"
    if items < ANN_AUTO_FROM_ITEMS:
        return None, None
    try:
        index = open_item_index(run)
    except ModalrecError as exc:
        return None, f"ranking exactly: {exc}"
    warning = index_warning(index.info)
    if warning is not None:
        return None, f"ranking exactly: {warning}"
    kind = index.info["kind"]
    return index, (
        f"ranking through the run's {kind} item index ({items:,} items, recall@{RECALL_K} "
        f"{index.info['recall']['recall']:.3f} when built); --exact scores every item"
    )
