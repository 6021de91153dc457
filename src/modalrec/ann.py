"""Approximate nearest neighbours (FAISS HNSW) for item–item kNN graphs past a size, and their recall.

The exact kNN graph of I items costs O(I²·d) (blocked GEMMs plus a top-k per row): 7,050 Baby items take
a second, 300,000 items with 4,096-d image features about 3.7·10¹⁴ multiply-adds — hours on two cores.
An HNSW index (Malkov & Yashunin, TPAMI 2018) built over the L2-normalised rows finds each row's top-k
by inner product (= cosine) in about O(I·log I·d). The graph is then approximate, so its neighbour
recall@k against the exact graph is measured on a seeded sample of rows and reported with it
(docs/scale.md#item-item-graphs-past-a-size).

FAISS is an optional dependency (the ``scale`` extra); the exact path needs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from modalrec.errors import ConfigError

# Items from which ``knn_method: auto`` builds item–item graphs approximately.
ANN_FROM_ITEMS = 200_000
KNN_METHODS = ("auto", "exact", "ann")
HNSW_NEIGHBOURS = 32  # M: links per node in the HNSW graph
HNSW_EF_CONSTRUCTION = 80
RECALL_SAMPLE = 1000  # rows whose exact neighbours are computed to measure the recall


def faiss_module() -> Any:
    """The ``faiss`` module, or a one-line error naming the extra that installs it."""
    try:
        import faiss
    except ImportError:
        raise ConfigError(
            "approximate kNN graphs need FAISS: pip install 'modalrec[scale]' (or faiss-cpu), "
            "or build them exactly with --set knn_method=exact"
        ) from None
    return faiss


def resolve_knn_method(method: str, n_items: int) -> str:
    """``exact`` or ``ann`` for a graph over ``n_items`` items (``auto``: ann from :data:`ANN_FROM_ITEMS`)."""
    if method not in KNN_METHODS:
        raise ConfigError(f"knn_method must be one of {', '.join(KNN_METHODS)}; got {method!r}")
    if method == "auto":
        return "ann" if n_items >= ANN_FROM_ITEMS else "exact"
    return method


def _unit_rows(features: np.ndarray | torch.Tensor, block: int = 65536) -> np.ndarray:
    """float32 copy of ``features`` with every row scaled to unit L2 norm (all-zero rows stay zero), in blocks."""
    x = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    out = np.empty(x.shape, dtype=np.float32)
    for lo in range(0, x.shape[0], block):
        part = np.asarray(x[lo : lo + block], dtype=np.float32)
        norms = np.linalg.norm(part, axis=1, keepdims=True)
        out[lo : lo + block] = part / np.maximum(norms, 1e-12)
    return out


@dataclass
class AnnGraphInfo:
    """How an approximate kNN graph was built and how close it is to the exact one."""

    items: int
    k: int
    recall: float  # mean |approximate top-k ∩ exact top-k| / k over the sampled rows
    sampled_rows: int
    ef_search: int

    def describe(self, what: str) -> str:
        return (
            f"{what}: approximate kNN graph over {self.items:,} items (FAISS HNSW, M {HNSW_NEIGHBOURS}, "
            f"efSearch {self.ef_search}); neighbour recall@{self.k} {self.recall:.3f} against exact on "
            f"{self.sampled_rows:,} sampled items"
        )


def ann_knn_topk(
    features: np.ndarray | torch.Tensor, k: int, ef_search: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, AnnGraphInfo]:
    """Approximate top-k cosine neighbours of every row (the row itself included, as in the exact
    :func:`~modalrec.graphs.knn_topk`): ``(indices, similarities, info)``, both (I, k).

    The index is built on one thread: HNSW insertion on several threads depends on their timing, and a
    graph must be the same for the same data. Queries run on torch's threads (each is independent).
    """
    faiss = faiss_module()
    x = _unit_rows(features)
    n, d = x.shape
    k = min(k, n)
    ef = int(ef_search or max(64, 4 * k))
    threads = torch.get_num_threads()
    index = faiss.IndexHNSWFlat(d, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    faiss.omp_set_num_threads(1)
    try:
        index.add(x)
    finally:
        faiss.omp_set_num_threads(threads)
    index.hnsw.efSearch = ef
    sims, idx = index.search(x, k)
    missing = idx < 0  # fewer than k reachable (tiny or degenerate sets): the row itself, similarity 0
    if missing.any():
        rows = np.broadcast_to(np.arange(n)[:, None], idx.shape)
        idx[missing], sims[missing] = rows[missing], 0.0
    recall, sampled = neighbour_recall(x, idx, k, seed=seed)
    info = AnnGraphInfo(items=n, k=k, recall=recall, sampled_rows=sampled, ef_search=ef)
    return torch.from_numpy(idx.astype(np.int64)), torch.from_numpy(sims.astype(np.float32)), info


def neighbour_recall(
    unit_rows: np.ndarray, approx: np.ndarray, k: int, sample: int = RECALL_SAMPLE, seed: int = 0
) -> tuple[float, int]:
    """(mean recall@k of ``approx`` against the exact top-k, rows sampled) on a seeded sample of rows.

    Exact neighbours of the sampled rows are one (sample × I) GEMM in row blocks; ties at the k-th
    similarity count as found whichever tied item was returned.
    """
    n = unit_rows.shape[0]
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    table = torch.from_numpy(unit_rows)
    found = 0.0
    for lo in range(0, rows.size, 256):
        part = rows[lo : lo + 256]
        sims = torch.from_numpy(unit_rows[part]) @ table.T
        kth = torch.topk(sims, k, dim=1).values[:, -1:]
        got = torch.gather(sims, 1, torch.from_numpy(approx[part].astype(np.int64)))
        found += float((got >= kth).sum())
    return found / (rows.size * k), int(rows.size)
