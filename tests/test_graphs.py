"""Graphs against dense NumPy reference formulas; the sparse operator; the on-disk graph cache; the graph
builders of individual models (edge lists, learned and denoised kNN, co-interaction) against brute force."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from modalrec.graphs import (
    DEGREE_EPS,
    GraphStore,
    SparseOperator,
    bipartite_adjacency,
    bipartite_edge_list,
    build_knn_graph,
    co_interaction_graph,
    cross_modal_denoised_knn,
    knn_topk,
    learned_knn_coo,
    left_norm_bipartite_operators,
    norm_interaction_matrix,
    normalize_sparse_rows,
    rw_norm_adjacency_self_loops,
    sym_norm_adjacency,
)

N_U, N_I = 6, 8


@pytest.fixture
def r_matrix() -> sp.csr_matrix:
    """A random binary 6 × 8 R in which item 7 and user 5 have no interaction."""
    rng = np.random.default_rng(0)
    dense = (rng.random((N_U, N_I)) < 0.45).astype(np.float32)
    dense[:, 7] = 0
    dense[5, :] = 0
    dense[0, 0] = 1  # at least one edge for sure
    return sp.csr_matrix(dense)


def _dense_a(r: np.ndarray) -> np.ndarray:
    n_u, n_i = r.shape
    a = np.zeros((n_u + n_i, n_u + n_i))
    a[:n_u, n_u:] = r
    a[n_u:, :n_u] = r.T
    return a


# ================================================================ user–item graphs
def test_bipartite_adjacency(r_matrix):
    a = bipartite_adjacency(r_matrix)
    np.testing.assert_array_equal(a.toarray(), _dense_a(r_matrix.toarray()))
    assert a.has_sorted_indices


def test_sym_norm_adjacency_matches_dense_formula(r_matrix):
    a = _dense_a(r_matrix.toarray().astype(np.float64))
    deg = a.sum(axis=1) + DEGREE_EPS  # D = deg + eps
    ref = np.diag(deg**-0.5) @ a @ np.diag(deg**-0.5)  # D^-1/2 A D^-1/2
    out = sym_norm_adjacency(r_matrix)
    assert out.shape == (N_U + N_I, N_U + N_I) and out.dtype == np.float32
    np.testing.assert_allclose(out.toarray(), ref, rtol=1e-6, atol=1e-7)
    dense = out.toarray()
    assert np.isfinite(dense).all()
    assert not dense[N_U + 7].any() and not dense[:, N_U + 7].any()  # item without interactions: zero row/col
    assert not dense[5].any()  # user without interactions
    np.testing.assert_allclose(dense, dense.T, atol=1e-7)


def test_rw_norm_adjacency_self_loops_matches_dense_formula(r_matrix):
    a = _dense_a(r_matrix.toarray().astype(np.float64)) + np.eye(N_U + N_I)  # A + I
    ref = np.diag(1.0 / a.sum(axis=1)) @ a  # (D + I)^-1 (A + I)
    out = rw_norm_adjacency_self_loops(r_matrix).toarray()
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-6)  # row-stochastic
    assert out[N_U + 7, N_U + 7] == pytest.approx(1.0)  # isolated item: only its self-loop


def test_norm_interaction_matrix_matches_dense_formula(r_matrix):
    r = r_matrix.toarray().astype(np.float64)
    du = r.sum(axis=1) + DEGREE_EPS
    di = r.sum(axis=0) + DEGREE_EPS
    ref = np.diag(du**-0.5) @ r @ np.diag(di**-0.5)  # D_u^-1/2 R D_i^-1/2
    out = norm_interaction_matrix(r_matrix).toarray()
    assert out.shape == (N_U, N_I)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-7)
    assert np.isfinite(out).all() and not out[:, 7].any()
    # R-hat is the user-item block of A-hat
    np.testing.assert_allclose(sym_norm_adjacency(r_matrix).toarray()[:N_U, N_U:], out, rtol=1e-6, atol=1e-7)


# ================================================================ kNN graphs
def _ref_knn(x: np.ndarray, k: int, weighted: bool, normalization: str) -> np.ndarray:
    """Dense reference: full cosine matrix, top-k per row (stable: ties → lowest index), normalised."""
    x = x.astype(np.float64)
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    s = xn @ xn.T
    n = x.shape[0]
    k = min(k, n)
    g = np.zeros((n, n))
    for i in range(n):
        nb = np.argsort(-s[i], kind="stable")[:k]
        g[i, nb] = s[i, nb] if weighted else 1.0
    if normalization == "none":
        return g
    d = g.sum(axis=1)
    if normalization == "sym":
        inv = np.where(d > 0, np.where(d > 0, d, 1.0) ** -0.5, 0.0)
        return inv[:, None] * g * inv[None, :]
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 0.0)
    return inv[:, None] * g


def _tie_features() -> np.ndarray:
    """Rows with entries in {0, ±1} having 1 or 4 non-zeros: every cosine is exact, so ties are exact.

    Several rows are duplicates of each other (and of the all-ones direction at another scale).
    """
    base = np.array(
        [
            [1, 0, 0, 0],
            [1, 1, 1, 1],
            [0, 1, 0, 0],
            [1, 1, 1, 1],
            [1, -1, 1, -1],
            [0, 0, 1, 0],
            [2, 2, 2, 2],
            [1, 0, 0, 0],
            [0, 1, 0, 0],
            [1, -1, 1, -1],
            [0, 0, 0, 1],
            [1, 0, 0, 0],
            [-1, -1, -1, -1],
            [0, 0, 1, 0],
        ],
        dtype=np.float32,
    )
    return base


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("normalization", ["sym", "row", "none"])
def test_build_knn_graph_with_exact_ties(weighted, normalization):
    x = _tie_features()
    k = 3
    out = build_knn_graph(x, k=k, weighted=weighted, normalization=normalization)
    ref = _ref_knn(x, k, weighted, normalization)
    assert out.shape == (14, 14) and out.dtype == np.float32
    np.testing.assert_allclose(out.toarray(), ref, rtol=1e-6, atol=1e-7)
    # the tie rule itself: row 0 == rows 7 and 11 (cos 1), then cos 0.5 to rows 1, 3, 6 -> keeps 0, 7, 11
    assert set(out[0].indices.tolist()) == {0, 7, 11}
    # row 1 (all ones): cos 1 with 1, 3, 6 -> exactly those, not the later equal-cos rows
    assert set(out[1].indices.tolist()) == {1, 3, 6}
    # row 2: self and row 8 (cos 1), then cos 0.5 with 1, 3, 6 -> the lowest index 1
    assert set(out[2].indices.tolist()) == {1, 2, 8}


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("normalization", ["sym", "row", "none"])
def test_build_knn_graph_random_features(weighted, normalization):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 6)).astype(np.float32)
    x[7] = x[3]  # a duplicate pair
    out = build_knn_graph(x, k=4, weighted=weighted, normalization=normalization)
    ref = _ref_knn(x, 4, weighted, normalization)
    np.testing.assert_allclose(out.toarray(), ref, rtol=1e-5, atol=1e-6)
    assert (np.diff(out.indptr) == 4).all()  # directed: exactly k out-edges per row
    assert out[3, 7] != 0 and out[7, 3] != 0


def test_knn_block_size_does_not_change_the_graph():
    rng = np.random.default_rng(6)
    x = np.concatenate([rng.normal(size=(23, 5)), _tie_features()[:, :4] @ np.eye(4, 5)]).astype(np.float32)
    for weighted in (True, False):
        full = build_knn_graph(x, k=5, weighted=weighted, normalization="sym", block_size=4096)
        for bs in (1, 4, 7):
            blocked = build_knn_graph(x, k=5, weighted=weighted, normalization="sym", block_size=bs)
            np.testing.assert_array_equal(blocked.indptr, full.indptr)
            np.testing.assert_array_equal(blocked.indices, full.indices)
            np.testing.assert_allclose(blocked.data, full.data, rtol=1e-6, atol=1e-7)


def test_knn_topk_shapes_and_self_neighbour():
    rng = np.random.default_rng(7)
    x = torch.from_numpy(rng.normal(size=(12, 4)).astype(np.float32))
    idx, sims = knn_topk(x, 3, block_size=5)
    assert idx.shape == sims.shape == (12, 3)
    assert (idx[:, 0] == torch.arange(12)).all()  # every row's nearest neighbour is itself
    assert torch.all(sims[:, :-1] >= sims[:, 1:])
    idx2, _ = knn_topk(x, 3, stable_ties=False)
    assert [set(r) for r in idx2.tolist()] == [set(r) for r in idx.tolist()]
    big, _ = knn_topk(x, 50)  # k larger than n -> n
    assert big.shape == (12, 12)


def test_knn_zero_feature_row_gives_no_nan():
    x = _tie_features()
    x[5] = 0
    for norm in ("sym", "row"):
        g = build_knn_graph(x, k=3, weighted=True, normalization=norm).toarray()
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, _ref_knn(x, 3, True, norm), rtol=1e-6, atol=1e-7)


def test_normalize_sparse_rows_rejects_unknown():
    rows = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="unknown normalization"):
        normalize_sparse_rows(rows, rows, torch.ones(2), 2, "l2")


# ================================================================ SparseOperator
def _check_operator(m: sp.csr_matrix, **kwargs) -> None:
    op = SparseOperator(m, **kwargs)
    dense = torch.from_numpy(m.toarray().astype(np.float32))
    torch.manual_seed(0)
    x = torch.randn(m.shape[1], 3, requires_grad=True)
    w = torch.randn(m.shape[0], 3)
    y = op @ x
    np.testing.assert_allclose(y.detach().numpy(), (dense @ x).detach().numpy(), rtol=1e-5, atol=1e-6)
    (y * w).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), (dense.T @ w).numpy(), rtol=1e-5, atol=1e-6)  # dL/dx = Aᵀ w
    with torch.no_grad():
        np.testing.assert_allclose((op @ x.detach()).numpy(), (dense @ x).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(op.to_scipy().toarray(), m.toarray(), rtol=1e-6)
    opt = op.t()
    assert opt.shape == (m.shape[1], m.shape[0])
    z = torch.randn(m.shape[0], 2)
    np.testing.assert_allclose((opt @ z).numpy(), (dense.T @ z).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(opt.to_scipy().toarray(), m.toarray().T, rtol=1e-6)


def test_sparse_operator_symmetric(r_matrix):
    m = sym_norm_adjacency(r_matrix)
    _check_operator(m)
    _check_operator(m, symmetric=True)


def test_sparse_operator_non_symmetric(r_matrix):
    _check_operator(rw_norm_adjacency_self_loops(r_matrix))  # square, not symmetric
    _check_operator(rw_norm_adjacency_self_loops(r_matrix), symmetric=False)
    _check_operator(norm_interaction_matrix(r_matrix))  # rectangular
    _check_operator(build_knn_graph(_tie_features(), k=3, weighted=True, normalization="row"))


def test_sparse_operator_empty_rectangular():
    _check_operator(sp.csr_matrix((4, 6), dtype=np.float32))


def test_sparse_operator_from_coo_sums_duplicates():
    rows, cols = torch.tensor([0, 0, 2, 1]), torch.tensor([1, 1, 0, 2])
    vals = torch.tensor([1.0, 2.0, 4.0, 5.0])
    op = SparseOperator.from_coo(rows, cols, vals, (3, 3))
    dense = torch.zeros(3, 3)
    dense[0, 1], dense[2, 0], dense[1, 2] = 3.0, 4.0, 5.0
    x = torch.randn(3, 2, requires_grad=True)
    (op @ x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), (dense.T @ torch.ones(3, 2)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(op.to_scipy().toarray(), dense.numpy())


# ================================================================ GraphStore cache
def test_graph_store_caches_to_disk(syn_dataset, tmp_path):
    cache = tmp_path / "cache"
    first = GraphStore(syn_dataset, cache_dir=cache)
    a1 = first.norm_adj_matrix()
    k1 = first.knn_matrix("image", k=5, weighted=True)
    first.norm_interactions()
    first.rw_adj()
    assert first.builds == 4 and first.cache_hits == 0
    first.norm_adj_matrix()  # in-process memo: neither a build nor a disk hit
    assert first.builds == 4 and first.cache_hits == 0
    assert len(list(cache.glob("*.npz"))) == 4

    second = GraphStore(syn_dataset, cache_dir=cache)
    a2 = second.norm_adj_matrix()
    k2 = second.knn_matrix("image", k=5, weighted=True)
    assert second.cache_hits == 2 and second.builds == 0
    assert (a1 != a2).nnz == 0 and (k1 != k2).nnz == 0
    # other parameters are another key
    second.knn_matrix("image", k=6, weighted=True)
    assert second.builds == 1


def test_graph_store_changed_features_change_the_key(syn_dataset, tmp_path):
    cache = tmp_path / "cache"
    GraphStore(syn_dataset, cache_dir=cache).knn_matrix("text", k=5)
    feats = dict(syn_dataset.features)
    feats["text"] = feats["text"].copy()
    feats["text"][0, 0] += 1.0
    changed = dataclasses.replace(syn_dataset, features=feats)
    assert changed.feature_hash("text") != syn_dataset.feature_hash("text")
    assert changed.interactions_hash == syn_dataset.interactions_hash
    store = GraphStore(changed, cache_dir=cache)
    store.knn_matrix("text", k=5)
    assert store.builds == 1 and store.cache_hits == 0
    store.norm_adj_matrix()
    assert store.builds == 2
    # same interactions: the adjacency of the unchanged dataset is now a cache hit
    again = GraphStore(syn_dataset, cache_dir=cache)
    again.norm_adj_matrix()
    assert again.cache_hits == 1 and again.builds == 0


def test_graph_store_changed_interactions_change_the_key(syn_dataset, tmp_path):
    cache = tmp_path / "cache"
    GraphStore(syn_dataset, cache_dir=cache).norm_adj_matrix()
    labels = syn_dataset.labels.copy()
    labels[np.flatnonzero(labels == 0)[0]] = 2  # one training interaction moves to test
    moved = dataclasses.replace(syn_dataset, labels=labels)
    store = GraphStore(moved, cache_dir=cache)
    store.norm_adj_matrix()
    assert store.builds == 1 and store.cache_hits == 0


def test_graph_store_without_cache_writes_nothing(syn_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = GraphStore(syn_dataset, cache_dir=False)
    store.norm_adj()
    store.knn("image", k=3)
    assert store.cache_dir is None and store.builds == 2
    assert list(tmp_path.iterdir()) == []


def test_graph_store_rebuilds_a_corrupt_entry(syn_dataset, tmp_path):
    cache = tmp_path / "cache"
    GraphStore(syn_dataset, cache_dir=cache).norm_adj_matrix()
    (entry,) = cache.glob("norm_adj-*.npz")
    entry.write_bytes(b"garbage")
    store = GraphStore(syn_dataset, cache_dir=cache)
    m = store.norm_adj_matrix()
    assert store.builds == 1 and store.cache_hits == 0
    np.testing.assert_allclose(m.toarray(), sym_norm_adjacency(syn_dataset.train_matrix).toarray())


def test_graph_store_operators(syn_dataset):
    store = GraphStore(syn_dataset, cache_dir=False)
    n = syn_dataset.n_users + syn_dataset.n_items
    adj = store.norm_adj()
    assert adj.shape == (n, n) and store.norm_adj() is adj
    assert store.rw_adj().shape == (n, n)
    assert store.norm_interactions().shape == (syn_dataset.n_users, syn_dataset.n_items)
    knn = store.knn("image", k=4, weighted=True, normalization="row")
    assert knn.shape == (syn_dataset.n_items, syn_dataset.n_items) and knn.nnz == 4 * syn_dataset.n_items
    x = torch.ones(syn_dataset.n_items, 1)
    # row-normalised weighted kNN graph of positive rows sums to 1 per row (sims to self are 1 > 0)
    out = (knn @ x).squeeze(1)
    assert torch.isfinite(out).all()


def test_degree_sensitive_pruning_keeps_the_right_count_and_prefers_low_degree_edges():
    import scipy.sparse as sp

    from modalrec.graphs import degree_sensitive_edge_probs, pruned_sym_norm_adjacency, sample_edges_without_replacement

    rng = np.random.default_rng(0)
    # user 0 interacts with every item (a hub); users 1..29 with two items each
    rows = [(0, j) for j in range(20)] + [(u, int(j)) for u in range(1, 30) for j in rng.choice(20, 2, replace=False)]
    r = sp.csr_matrix((np.ones(len(rows)), tuple(np.array(rows).T)), shape=(30, 20))
    users, items, probs = degree_sensitive_edge_probs(r)
    assert np.allclose(probs, 1 / np.sqrt(np.asarray(r.sum(1)).ravel()[users] * np.asarray(r.sum(0)).ravel()[items]))
    gen = torch.Generator().manual_seed(0)
    hub_kept = other_kept = 0
    for _ in range(200):
        keep = sample_edges_without_replacement(probs, len(users) // 2, gen).numpy()
        assert len(np.unique(keep)) == len(users) // 2  # without replacement
        hub_kept += (users[keep] == 0).mean()
        other_kept += (users[keep] != 0).mean()
    assert hub_kept / 200 < (users == 0).mean() < other_kept / 200  # the hub's edges are dropped more often
    adj = pruned_sym_norm_adjacency(r, 0.3, torch.Generator().manual_seed(1))
    assert adj.nnz == 2 * int(np.floor(r.nnz * 0.7))
    deg = np.diff(adj.indptr)  # degrees on the kept graph: entries are 1/sqrt(deg_u deg_i)
    coo = adj.tocoo()
    assert np.allclose(coo.data, 1 / np.sqrt(deg[coo.row] * deg[coo.col]), rtol=1e-5)


def test_exponential_race_matches_multinomial_without_replacement():
    from modalrec.graphs import sample_edges_without_replacement

    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    gen = torch.Generator().manual_seed(3)
    first = np.zeros(4)
    n = 20000
    picks = torch.stack([sample_edges_without_replacement(probs, 2, gen) for _ in range(n)])
    for i in range(4):
        first[i] = (picks == i).any(1).float().mean()
    ref = torch.multinomial(probs.repeat(n, 1), 2, replacement=False, generator=torch.Generator().manual_seed(4))
    expected = np.array([(ref == i).any(1).float().mean() for i in range(4)])
    assert np.allclose(first, expected, atol=0.015), (first, expected)


# ====================================================================== graph builders of individual models


def test_bipartite_edge_list_both_directions(small2):
    src, dst = bipartite_edge_list(small2.train_matrix)
    r = small2.train_matrix
    assert src.shape[0] == dst.shape[0] == 2 * r.nnz
    a = sp.csr_matrix((np.ones(src.shape[0]), (dst.numpy(), src.numpy())), shape=(small2.n_users + small2.n_items,) * 2)
    top = sp.bmat([[None, r], [r.T, None]]).toarray()
    np.testing.assert_array_equal(a.toarray(), top)


def test_learned_knn_coo_equals_dense_topk_values_and_gradients():
    torch.manual_seed(0)
    feats = torch.randn(37, 6, requires_grad=True)
    rows, cols, sims = learned_knn_coo(feats, 4, block_size=8)
    assert torch.equal(torch.bincount(rows, minlength=37), torch.full((37,), 4))  # exactly k per row
    x = F.normalize(feats, dim=1)
    dense = x @ x.T
    vals, idx = torch.topk(dense, 4, dim=1)
    ref = torch.zeros(37, 37).scatter(1, idx, vals)
    ours = torch.zeros(37, 37).index_put((rows, cols), sims, accumulate=True)
    torch.testing.assert_close(ours, ref)
    w = torch.randn(37, 37)
    g1 = torch.autograd.grad((ours * w).sum(), feats)[0]
    g2 = torch.autograd.grad((ref * w).sum(), feats)[0]
    torch.testing.assert_close(g1, g2)


def test_cross_modal_denoised_knn_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(40, 6, generator=gen), torch.randn(40, 5, generator=gen)]
    k = 4
    graphs = cross_modal_denoised_knn(feats, k, block_size=7)
    sims = [F.normalize(f, dim=1) @ F.normalize(f, dim=1).T for f in feats]
    keep = (sims[0] >= sims[0].mean()) & (sims[1] >= sims[1].mean())
    k_i = keep.sum(1).clamp(max=k)
    for s, (rows, cols, vals) in zip(sims, graphs, strict=True):
        assert torch.equal(torch.bincount(rows, minlength=40), k_i)
        for i in range(40):
            mine = set(cols[rows == i].tolist())
            masked = s[i].masked_fill(~keep[i], float("-inf"))
            expect = set(torch.sort(masked, descending=True, stable=True).indices[: int(k_i[i])].tolist())
            assert mine == expect
            assert all(keep[i, j] for j in mine)
        torch.testing.assert_close(vals, 1.0 / torch.sqrt(k_i[rows].float() * k_i[cols].float()))


@pytest.mark.parametrize("n", [60, 2700])  # 2,700 columns: the chunked top-k path (k = 4)
def test_cross_modal_denoised_knn_breaks_ties_by_the_lowest_item_id(n):
    """Many exact ties (small integer features): each row keeps the first k_i of the stable descending sort."""
    gen = torch.Generator().manual_seed(3)
    feats = [torch.randint(-2, 3, (n, 3), generator=gen).float(), torch.randint(-1, 2, (n, 2), generator=gen).float()]
    k = 4
    graphs = cross_modal_denoised_knn(feats, k, block_size=512)
    units = [F.normalize(f, dim=1) for f in feats]
    sims = [u @ u.T for u in units]
    means = [float(u.sum(0) @ u.sum(0)) / n**2 for u in units]
    keep = (sims[0] >= means[0]) & (sims[1] >= means[1])
    k_i = keep.sum(1).clamp(max=k)
    for s, (rows, cols, _) in zip(sims, graphs, strict=True):
        order = torch.sort(s.masked_fill(~keep, float("-inf")), dim=1, descending=True, stable=True).indices
        expect = torch.cat([order[i, : int(k_i[i])] for i in range(n)])
        assert torch.equal(rows, torch.arange(n).repeat_interleave(k_i)) and torch.equal(cols, expect)


def test_co_interaction_graph_matches_brute_force():
    rng = np.random.default_rng(1)
    r = (rng.random((30, 12)) < 0.3).astype(np.float32)
    g = co_interaction_graph(sp.csr_matrix(r), k=2, min_count=2).toarray()
    c = r.T @ r
    np.fill_diagonal(c, 0)
    expect = np.eye(12)
    for i in range(12):
        cand = [j for j in np.argsort(-c[i], kind="stable") if c[i, j] >= 2][:2]
        expect[i, cand] = 1
    counts = expect.sum(1)
    expect = expect / np.sqrt(np.outer(counts, counts))
    np.testing.assert_allclose(g, expect * (expect > 0), rtol=1e-6)
    assert (np.diag(g) > 0).all()


def test_left_norm_bipartite_operators_dense():
    users = torch.tensor([0, 0, 1, 2, 2, 2, 0])
    items = torch.tensor([0, 1, 1, 0, 2, 3, 0])  # (0, 0) twice: counts once
    ui, iu = left_norm_bipartite_operators(users, items, 4, 4)
    r = torch.zeros(4, 4)
    r[users, items] = 1.0
    du, di = r.sum(1) + 1e-8, r.sum(0) + 1e-8
    x = torch.randn(4, 3)
    torch.testing.assert_close(ui @ x, (du.pow(-0.5).unsqueeze(1) * r) @ x)
    torch.testing.assert_close(iu @ x, (di.pow(-0.5).unsqueeze(1) * r.T) @ x)


def test_the_stable_top_k_equals_sorting_whole_rows_ties_included():
    from modalrec.knn_graphs import stable_top_k

    g = torch.Generator().manual_seed(0)
    sims = torch.randint(0, 6, (300, 40), generator=g).float() / 5  # many exact ties, across the cut too
    sims[::7] = torch.rand(43, 40, generator=g)  # and rows without ties
    for k in (1, 3, 10, 40):
        want_vals, want_idx = torch.sort(sims, dim=1, descending=True, stable=True)
        vals, idx = stable_top_k(sims, k)
        assert torch.equal(idx, want_idx[:, :k]) and torch.equal(vals, want_vals[:, :k]), k


@pytest.mark.parametrize("levels", [0, 7, 1000])  # continuous values; few distinct values (ties everywhere); some ties
@pytest.mark.parametrize("m", [700, 6401, 8192])  # too few chunks to chunk; a partial last chunk; whole chunks
def test_top_k_through_chunk_maxima_equals_the_whole_row_top_k(levels, m):
    """The chunk-maxima top-k gives torch.topk's k-th value always and its set wherever no value ties across
    the k-th place; top_k_of_rows gives torch.topk's set in every row; stable_top_k still equals the first k
    columns of a stable descending sort of the whole row."""
    from modalrec.knn_graphs import chunked_top_k, stable_top_k, top_k_of_rows

    gen = torch.Generator().manual_seed(levels + m)
    sims = torch.rand(40, m, generator=gen)
    if levels:
        sims = (sims * levels).floor() / levels
    sims[3] = sims[3, 0]  # a constant row
    sims[5, 100:140] = 2.0  # the k best all in one chunk and the next
    k = 10
    want_vals, want_idx = torch.topk(sims, k, dim=1)
    vals, idx, tied = chunked_top_k(sims, k)
    assert torch.equal(vals[:, -1], want_vals[:, -1])
    assert torch.equal(sims.gather(1, idx), vals)
    no_tie = (sims >= want_vals[:, -1:]).sum(dim=1) == k
    assert torch.equal(tied, ~no_tie)  # the flag is exact, from chunk maxima and candidates alone
    assert bool(tied[3]) and bool(tied.any()) and bool((~tied).any()) is (levels != 7)  # rows of both kinds
    for r in no_tie.nonzero().squeeze(1).tolist():
        assert set(idx[r].tolist()) == set(want_idx[r].tolist())
    vals, idx = top_k_of_rows(sims, k)
    assert [set(r) for r in idx.tolist()] == [set(r) for r in want_idx.tolist()]
    assert torch.equal(vals.sort(dim=1).values, want_vals.sort(dim=1).values)
    s_vals, s_idx = stable_top_k(sims, k)
    full = torch.sort(sims, dim=1, descending=True, stable=True)
    assert torch.equal(s_idx, full.indices[:, :k]) and torch.equal(s_vals, full.values[:, :k])
