"""Item–item kNN graphs: top-k neighbours in row blocks (exactly, or through an approximate index past a
size), their COO triples and normalisation, and the model-specific variants (LATTICE's learned graph,
DA-MRS's denoised and behaviour graphs). Re-exported by :mod:`modalrec.graphs`, whose ``GraphStore``
builds and caches them (docs/building-blocks.md#knn-graphs).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp
import torch

from modalrec.ann import RECALL_SAMPLE, AnnGraphInfo, ann_knn_topk_many


# ====================================================================== kNN item graphs
def knn_topk(
    features: torch.Tensor, k: int, block_size: int = 1024, stable_ties: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosine neighbours of every row, computed in row blocks (memory O(block × I)).

    Returns ``(indices, similarities)``, both (I, k). The row itself is normally among its
    neighbours and is kept (docs/building-blocks.md#knn-graphs). With ``stable_ties`` exact
    ties are broken by the lowest item id (a stable sort; slower), otherwise by
    ``torch.topk``'s order, which is deterministic on a given device.
    """
    x = torch.nn.functional.normalize(features.detach().float(), dim=1)  # a graph, not a differentiable op
    n = x.shape[0]
    k = min(k, n)
    idx_blocks, val_blocks = [], []
    # One (block × I) buffer for every block. Why: with the allocator keeping freed memory in the heap
    # (allocator.keep_freed_memory_in_process), the small per-block results were carved out of each freed
    # block, so the next block no longer fit and the heap grew by a block per block: MARIO's learned graphs
    # at 112,800 items took the process past 24 GB (OOM-killed) for 462 MB blocks.
    buffer = torch.empty(min(block_size, n), n, dtype=x.dtype, device=x.device)
    for start in range(0, n, block_size):
        rows = x[start : start + block_size]
        sims = torch.matmul(rows, x.T, out=buffer[: rows.shape[0]])
        vals, idx = stable_top_k(sims, k) if stable_ties else top_k_of_rows(sims, k)
        idx_blocks.append(idx)
        val_blocks.append(vals)
    return torch.cat(idx_blocks), torch.cat(val_blocks)


# Columns per chunk of :func:`chunked_top_k`, and the fewest chunks per neighbour for which chunking pays
# (measured on one thread, 1,024 rows, k = 10: 2.1× faster than torch.topk at 28,200 columns, 1.2× at 7,050,
# slower at 2,000).
TOPK_CHUNK = 64
MIN_CHUNKS_PER_K = 10


def _chunks_pay(sims: torch.Tensor, k: int) -> bool:
    """Whether :func:`chunked_top_k` searches ``sims`` by chunks (enough columns, a row-major layout)."""
    return sims.shape[1] >= MIN_CHUNKS_PER_K * k * TOPK_CHUNK and sims.is_contiguous()


def chunked_top_k(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k largest values of each row, their columns, and whether a value ties across the k-th place.

    Each row is cut into chunks of :data:`TOPK_CHUNK` columns; a chunk holding one of the row's k largest
    values has a maximum at least the k-th value, so the k chunks of largest maximum hold the k largest
    values. One pass of maxima and a top-k over k·64 candidates replace ``torch.topk`` over the whole row.
    The k-th value is always exact. ``tied[r]`` says that more than k values of row r reach it — exactly:
    then either more than k chunk maxima reach it, or all chunks that do are candidates and more than k
    candidates reach it. Where ``tied`` is false the columns are ``torch.topk``'s set, values in descending
    order (equal values may come in another order); where it is true, which tied columns are returned is
    arbitrary, and callers redo those rows (:func:`top_k_of_rows`, :func:`stable_top_k`).
    """
    n, m = sims.shape
    width = TOPK_CHUNK
    if not _chunks_pay(sims, k):
        vals, idx = torch.topk(sims, k, dim=1)
        return vals, idx, (sims >= vals[:, -1:]).sum(dim=1) > k
    whole = m // width
    maxima = sims.as_strided((n, whole, width), (m, width, 1)).amax(dim=2)
    if whole * width < m:
        maxima = torch.cat([maxima, sims[:, whole * width :].amax(dim=1, keepdim=True)], dim=1)
    chunks = torch.topk(maxima, k, dim=1).indices
    cols = (chunks.unsqueeze(2) * width + torch.arange(width, device=sims.device)).reshape(n, k * width)
    past_end = cols >= m
    candidates = sims.gather(1, cols.clamp(max=m - 1)).masked_fill_(past_end, -torch.inf)
    vals, at = torch.topk(candidates, k, dim=1)
    kth = vals[:, -1:]
    tied = ((maxima >= kth).sum(dim=1) > k) | ((candidates >= kth).sum(dim=1) > k)
    return vals, cols.gather(1, at), tied


def top_k_of_rows(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(sims, k, dim=1)``'s (values, columns) — the same set in every row — through
    :func:`chunked_top_k`, with the rows whose values tie across the k-th place handed to ``torch.topk``.
    Where chunks do not pay it is ``torch.topk`` itself: no tie count over the whole rows (a full pass
    costing more than the top-k) on this path, which MARIO's learned graphs take at every step."""
    if not _chunks_pay(sims, k):
        return torch.topk(sims, k, dim=1)
    vals, idx, tied = chunked_top_k(sims, k)
    across = tied.nonzero().squeeze(1)
    if across.numel():
        vals[across], idx[across] = torch.topk(sims[across], k, dim=1)
    return vals, idx


def stable_top_k(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``k`` (values, columns) of a stable descending sort of each row — equal values in ascending
    column order — without sorting whole rows.

    ``topk`` finds the k largest values; ordered by (value descending, column ascending) they are the stable
    sort's first k, unless more than k entries of the row reach its k-th value (a tie across the cut, where
    which tied columns are kept matters): only those rows are sorted whole. Sorting every row of an
    (items × items) block cost O(I² log I) and, kept as views, the whole sorted blocks' memory.
    """
    vals, idx, tied = chunked_top_k(sims, k)
    by_col = torch.argsort(idx, dim=1)
    vals, idx = vals.gather(1, by_col), idx.gather(1, by_col)
    by_val = torch.sort(vals, dim=1, descending=True, stable=True).indices
    vals, idx = vals.gather(1, by_val), idx.gather(1, by_val)
    across = tied.nonzero().squeeze(1)
    if across.numel():
        whole_vals, whole_idx = torch.sort(sims[across], dim=1, descending=True, stable=True)
        vals[across], idx[across] = whole_vals[:, :k], whole_idx[:, :k]
    return vals, idx


def normalize_sparse_rows(
    rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, n: int, normalization: str
) -> torch.Tensor:
    """Normalise edge values of an n×n graph given as COO triples.

    ``sym``: D^{-1/2} G D^{-1/2} with D the row sums; ``row``: D^{-1} G; ``none``: as is.
    Rows whose sum is not positive become zero (no NaN from a negative or empty row).
    """
    if normalization == "none":
        return values
    deg = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, rows, values)
    inv = torch.where(deg > 0, deg, torch.ones_like(deg))
    if normalization == "sym":
        inv = torch.where(deg > 0, inv.pow(-0.5), torch.zeros_like(deg))
        return values * inv[rows] * inv[cols]
    if normalization == "row":
        inv = torch.where(deg > 0, inv.pow(-1.0), torch.zeros_like(deg))
        return values * inv[rows]
    raise ValueError(f"unknown normalization {normalization!r} (sym | row | none)")


def knn_graph_coo(
    indices: torch.Tensor, similarities: torch.Tensor, weighted: bool, normalization: str = "sym"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """COO triples (rows, cols, values) of a directed kNN graph from :func:`knn_topk` output.

    ``weighted``: edge values are the similarities (MARIO Eq. 2, LATTICE); otherwise 1
    (FREEDOM, MeAIM). Not symmetrised, as in the references.
    """
    n, k = indices.shape
    rows = torch.arange(n, device=indices.device).repeat_interleave(k)
    cols = indices.reshape(-1)
    vals = similarities.reshape(-1).float() if weighted else torch.ones(n * k, device=indices.device)
    return rows, cols, normalize_sparse_rows(rows, cols, vals, n, normalization)


# Bytes of the per-block temporaries of the exact kNN build (similarities, sorted values, int64 indices:
# 16 bytes per item pair): 1,024 rows below ~33k items, fewer above, so memory stays flat as I grows.
KNN_BLOCK_BYTES = 512 * 2**20


def knn_block_rows(n_items: int) -> int:
    """Rows per block of the exact kNN build over ``n_items`` items (at most 1,024)."""
    return int(max(1, min(1024, KNN_BLOCK_BYTES // (16 * max(1, n_items)))))


def build_knn_graph(
    features: np.ndarray | torch.Tensor,
    k: int = 10,
    weighted: bool = False,
    normalization: str = "sym",
    block_size: int | None = None,
    neighbours: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> sp.csr_matrix:
    """The normalised kNN item graph of a feature matrix, as a SciPy CSR matrix.

    Similarities are computed exactly in item blocks (:func:`knn_block_rows` rows unless ``block_size``);
    ties are broken by lowest item id. ``neighbours`` = (indices, similarities) found elsewhere (the
    approximate index of :mod:`modalrec.ann`) replaces that search.
    """
    n = int(features.shape[0])
    if neighbours is None:
        x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
        idx, sims = knn_topk(x, k, block_size=block_size or knn_block_rows(n), stable_ties=True)
    else:
        idx, sims = neighbours
    rows, cols, vals = knn_graph_coo(idx, sims, weighted, normalization)
    g = sp.csr_matrix((vals.numpy(), (rows.numpy(), cols.numpy())), shape=(n, n), dtype=np.float32)
    g.sort_indices()
    return g


# ====================================================================== learned kNN graphs (LATTICE)
def learned_knn_coo(
    features: torch.Tensor,
    k: int,
    block_size: int = 1024,
    stable_ties: bool = False,
    neighbours: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """COO triples (rows, cols, sims) of the directed top-k cosine graph of ``features``, differentiable.

    The neighbour sets come from :func:`knn_topk` in row blocks under ``no_grad`` (never an
    I × I matrix), or are given as ``neighbours`` (I × k indices, e.g. approximate ones from
    :class:`~modalrec.ann.LearnedGraphNeighbours`); the kept similarities are then recomputed from
    ``features`` with autograd, so gradients reach ``features`` through the kept values exactly as through
    ``topk(dense_cos_sim)`` would (LATTICE's learned graph, docs/models/lattice.md#forward-pass). Values are
    not normalised (see :func:`normalize_sparse_rows`).
    """
    if neighbours is not None:
        idx = neighbours
    else:
        with torch.no_grad():
            idx, _ = knn_topk(features.detach(), k, block_size=block_size, stable_ties=stable_ties)
    n, kk = idx.shape
    rows = torch.arange(n, device=idx.device).repeat_interleave(kk)
    cols = idx.reshape(-1)
    x = torch.nn.functional.normalize(features.float(), dim=1)
    sims = (x.index_select(0, rows) * x.index_select(0, cols)).sum(dim=1)
    return rows, cols, sims


# ====================================================================== cross-modal denoised kNN (DA-MRS)
# candidates per kept neighbour that the approximate denoised graph asks each modality's HNSW index for
DENOISED_CANDIDATES_PER_NEIGHBOUR = 4
# what a cached approximate denoised graph was built by (DA-MRS's cache key): change it with the algorithm
APPROXIMATE_DENOISED_FORM = ("hnsw candidates", DENOISED_CANDIDATES_PER_NEIGHBOUR, "short items exact")


def _denoising_thresholds(xs: list[torch.Tensor]) -> list[float]:
    """μ_m, the mean of ALL entries of S_m = X̂_m X̂_mᵀ (diagonal included), exactly as ‖Σ_i x̂_i‖² / n²."""
    n = xs[0].shape[0]
    return [float(x.sum(0) @ x.sum(0)) / float(n) ** 2 for x in xs]


def _denoised_rows(
    xs: list[torch.Tensor], means: list[float], rows: torch.Tensor, kk: int
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Exact denoised neighbours of ``rows``: per modality the (rows × kk) columns in stable order, the valid
    mask (the first k_i of each row) and k_i = min(c_i, kk), c_i the row's surviving entries."""
    sims = [x[rows] @ x.T for x in xs]
    keep = torch.ones_like(sims[0], dtype=torch.bool)
    for s, mu in zip(sims, means, strict=True):
        keep &= s >= mu
    k_i = keep.sum(1).clamp(max=kk)
    valid = torch.arange(kk, device=k_i.device).unsqueeze(0) < k_i.unsqueeze(1)
    cols = []
    for s in sims:
        # the first kk of the stable descending sort, without sorting whole rows (O(I²) instead of
        # O(I² log I), and no whole sorted block kept)
        cols.append(stable_top_k(s.masked_fill(~keep, float("-inf")), kk)[1])
    return cols, valid, k_i


def _denoised_coo(
    rows_m: list[torch.Tensor], cols_m: list[torch.Tensor], n: int
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Binary edges normalised 1/sqrt(r_i · r_j), one COO triple per modality."""
    out = []
    for rows, cols in zip(rows_m, cols_m, strict=True):
        vals = normalize_sparse_rows(rows, cols, torch.ones(rows.shape[0], device=rows.device), n, "sym")
        out.append((rows, cols, vals))
    return out


def cross_modal_denoised_knn(
    features: list[torch.Tensor] | list[np.ndarray], k: int, block_size: int = 1024
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """DA-MRS's denoised binary kNN item graphs, one per modality (docs/models/damrs.md#graphs, 1).

    With S_m the cosine similarities of modality m and μ_m the mean of ALL entries of S_m
    (diagonal included; computed exactly as ‖Σ_i x̂_i‖² / n² without an n×n matrix), an
    entry (i, j) survives when S_m[i, j] ≥ μ_m in EVERY modality. Item i keeps
    k_i = min(c_i, k) neighbours per modality, c_i = its number of surviving entries, chosen
    as the top-k_i surviving entries of that modality's row (ties: lowest item id). Edges are
    binary, normalised 1/sqrt(r_i · r_j) with r the row counts. Row blocks of ``block_size``:
    memory O(block × n). Returns COO triples (rows, cols, values) per modality, in input order.
    """
    xs = [torch.nn.functional.normalize(torch.as_tensor(f).float(), dim=1) for f in features]
    n = xs[0].shape[0]
    means = _denoising_thresholds(xs)
    kk = min(k, n)
    rows_m: list[list[torch.Tensor]] = [[] for _ in xs]
    cols_m: list[list[torch.Tensor]] = [[] for _ in xs]
    for start in range(0, n, block_size):
        rows = torch.arange(start, min(n, start + block_size))
        cols, valid, _ = _denoised_rows(xs, means, rows, kk)
        row_ids = rows.unsqueeze(1).expand(-1, kk)
        for m, idx in enumerate(cols):
            rows_m[m].append(row_ids[valid])
            cols_m[m].append(idx[valid])
    return _denoised_coo([torch.cat(r) for r in rows_m], [torch.cat(c) for c in cols_m], n)


def approximate_cross_modal_denoised_knn(
    features: list[torch.Tensor] | list[np.ndarray], k: int, seed: int = 0
) -> tuple[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], list[AnnGraphInfo]]:
    """:func:`cross_modal_denoised_knn` from approximate candidates, about O(I·log I·d) instead of O(I²·d).

    Each modality's HNSW index (:func:`~modalrec.ann.ann_knn_topk_many`) gives every item its
    C = ``DENOISED_CANDIDATES_PER_NEIGHBOUR`` · k nearest items in that modality; a candidate survives when its
    exact similarity reaches μ_m in every modality (the same thresholds, exact), and the item keeps the top
    min(c_i, k) surviving candidates of that modality (ties: lowest item id).
    When the index returns a row's true top C and at least k of them survive, the exact rule's neighbours are
    among them; an item with fewer than k surviving candidates in any modality may have more survivors beyond
    them, so its rows are computed exactly (one blocked similarity pass over those items only: at worst, when
    every item runs short, the exact build's cost). What remains approximate is the index's misses.
    How often is measured: each modality's neighbour recall against the exact rule on a seeded sample of
    items (the exact rows computed for the sample only; ties at an item's last kept similarity count as found),
    in the returned infos. Returns the COO triples per modality and one info per modality.
    """
    xs = [torch.nn.functional.normalize(torch.as_tensor(f).float(), dim=1) for f in features]
    n = xs[0].shape[0]
    means = _denoising_thresholds(xs)
    kk = min(k, n)
    n_cand = min(n, DENOISED_CANDIDATES_PER_NEIGHBOUR * kk)
    found = ann_knn_topk_many(xs, n_cand, seed=seed)
    sample = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(n, size=min(RECALL_SAMPLE, n), replace=False)))
    exact_cols, _, exact_k = _denoised_rows(xs, means, sample, kk)
    picked_m, valid_m = [], []
    for m, (cand, _, _) in enumerate(found):
        cand = torch.sort(cand, dim=1).values  # ascending ids, so the stable top-k breaks ties by the lowest id
        keep = torch.ones(cand.shape, dtype=torch.bool)
        own = torch.empty(cand.shape)
        block = max(1, 2**22 // max(1, n_cand * max(x.shape[1] for x in xs)))
        for lo in range(0, n, block):
            part = cand[lo : lo + block]
            for m2, (x, mu) in enumerate(zip(xs, means, strict=True)):
                s = torch.einsum("bd,bcd->bc", x[lo : lo + block], x[part])
                keep[lo : lo + block] &= s >= mu
                if m2 == m:
                    own[lo : lo + block] = s
        k_i = keep.sum(1).clamp(max=kk)
        valid_m.append(torch.arange(kk).unsqueeze(0) < k_i.unsqueeze(1))
        picked_m.append(cand.gather(1, stable_top_k(own.masked_fill(~keep, float("-inf")), kk)[1]))
    # an item with fewer than k surviving candidates in some modality may have more survivors beyond them (real
    # modalities disagree: on amazon_scientific_mm 205 of 1,585 items): its rows are computed exactly instead
    short = (~torch.stack([v[:, -1] for v in valid_m]).all(0)).nonzero().squeeze(1)
    for lo in range(0, short.numel(), knn_block_rows(n)):
        rows = short[lo : lo + knn_block_rows(n)]
        cols, valid, _ = _denoised_rows(xs, means, rows, kk)
        for m in range(len(xs)):
            picked_m[m][rows], valid_m[m][rows] = cols[m], valid
    rows_m = [torch.arange(n).unsqueeze(1).expand(-1, kk)[v] for v in valid_m]
    cols_m = [p[v] for p, v in zip(picked_m, valid_m, strict=True)]
    infos = [
        dataclasses.replace(
            info,
            k=kk,
            recall=_denoised_recall(x, sample, p[sample], v[sample], exact, exact_k),
            exact_rows=int(short.numel()),
        )
        for (_, _, info), x, p, v, exact in zip(found, xs, picked_m, valid_m, exact_cols, strict=True)
    ]
    return _denoised_coo(rows_m, cols_m, n), infos


def _denoised_recall(
    x: torch.Tensor, sample: torch.Tensor, picked: torch.Tensor, valid: torch.Tensor, exact: torch.Tensor,
    exact_k: torch.Tensor,
) -> float:  # fmt: skip
    """Share of the sampled rows' exact neighbours that the approximate rows hold: a kept neighbour counts when
    it is valid and at least as similar as the row's last exact neighbour (ties count as found)."""
    last = exact_k.clamp(min=1) - 1
    kth = (x[sample].unsqueeze(1) * x[exact.gather(1, last.unsqueeze(1))]).sum(-1)  # (s, 1)
    sims = (x[sample].unsqueeze(1) * x[picked]).sum(-1)  # (s, kk)
    hits = ((sims >= kth) & valid).sum(1).clamp(max=exact_k)
    total = int(exact_k.sum())
    return float(hits.sum()) / total if total else 1.0


def co_interaction_graph(interactions: sp.spmatrix, k: int = 2, min_count: int = 2) -> sp.csr_matrix:
    """DA-MRS's item–item behaviour graph (docs/models/damrs.md#graphs, 2), binary and normalised.

    c_ij = number of users who interacted with both i and j (i ≠ j); pairs with
    c_ij ≥ ``min_count`` are candidates; each item keeps its top-``k`` partners by c_ij (ties:
    lowest item id); a self-loop is added to every item; counts are then discarded and the
    edges normalised 1/sqrt(r_i · r_j) with r the row counts (self-loop included).
    """
    r = sp.csr_matrix(interactions, dtype=np.float32)
    r.data[:] = 1.0
    n = r.shape[1]
    c = (r.T @ r).tocoo()
    sel = (c.row != c.col) & (c.data >= min_count)
    row, col, cnt = c.row[sel], c.col[sel], c.data[sel]
    order = np.lexsort((col, -cnt, row))
    row, col = row[order], col[order]
    starts = np.searchsorted(row, np.arange(n))
    rank = np.arange(row.size) - starts[row]
    keep = rank < k
    rows = np.concatenate([row[keep], np.arange(n)]).astype(np.int64)
    cols = np.concatenate([col[keep], np.arange(n)]).astype(np.int64)
    vals = normalize_sparse_rows(torch.from_numpy(rows), torch.from_numpy(cols), torch.ones(rows.size), n, "sym")
    g = sp.csr_matrix((vals.numpy(), (rows, cols)), shape=(n, n), dtype=np.float32)
    g.sort_indices()
    return g
