"""Approximate nearest neighbours (FAISS HNSW): item–item kNN graphs past a size, retrieval by inner product.

The exact kNN graph of I items costs O(I²·d) (blocked GEMMs plus a top-k per row): 7,050 Baby items take
a second, 300,000 items with 4,096-d image features about 3.7·10¹⁴ multiply-adds — hours on two cores.
An HNSW index (Malkov & Yashunin, TPAMI 2018) built over the L2-normalised rows finds each row's top-k
by inner product (= cosine) in about O(I·log I·d). The graph is then approximate, so its neighbour
recall@k against the exact graph is measured on a seeded sample of rows and reported with it
(docs/scale.md#item-item-graphs-past-a-size).

Retrieval for dot-product models (``modalrec index``, ``recommend --ann``, ``serve --ann``;
docs/scale.md#ann-retrieval) uses an HNSW index over maximum inner product search turned into an L2 search
by one extra coordinate (:func:`mips_rows`), or an inner-product inverted file (IVF); the caller re-ranks
their candidates exactly.

FAISS is an optional dependency (the ``scale`` extra); the exact path needs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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


def faiss_module(
    what: str = "approximate kNN graphs", instead: str = "build them exactly with --set knn_method=exact"
) -> Any:
    """The ``faiss`` module, or a one-line error naming the extra that installs it: ``what`` needs FAISS,
    or do ``instead``."""
    try:
        import faiss
    except ImportError:
        raise ConfigError(f"{what} need FAISS: pip install 'modalrec[scale]' (or faiss-cpu), or {instead}") from None
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


def builds_approximately(graphs: Any) -> bool:
    """Whether a graph store builds item–item graphs approximately: its ``knn_method`` resolved to ``ann``
    (:func:`resolve_knn_method`). A store without the attribute (a user's own) builds exactly."""
    return str(getattr(graphs, "knn_method", "exact")) == "ann"


@dataclass
class AnnGraphInfo:
    """How an approximate kNN graph was built and how close it is to the exact one."""

    items: int
    k: int
    recall: float  # mean |approximate top-k ∩ exact top-k| / k over the sampled rows
    sampled_rows: int
    ef_search: int
    exact_rows: int | None = None  # rows computed exactly after the approximate pass (DA-MRS's denoised graphs)

    def describe(self, what: str) -> str:
        exact = "" if self.exact_rows is None else f"; {self.exact_rows:,} items short of candidates computed exactly"
        return (
            f"{what}: approximate kNN graph over {self.items:,} items (FAISS HNSW, M {HNSW_NEIGHBOURS}, "
            f"efSearch {self.ef_search}{exact}); neighbour recall@{self.k} {self.recall:.3f} against exact on "
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
    return ann_knn_topk_many([features], k, ef_search=ef_search, seed=seed)[0]


def _hnsw_index(faiss: Any, unit_rows: np.ndarray) -> Any:
    """An HNSW inner-product index over ``unit_rows``, built on the calling thread alone.

    OpenMP's thread count is a per-thread setting, so limiting this thread's insertion to one OpenMP
    thread leaves any other thread's setting as it was; and the same rows give the same index.
    """
    index = faiss.IndexHNSWFlat(unit_rows.shape[1], HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    threads = torch.get_num_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.add(unit_rows)
    finally:
        faiss.omp_set_num_threads(threads)
    return index


def ann_knn_topk_many(
    tables: list[np.ndarray | torch.Tensor], k: int, ef_search: int | None = None, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor, AnnGraphInfo]]:
    """:func:`ann_knn_topk` of several tables (e.g. one per modality), their indices built concurrently.

    Each index is built on one thread (deterministic, see :func:`ann_knn_topk`), so one build leaves the
    other cores idle; up to ``torch.get_num_threads()`` builds run side by side instead (FAISS releases the
    GIL), which halves MARIO's rebuild of its two learned graphs on two cores. The searches and recall
    checks then run one table at a time on every thread. The result is the same as building them one by one.
    """
    faiss = faiss_module()
    units = [_unit_rows(t) for t in tables]
    workers = max(1, min(len(units), torch.get_num_threads()))
    if workers == 1:
        indices = [_hnsw_index(faiss, x) for x in units]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            indices = list(pool.map(lambda x: _hnsw_index(faiss, x), units))
    out = []
    for x, index in zip(units, indices, strict=True):
        n = x.shape[0]
        kk = min(k, n)
        ef = int(ef_search or max(64, 4 * kk))
        index.hnsw.efSearch = ef
        sims, idx = index.search(x, kk)
        missing = idx < 0  # fewer than k reachable (tiny or degenerate sets): the row itself, similarity 0
        if missing.any():
            rows = np.broadcast_to(np.arange(n)[:, None], idx.shape)
            idx[missing], sims[missing] = rows[missing], 0.0
        recall, sampled = neighbour_recall(x, idx, kk, seed=seed)
        info = AnnGraphInfo(items=n, k=kk, recall=recall, sampled_rows=sampled, ef_search=ef)
        out.append((torch.from_numpy(idx.astype(np.int64)), torch.from_numpy(sims.astype(np.float32)), info))
    return out


class LearnedGraphNeighbours:
    """Approximate top-k cosine neighbours of a model's learned item tables, rebuilt as it trains.

    One HNSW index per table, built side by side (:func:`ann_knn_topk_many`, about O(I·log I·d) instead of the
    exact O(I²·d)); the neighbour recall against exact is measured at every rebuild and kept, last and lowest,
    in the run's graph notes (one line per table, replaced at each rebuild). MARIO's and LATTICE's learned
    graphs use it under the store's ``knn_method: ann`` (``auto``: from :data:`ANN_FROM_ITEMS` items).
    """

    def __init__(self, k: int, names: list[str], notes: list[str], model: str):
        self.k, self.names, self.notes, self.model = int(k), list(names), notes, model
        self.recalls: dict[str, list[float]] = {n: [] for n in self.names}

    @classmethod
    def for_store(cls, graphs: Any, k: int, names: list[str], model: str) -> LearnedGraphNeighbours | None:
        """One for a model's learned graphs when the graph store builds approximately (``knn_method`` ann),
        writing into the store's notes; None when it builds exactly."""
        if not builds_approximately(graphs):
            return None
        return cls(k, names, getattr(graphs, "notes", []), model)

    def __call__(self, tables: list[torch.Tensor], first: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(indices, similarities), both (I, k), of the rows of the tables named ``names[first]``,
        ``names[first + 1]``, …, on the tables' device; no gradient."""
        found = []
        built = ann_knn_topk_many([t.detach() for t in tables], self.k)
        for name, (idx, sims, info) in zip(self.names[first:], built, strict=False):
            history = self.recalls[name]
            history.append(info.recall)
            head = f"{self.model} learned graph ({name})"
            line = (
                f"{head}: approximate (FAISS HNSW, efSearch {info.ef_search}) over {info.items:,} items; neighbour "
                f"recall@{info.k} against exact on {info.sampled_rows:,} sampled items: last {history[-1]:.3f}, "
                f"lowest {min(history):.3f} over {len(history)} rebuild(s)"
            )
            self.notes[:] = [n for n in self.notes if not n.startswith(head)] + [line]
            found.append((idx.to(tables[0].device), sims.to(tables[0].device)))
        return found


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


# ---------------------------------------------------------------- retrieval by inner product (MIPS)
# efSearch of retrieval queries: by default the smallest of 128, 256, … 4096 whose measured recall@10 reaches 0.95.
# It depends on the table: on clustered 100k × 64 tables (100 centres + N(0, 0.5²) noise), 128 gave recall@10 0.98
# with the items' norms unscaled but 0.59 with them scaled by e^N(0, 0.25) (1024 then gave 0.98): the MIPS transform
# crowds the long items together.
EF_SEARCH_START, EF_SEARCH_LIMIT = 128, 4096
RECALL_TARGET = 0.95
RETRIEVAL_NEEDS = ("item indexes for --ann (modalrec index)", "rank exactly without --ann")  # faiss_module


def _float_rows(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """``x`` as a C-contiguous float32 NumPy matrix (no copy when it already is one)."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.ascontiguousarray(a, dtype=np.float32)


def mips_rows(items: np.ndarray | torch.Tensor) -> tuple[np.ndarray, float]:
    """Item rows for an L2 index that ranks by inner product: ``([v, √(M² − ‖v‖²)], M)``, (I, d + 1) float32.

    M is the largest item norm, so every transformed row has norm M, and for a query ``[u, 0]``
    ‖q − x‖² = ‖u‖² + M² − 2 u·v: the nearest rows by L2 are the items of largest u·v, for every
    user (Bachrach et al., RecSys 2014). An L2 graph index then serves maximum inner product search.
    """
    x = _float_rows(items)
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    top = float(sq.max()) if sq.size else 0.0
    extra = np.sqrt(np.maximum(top - sq, 0.0)).astype(np.float32)
    return np.hstack([x, extra[:, None]]), float(np.sqrt(top))


def mips_queries(queries: np.ndarray | torch.Tensor) -> np.ndarray:
    """Query rows ``[u, 0]`` (Q, d + 1) float32 for an index of :func:`mips_rows`."""
    q = _float_rows(queries)
    return np.hstack([q, np.zeros((q.shape[0], 1), dtype=np.float32)])


# Index kinds for retrieval: ``hnsw`` (a graph over the MIPS→L2 rows, searched with efSearch) or ``ivf`` (an
# inverted file: k-means cells of the item rows, ranked by the inner product of the query with each cell's
# centroid; the ``nprobe`` best cells are scanned exactly, by inner product). Measured on clustered and
# near-isotropic 100k × 64 tables (docs/scale.md#ann-retrieval), the MIPS→L2 rows crowd long items together
# for both kinds, while an inner-product IVF over the raw rows reached the same recall scanning far fewer rows.
INDEX_KINDS = ("hnsw", "ivf")
IVF_TRAIN_PER_LIST = 64  # k-means training rows per cell (seeded sample)
NPROBE_START = 1


def ivf_lists(n_items: int) -> int:
    """Cells of an IVF index over ``n_items`` rows: about √I (a query then ranks √I centroids and scans about
    √I·nprobe rows), and at least 39 rows per cell, FAISS's floor for a stable k-means."""
    return int(max(1, min(round(np.sqrt(n_items)), n_items // 39)))


def build_mips_index(items: np.ndarray | torch.Tensor, ids: np.ndarray | None = None, kind: str = "hnsw") -> Any:
    """A FAISS index whose search answers the ids ``ids`` (default: the row numbers) of the items of (about)
    largest inner product with a query.

    ``kind`` ``hnsw``: HNSW (L2, M 32, efConstruction 80) over :func:`mips_rows`; ``ivf``: an inner-product
    inverted file over the rows themselves, :func:`ivf_lists` cells from k-means (seed 0) on a seeded sample of
    :data:`IVF_TRAIN_PER_LIST` rows per cell. Built on one thread: HNSW insertion on several threads depends on
    their timing, and the same weights must give the same index (and the same answers). The thread count is
    restored afterwards.
    """
    if kind not in INDEX_KINDS:
        raise ConfigError(f"index kind {kind!r}: choose from {', '.join(INDEX_KINDS)}")
    faiss = faiss_module(*RETRIEVAL_NEEDS)
    rows = _float_rows(items) if kind == "ivf" else mips_rows(items)[0]
    ids = np.arange(rows.shape[0], dtype=np.int64) if ids is None else np.ascontiguousarray(ids, dtype=np.int64)
    if ids.shape != (rows.shape[0],):
        raise ValueError(f"ids: {ids.shape[0]} for {rows.shape[0]} items")
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        if kind == "ivf":
            nlist = ivf_lists(rows.shape[0])
            index = faiss.index_factory(rows.shape[1], f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = 0
            take = min(rows.shape[0], IVF_TRAIN_PER_LIST * nlist)
            sample = np.sort(np.random.default_rng(0).choice(rows.shape[0], size=take, replace=False))
            index.train(rows[sample])
        else:
            hnsw = faiss.IndexHNSWFlat(rows.shape[1], HNSW_NEIGHBOURS)  # METRIC_L2
            hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            index = faiss.IndexIDMap(hnsw)
        index.add_with_ids(rows, ids)
    finally:
        faiss.omp_set_num_threads(threads)
    return index


def index_kind(index: Any) -> str:
    """``hnsw`` or ``ivf``: which kind :func:`build_mips_index` built (read from the index itself)."""
    return "ivf" if hasattr(index, "nprobe") else "hnsw"


def effort_name(kind: str) -> str:
    """What an index kind's search effort is called: ``nprobe`` (IVF) or ``efSearch`` (HNSW)."""
    return "nprobe" if kind == "ivf" else "efSearch"


def index_dim(index: Any) -> int:
    """The dimension of the model's item rows an index of :func:`build_mips_index` was built over."""
    return int(index.d) if index_kind(index) == "ivf" else int(index.d) - 1


def search_mips(index: Any, queries: np.ndarray | torch.Tensor, n: int, effort: int = EF_SEARCH_START) -> np.ndarray:
    """Ids of the ``n`` items of (about) largest inner product with each query, best first, (Q, n) int64; -1
    fills a row when fewer are found. ``effort`` is the search's breadth: HNSW explores max(``effort``, n)
    candidates (efSearch); IVF scans the rows of the ``effort`` best cells (nprobe)."""
    faiss = faiss_module(*RETRIEVAL_NEEDS)
    if index_kind(index) == "ivf":
        params = faiss.SearchParametersIVF(nprobe=int(min(max(effort, 1), index.nlist)))
        _, found = index.search(_float_rows(queries), int(n), params=params)
    else:
        params = faiss.SearchParametersHNSW(efSearch=int(max(effort, n)))
        _, found = index.search(mips_queries(queries), int(n), params=params)
    return found


def index_to_bytes(index: Any) -> bytes:
    """The index as bytes (what ``item_index.faiss`` holds)."""
    return faiss_module(*RETRIEVAL_NEEDS).serialize_index(index).tobytes()


def index_from_bytes(data: bytes) -> Any:
    """An index back from :func:`index_to_bytes`."""
    return faiss_module(*RETRIEVAL_NEEDS).deserialize_index(np.frombuffer(data, dtype=np.uint8))


def exact_kth_scores(
    queries: np.ndarray | torch.Tensor, items: np.ndarray | torch.Tensor, k: int, block: int = 64
) -> np.ndarray:
    """The k-th largest inner product of each query with the items, (Q,) float32: the exact top-k's bar,
    computed in blocks of ``block`` queries (a block's scores are block × I floats)."""
    q, table = torch.from_numpy(_float_rows(queries)), torch.from_numpy(_float_rows(items))
    out = np.empty(q.shape[0], dtype=np.float32)
    for lo in range(0, q.shape[0], block):
        scores = q[lo : lo + block] @ table.T
        out[lo : lo + block] = torch.topk(scores, min(k, table.shape[0]), dim=1).values[:, -1].numpy()
    return out


def mips_recall(
    queries: np.ndarray | torch.Tensor,
    items: np.ndarray | torch.Tensor,
    found: np.ndarray,
    k: int,
    kth: np.ndarray | None = None,
) -> float:
    """Mean recall@k of ``found`` (Q, ≥ k ids, rows of ``items``; -1 = none) against the exact top-k by inner
    product. An item whose score reaches the exact k-th score counts as found (ties: whichever tied item was
    returned). ``kth``: :func:`exact_kth_scores`, when the caller measures several ``found`` on the same queries."""
    q, table = torch.from_numpy(_float_rows(queries)), torch.from_numpy(_float_rows(items))
    bar = torch.from_numpy(exact_kth_scores(q, table, k) if kth is None else np.asarray(kth, dtype=np.float32))
    ids = torch.from_numpy(np.asarray(found)[:, :k].astype(np.int64))
    got = torch.einsum("qd,qkd->qk", q, table[ids.clamp(min=0)])
    # the GEMM of the bar and this product may round differently: a relative tolerance of 1e-5
    hit = (got >= (bar - 1e-5 * bar.abs().clamp(min=1.0))[:, None]) & (ids >= 0)
    return float(hit.sum()) / (q.shape[0] * k)


def search_effort_range(index: Any) -> tuple[int, int]:
    """(first, last) search effort :func:`tune_search_effort` tries for ``index``: efSearch 128 … 4096 (HNSW) or
    nprobe 1 … every cell (IVF, where every cell is an exact scan)."""
    if index_kind(index) == "ivf":
        return NPROBE_START, int(index.nlist)
    return EF_SEARCH_START, EF_SEARCH_LIMIT


def tune_search_effort(
    recall_at: Callable[[int], float],
    target: float = RECALL_TARGET,
    start: int = EF_SEARCH_START,
    limit: int = EF_SEARCH_LIMIT,
) -> tuple[int, dict[int, float]]:
    """The smallest search effort (efSearch or nprobe) of ``start``·2^i (at most ``limit``) whose
    ``recall_at(effort)`` reaches ``target`` (``limit`` when none does), and every recall measured on the way
    ({effort: recall}).

    A larger effort explores more of the index per query: recall rises and so does the query time, so the
    first value that is good enough is the one to serve with.
    """
    tried: dict[int, float] = {}
    ef = start
    while True:
        tried[ef] = recall_at(ef)
        if tried[ef] >= target or ef >= limit:
            return ef, tried
        ef = min(2 * ef, limit)
