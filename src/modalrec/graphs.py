"""Graphs every model shares: user–item adjacencies, R̂, kNN item graphs and their cache.

The kNN builders are written in :mod:`modalrec.knn_graphs` and re-exported here.

All graphs are sparse. Data-only graphs are cached on disk under a cache directory,
keyed by a content hash of the data they depend on and by their parameters, so a
second run on the same data skips the build (and editing the data invalidates it).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch

from modalrec.ann import ann_knn_topk, resolve_knn_method
from modalrec.io import atomic_write
from modalrec.knn_graphs import (
    APPROXIMATE_DENOISED_FORM,
    approximate_cross_modal_denoised_knn,
    build_knn_graph,
    co_interaction_graph,
    cross_modal_denoised_knn,
    knn_block_rows,
    knn_graph_coo,
    knn_topk,
    learned_knn_coo,
    normalize_sparse_rows,
)

# The kNN builders live in knn_graphs; models import them from here, with the rest of the graphs.
__all__ = [
    "APPROXIMATE_DENOISED_FORM",
    "DEGREE_EPS",
    "EpochEdgeDropout",
    "GraphStore",
    "SparseOperator",
    "bipartite_adjacency",
    "bipartite_edge_list",
    "approximate_cross_modal_denoised_knn",
    "build_knn_graph",
    "co_interaction_graph",
    "cross_modal_denoised_knn",
    "default_cache_dir",
    "degree_sensitive_edge_probs",
    "knn_block_rows",
    "knn_graph_coo",
    "knn_topk",
    "learned_knn_coo",
    "left_norm_bipartite_operators",
    "norm_interaction_matrix",
    "normalize_sparse_rows",
    "pruned_sym_norm_adjacency",
    "random_edge_dropout",
    "rw_norm_adjacency_self_loops",
    "sample_edges_without_replacement",
    "sym_norm_adjacency",
]

if TYPE_CHECKING:
    from collections.abc import Callable

    from modalrec.data.dataset import Dataset

DEGREE_EPS = 1e-7


# ====================================================================== user–item graphs
def bipartite_adjacency(interactions: sp.spmatrix) -> sp.csr_matrix:
    """A = [[0, R], [Rᵀ, 0]] of size (U+I)×(U+I); users first, item j at node U + j."""
    r = sp.csr_matrix(interactions, dtype=np.float32)
    a = sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)
    a.sort_indices()
    return a


def _inv_power(deg: np.ndarray, power: float) -> np.ndarray:
    out = np.zeros_like(deg, dtype=np.float64)
    pos = deg > 0
    out[pos] = np.power(deg[pos], power)
    return out


def sym_norm_adjacency(interactions: sp.spmatrix, eps: float = DEGREE_EPS) -> sp.csr_matrix:
    """Â = D^{-1/2} A D^{-1/2} with D = deg + eps (docs/building-blocks.md#normalised-adjacencies); no self-loops.

    Nodes without training edges get all-zero rows.
    """
    a = bipartite_adjacency(interactions)
    deg = np.asarray(a.sum(axis=1)).ravel() + eps
    d = sp.diags(np.power(deg, -0.5))
    out = (d @ a @ d).astype(np.float32).tocsr()
    out.sort_indices()
    return out


def rw_norm_adjacency_self_loops(interactions: sp.spmatrix) -> sp.csr_matrix:
    """(D + I)^{-1} (A + I): self-loops, then row normalisation (``A_rw+I``; NGCF, LATTICE)."""
    a = bipartite_adjacency(interactions) + sp.identity(sum(interactions.shape), dtype=np.float32, format="csr")
    deg = np.asarray(a.sum(axis=1)).ravel()
    out = (sp.diags(_inv_power(deg, -1.0)) @ a).astype(np.float32).tocsr()
    out.sort_indices()
    return out


def norm_interaction_matrix(interactions: sp.spmatrix, eps: float = DEGREE_EPS) -> sp.csr_matrix:
    """R̂ = D_u^{-1/2} R D_i^{-1/2} (U × I), degrees from R."""
    r = sp.csr_matrix(interactions, dtype=np.float32)
    du = np.asarray(r.sum(axis=1)).ravel() + eps
    di = np.asarray(r.sum(axis=0)).ravel() + eps
    out = (sp.diags(np.power(du, -0.5)) @ r @ sp.diags(np.power(di, -0.5))).astype(np.float32).tocsr()
    out.sort_indices()
    return out


# ====================================================================== torch operator
class _SparseMatmul(torch.autograd.Function):
    """y = A x with the backward pass grad_x = Aᵀ grad_y using a precomputed Aᵀ (no transpose per step)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, a_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.a_t = a_t
        return a @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return None, None, ctx.a_t @ grad


class SparseOperator:
    """A fixed sparse matrix on a device, usable as ``op @ dense`` with autograd on ``dense``.

    Holds CSR copies of A and Aᵀ (one object when A is symmetric), so both directions run
    as CSR sparse–dense products, the fastest sparse kernel on CPU and GPU.
    """

    def __init__(self, matrix: sp.spmatrix, device: torch.device | str = "cpu", symmetric: bool | None = None) -> None:
        m = sp.csr_matrix(matrix, dtype=np.float32)
        m.sort_indices()
        self.shape = m.shape
        self.nnz = m.nnz
        self.a = _csr_tensor(m, device)
        if symmetric is None:
            symmetric = m.shape[0] == m.shape[1] and (m.nnz == 0 or abs(m - m.T).max() < 1e-7)
        self.a_t = self.a if symmetric else _csr_tensor(m.T.tocsr(), device)
        self._scipy = m

    @classmethod
    def from_coo(
        cls, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]
    ) -> SparseOperator:
        """Build from COO triples already on a device (duplicates summed); stays on that device."""
        op = cls.__new__(cls)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
            coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape, check_invariants=False).coalesce()
            op.a = coo.to_sparse_csr()
            op.a_t = coo.t().coalesce().to_sparse_csr()
        op.shape = shape
        op.nnz = coo.values().numel()
        op._scipy = None
        return op

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            return _SparseMatmul.apply(self.a, self.a_t, x)
        return self.a @ x

    def t(self) -> SparseOperator:
        op = SparseOperator.__new__(SparseOperator)
        op.shape = (self.shape[1], self.shape[0])
        op.nnz, op.a, op.a_t, op._scipy = self.nnz, self.a_t, self.a, None
        return op

    def state(self) -> dict:
        """The operator's tensors (on the CPU), for :meth:`from_state` — e.g. in a resume state."""
        return {
            "shape": tuple(self.shape),
            "nnz": self.nnz,
            "a": self.a.cpu(),
            "a_t": None if self.a_t is self.a else self.a_t.cpu(),
        }

    @classmethod
    def from_state(cls, state: dict, device: torch.device | str = "cpu") -> SparseOperator:
        """Inverse of :meth:`state`, on ``device`` (bit-identical values)."""
        op = cls.__new__(cls)
        op.shape, op.nnz, op._scipy = tuple(state["shape"]), state["nnz"], None
        op.a = state["a"].to(device)
        op.a_t = op.a if state["a_t"] is None else state["a_t"].to(device)
        return op

    def to_scipy(self) -> sp.csr_matrix:
        if self._scipy is None:
            a = self.a.cpu()
            self._scipy = sp.csr_matrix(
                (a.values().numpy(), a.col_indices().numpy(), a.crow_indices().numpy()), shape=self.shape
            )
        return self._scipy

    def __repr__(self) -> str:
        return f"SparseOperator(shape={self.shape}, nnz={self.nnz}, device={self.a.device})"


def _csr_tensor(m: sp.csr_matrix, device: torch.device | str) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr.astype(np.int64)),
            torch.from_numpy(m.indices.astype(np.int64)),
            torch.from_numpy(m.data.astype(np.float32)),
            size=m.shape,
            check_invariants=False,
        ).to(device)


# ====================================================================== edge dropout / pruning
def degree_sensitive_edge_probs(interactions: sp.spmatrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training edges (users, items) and π_ui = 1/sqrt(deg_u · deg_i) on the full graph.

    See docs/building-blocks.md#degree-sensitive-edge-pruning.
    """
    r = sp.coo_matrix(interactions)
    du = np.asarray(interactions.sum(axis=1)).ravel()
    di = np.asarray(interactions.sum(axis=0)).ravel()
    probs = 1.0 / np.sqrt(du[r.row] * di[r.col])
    return r.row.astype(np.int64), r.col.astype(np.int64), probs


def sample_edges_without_replacement(
    probs: np.ndarray | torch.Tensor, n_keep: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Indices of ``n_keep`` edges drawn without replacement with probability ∝ ``probs``.

    Same distribution as ``torch.multinomial(probs, n_keep, replacement=False)`` (successive
    draws ∝ the remaining weights), by the exponential-race identity: the ``n_keep`` smallest
    of E_e / π_e with E_e ~ Exp(1) — one pass and a top-k instead of sequential draws.
    """
    p = torch.as_tensor(probs, dtype=torch.float64)
    keys = torch.empty_like(p).exponential_(generator=generator) / p
    return torch.topk(keys, n_keep, largest=False, sorted=False).indices.sort().values


def pruned_sym_norm_adjacency(
    interactions: sp.spmatrix,
    drop_ratio: float,
    generator: torch.Generator | None = None,
    edge_probs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> sp.csr_matrix:
    """Degree-sensitive edge pruning (docs/building-blocks.md#degree-sensitive-edge-pruning; LayerGCN, FREEDOM).

    Keep m = floor(|E|·(1 − ρ)) training edges sampled without replacement ∝ π_ui, then build
    Â = D^{-1/2} A D^{-1/2} from the kept edges with degrees recomputed on the kept graph.
    ``edge_probs`` is :func:`degree_sensitive_edge_probs` of ``interactions`` (pass it to skip
    recomputing it every epoch).
    """
    users, items, probs = edge_probs if edge_probs is not None else degree_sensitive_edge_probs(interactions)
    n_keep = int(np.floor(len(users) * (1.0 - drop_ratio)))
    keep = sample_edges_without_replacement(probs, n_keep, generator).numpy()
    kept = sp.csr_matrix((np.ones(n_keep, dtype=np.float32), (users[keep], items[keep])), shape=interactions.shape)
    return sym_norm_adjacency(kept)


def random_edge_dropout(
    interactions: sp.spmatrix, drop_ratio: float, generator: torch.Generator | None = None
) -> sp.csr_matrix:
    """The training interactions with a uniformly random ``drop_ratio`` share of edges removed."""
    r = sp.coo_matrix(interactions)
    n_keep = int(np.floor(r.nnz * (1.0 - drop_ratio)))
    keep = torch.randperm(r.nnz, generator=generator)[:n_keep].sort().values.numpy()
    return sp.csr_matrix((r.data[keep], (r.row[keep], r.col[keep])), shape=r.shape)


class EpochEdgeDropout:
    """The training graph Â of one epoch with a share ρ of its edges dropped.

    See docs/building-blocks.md#degree-sensitive-edge-pruning.

    ``schedule="degree"``: degree-sensitive pruning every epoch (FREEDOM);
    ``"alternate"``: degree-sensitive on epochs 0, 2, 4, … and uniform on 1, 3, 5, …
    (LayerGCN). With ρ = 0 every epoch gets ``full_adj``. The sampling probabilities
    π_ui are computed once.
    """

    def __init__(
        self,
        interactions: sp.spmatrix,
        drop_ratio: float,
        full_adj: SparseOperator,
        device: torch.device | str,
        schedule: str = "degree",
    ) -> None:
        if schedule not in ("degree", "alternate"):
            raise ValueError(f"unknown edge-dropout schedule {schedule!r}")
        self.interactions = interactions
        self.drop_ratio = float(drop_ratio)
        self.full_adj = full_adj
        self.device = device
        self.schedule = schedule
        self.edge_probs = degree_sensitive_edge_probs(interactions) if self.drop_ratio > 0 else None

    def adjacency(self, epoch: int) -> SparseOperator:
        if self.drop_ratio <= 0:
            return self.full_adj
        if self.schedule == "alternate" and epoch % 2 == 1:
            kept = sym_norm_adjacency(random_edge_dropout(self.interactions, self.drop_ratio))
        else:
            kept = pruned_sym_norm_adjacency(self.interactions, self.drop_ratio, edge_probs=self.edge_probs)
        return SparseOperator(kept, self.device, symmetric=True)


def default_cache_dir() -> Path:
    env = os.environ.get("MODALREC_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "modalrec" / "graphs"


class GraphStore:
    """Builds, caches and hands out the graphs of one dataset.

    Models ask it for graphs instead of building them: ``norm_adj()`` (Â),
    ``rw_adj()`` (A_rw+I), ``norm_interactions()`` (R̂), ``knn(modality, ...)``. Each is
    built once per process and, unless ``cache_dir`` is ``False``, stored on disk as
    ``<kind>-<hash>.npz`` where the hash covers the data and the parameters.
    """

    def __init__(
        self,
        dataset: Dataset,
        cache_dir: str | Path | bool | None = None,
        device: str | torch.device = "cpu",
        knn_method: str = "auto",
    ):
        self.dataset = dataset
        self.device = torch.device(device)
        self.knn_method = resolve_knn_method(knn_method, dataset.n_items)  # exact | ann for the raw-feature graphs
        self.notes: list[str] = []  # what a run should log about its graphs (an approximate graph's recall)
        if cache_dir is False:
            self.cache_dir: Path | None = None
        else:
            self.cache_dir = default_cache_dir() if cache_dir in (None, True) else Path(cache_dir)  # type: ignore[arg-type]
        self._memo: dict[str, sp.csr_matrix] = {}
        self._ops: dict[tuple[str, bool], SparseOperator] = {}
        self.cache_hits = 0
        self.builds = 0

    # -- generic cached build
    def cached(self, kind: str, key_parts: tuple, build: Callable[[], sp.csr_matrix]) -> sp.csr_matrix:
        """The matrix ``build()`` makes, memoised and cached on disk under (kind, key_parts)."""
        key = hashlib.sha256(repr((kind,) + key_parts).encode()).hexdigest()[:24]
        name = f"{kind}-{key}"
        if name in self._memo:
            return self._memo[name]
        path = self.cache_dir / f"{name}.npz" if self.cache_dir is not None else None
        m = None
        if path is not None and path.exists():
            try:
                m = sp.load_npz(path).tocsr()
                self.cache_hits += 1
            except Exception:  # a corrupt cache entry is rebuilt, never trusted
                m = None
        if m is None:
            m = build()
            self.builds += 1
            if path is not None:
                atomic_write(path, lambda fh: sp.save_npz(fh, m), mode="wb")
        self._memo[name] = m
        return m

    def _op(self, name: str, matrix_fn, symmetric: bool | None = None) -> SparseOperator:
        if (name, False) not in self._ops:
            self._ops[(name, False)] = SparseOperator(matrix_fn(), self.device, symmetric=symmetric)
        return self._ops[(name, False)]

    # -- the graphs
    def _training_graph(self, kind: str, build: Callable[[sp.csr_matrix], sp.csr_matrix]) -> sp.csr_matrix:
        """``build`` of the training interaction matrix, cached under ``kind`` and the interactions' hash."""
        ds = self.dataset
        return self.cached(kind, (ds.interactions_hash,), lambda: build(ds.train_matrix))

    def norm_adj_matrix(self) -> sp.csr_matrix:
        """Â as a SciPy matrix (what :meth:`norm_adj` multiplies by), cached."""
        return self._training_graph("norm_adj", sym_norm_adjacency)

    def norm_adj(self) -> SparseOperator:
        """Â = D^{-1/2} A D^{-1/2} on the training graph, (U+I)×(U+I)."""
        return self._op("norm_adj", self.norm_adj_matrix, symmetric=True)

    def rw_adj(self) -> SparseOperator:
        """(D+I)^{-1}(A+I) on the training graph (NGCF, LATTICE)."""
        return self._op("rw_adj", lambda: self._training_graph("rw_adj", rw_norm_adjacency_self_loops), symmetric=False)

    def norm_interactions(self) -> SparseOperator:
        """R̂ = D_u^{-1/2} R D_i^{-1/2}, U × I."""
        return self._op(
            "norm_inter", lambda: self._training_graph("norm_inter", norm_interaction_matrix), symmetric=False
        )

    def knn_matrix(
        self, modality: str, k: int = 10, weighted: bool = False, normalization: str = "sym"
    ) -> sp.csr_matrix:
        ds = self.dataset
        key = (ds.feature_hash(modality), k, weighted, normalization)
        if self.knn_method == "exact":
            return self.cached("knn", key, lambda: build_knn_graph(ds.features[modality], k, weighted, normalization))

        def build_approximate() -> sp.csr_matrix:
            idx, sims, info = ann_knn_topk(ds.features[modality], k)
            self.notes.append(info.describe(f"{modality} features"))
            return build_knn_graph(ds.features[modality], k, weighted, normalization, neighbours=(idx, sims))

        before = self.builds
        graph = self.cached("knn-ann", key, build_approximate)
        if self.builds == before and not any(n.startswith(f"{modality} features") for n in self.notes):
            self.notes.append(f"{modality} features: approximate kNN graph (FAISS HNSW) read from the graph cache")
        return graph

    def knn(self, modality: str, k: int = 10, weighted: bool = False, normalization: str = "sym") -> SparseOperator:
        """kNN item graph of a modality's raw features (I × I), normalised."""
        name = f"knn:{modality}:{k}:{weighted}:{normalization}"
        return self._op(name, lambda: self.knn_matrix(modality, k, weighted, normalization), symmetric=False)


# ====================================================================== edge lists (MMGCN, GRCN)
def bipartite_edge_list(interactions: sp.spmatrix) -> tuple[torch.Tensor, torch.Tensor]:
    """(src, dst) of the directed user–item edge list with every training pair in both directions.

    Node ids as in :func:`bipartite_adjacency` (item j is node U + j); the first |E| edges go
    user → item, the next |E| item → user (docs/building-blocks.md#edge-lists, 2|E| edges).
    """
    r = sp.coo_matrix(interactions)
    users = torch.from_numpy(r.row.astype(np.int64))
    items = torch.from_numpy(r.col.astype(np.int64)) + interactions.shape[0]
    return torch.cat([users, items]), torch.cat([items, users])


# ====================================================================== left-normalised R (MMSSL)
def left_norm_bipartite_operators(
    users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int, eps: float = 1e-8
) -> tuple[SparseOperator, SparseOperator]:
    """(D_u^{-1/2} R, D_i^{-1/2} Rᵀ) of the binary interactions given as (user, item) pairs.

    MMSSL's "mean_flag" normalisation (docs/building-blocks.md#normalised-adjacencies, ``R_left``): only the row side is
    degree-scaled, deg + ``eps``; duplicate pairs count once. Built on the pairs' device.
    Returns operators of shapes (n_users × n_items) and (n_items × n_users).
    """
    key = torch.unique(users.long() * n_items + items.long())
    u, i = key // n_items, key % n_items
    du = torch.bincount(u, minlength=n_users).to(torch.float32) + eps
    di = torch.bincount(i, minlength=n_items).to(torch.float32) + eps
    ui = SparseOperator.from_coo(u, i, du.pow(-0.5)[u], (n_users, n_items))
    iu = SparseOperator.from_coo(i, u, di.pow(-0.5)[i], (n_items, n_users))
    return ui, iu
