"""LayerGCN, VBPR, MMGCN (docs/models/) and the edge-list aggregation blocks they share.

Each fast path is checked against a literal computation of the documented equations on a small graph.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

import modalrec.graphs as graphs_module
from modalrec.config import resolve_config
from modalrec.data.dataset import Dataset
from modalrec.data.synth import generate_synthetic
from modalrec.graphs import GraphStore, bipartite_edge_list, sym_norm_adjacency
from modalrec.models import build_model
from modalrec.models.base import Batch
from modalrec.models.vbpr import feature_order
from modalrec.nn.propagation import edge_list_aggregate, edge_list_operator

N_USERS, N_ITEMS = 60, 40


@pytest.fixture(scope="module")
def ds() -> Dataset:
    g = generate_synthetic(n_users=N_USERS, n_items=N_ITEMS, modalities={"image": 20, "text": 12}, seed=7)
    return Dataset(
        name="syn",
        n_users=g["n_users"],
        n_items=g["n_items"],
        users=g["users"],
        items=g["items"],
        labels=g["labels"],
        timestamps=g["timestamps"],
        features=g["features"],
    )


def make(name: str, config_name: str, dataset: Dataset, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = resolve_config(config_name, overrides=overrides)
    return build_model(name, dataset, cfg, GraphStore(dataset, cache_dir=False))


def fixed_batch(dataset: Dataset, n: int = 64, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    u, i = dataset.split("train")
    pick = rng.choice(u.size, size=n, replace=False)
    seen = dataset.train_matrix
    neg = rng.integers(0, dataset.n_items, size=n)
    for k in range(n):
        while seen[u[pick[k]], neg[k]]:
            neg[k] = rng.integers(0, dataset.n_items)
    return Batch(*(torch.as_tensor(a, dtype=torch.long) for a in (u[pick], i[pick], neg)))


def dense_adj(dataset: Dataset) -> torch.Tensor:
    return torch.from_numpy(sym_norm_adjacency(dataset.train_matrix).toarray())


# ====================================================================== shared blocks
def test_edge_list_aggregate_mean_add_and_operator():
    src = torch.tensor([0, 1, 2, 2, 3, 0])
    dst = torch.tensor([1, 0, 0, 1, 1, 3])
    x = torch.randn(5, 3, dtype=torch.float64)
    w = torch.tensor([0.5, 2.0, -1.0, 1.5, 3.0, 0.25], dtype=torch.float64)
    add = torch.zeros(5, 3, dtype=torch.float64)
    count = torch.zeros(5)
    for s, d, we in zip(src.tolist(), dst.tolist(), w.tolist(), strict=True):
        add[d] += we * x[s]
        count[d] += 1
    mean = add / count.clamp(min=1).unsqueeze(1).double()
    torch.testing.assert_close(edge_list_aggregate(x, src, dst, 5, "add", w), add)
    torch.testing.assert_close(edge_list_aggregate(x, src, dst, 5, "mean", w), mean)
    assert (edge_list_aggregate(x, src, dst, 5, "mean")[[2, 4]] == 0).all()  # no incoming edges
    for aggr in ("mean", "add"):
        op = edge_list_operator(src, dst, 5, aggr, w)
        torch.testing.assert_close((op @ x.float()).double(), edge_list_aggregate(x, src, dst, 5, aggr, w))
    # differentiable in the edge weights (GRCN learns them)
    wg = w.clone().requires_grad_(True)
    edge_list_aggregate(x, src, dst, 5, "add", wg).sum().backward()
    torch.testing.assert_close(wg.grad, x[src].sum(dim=1))
    with pytest.raises(ValueError):
        edge_list_aggregate(x, src, dst, 5, "max")


def test_bipartite_edge_list_both_directions(ds):
    src, dst = bipartite_edge_list(ds.train_matrix)
    r = ds.train_matrix
    assert src.shape[0] == dst.shape[0] == 2 * r.nnz
    a = sp.csr_matrix((np.ones(src.shape[0]), (dst.numpy(), src.numpy())), shape=(N_USERS + N_ITEMS,) * 2)
    top = sp.bmat([[None, r], [r.T, None]]).toarray()
    np.testing.assert_array_equal(a.toarray(), top)


# ====================================================================== LayerGCN
def test_layergcn_scores_equal_literal_equations(ds):
    model = make("LayerGCN", "layergcn", ds, n_layers=3)
    model.eval()
    a = dense_adj(ds).double()
    e0 = torch.cat([model.user_emb.weight, model.item_emb.weight]).double().detach()
    x, h = e0, torch.zeros_like(e0)
    for _ in range(3):
        y = a @ x
        w = torch.stack([torch.dot(y[v], e0[v]) / (y[v].norm() * e0[v].norm()).clamp(min=1e-8) for v in range(len(y))])
        x = w.unsqueeze(1) * y
        h = h + x
    expected = h[:N_USERS] @ h[N_USERS:].T
    torch.testing.assert_close(model.full_scores(torch.arange(N_USERS)).double(), expected, rtol=1e-4, atol=1e-6)


def test_layergcn_fast_propagation_matches_autograd_reference():
    from modalrec.graphs import SparseOperator
    from modalrec.models.layergcn import layer_refined_propagation, layer_refined_propagation_reference

    r = sp.random(30, 20, density=0.1, format="csr", random_state=1)
    r.data[:] = 1.0
    adj = SparseOperator(sym_norm_adjacency(r), symmetric=True)
    assert (np.asarray(adj.to_scipy().sum(1)).ravel() == 0).any()  # isolated nodes: zero rows, w = 0
    torch.manual_seed(0)
    e0 = torch.randn(50, 8, requires_grad=True)
    weight = torch.randn(50, 8)
    fast = layer_refined_propagation(adj, e0, 4)
    slow = layer_refined_propagation_reference(adj, e0, 4)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    (g_fast,) = torch.autograd.grad((fast * weight).sum(), e0)
    (g_slow,) = torch.autograd.grad((slow * weight).sum(), e0)
    torch.testing.assert_close(g_fast, g_slow, rtol=1e-4, atol=1e-6)


def test_layergcn_loss_is_summed_bpr_plus_l2(ds):
    model = make("LayerGCN", "layergcn", ds, reg_weight=0.01, dropout=0.0)
    model.train()
    model.pre_epoch(0)
    batch = fixed_batch(ds)
    users, items = model.propagate(model.adj)
    u, p, n = users[batch.users], items[batch.pos], items[batch.neg]
    bpr = -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).sum()
    ego = [model.user_emb.weight[batch.users], model.item_emb.weight[batch.pos], model.item_emb.weight[batch.neg]]
    l2 = 0.5 * sum((t**2).sum() for t in ego)
    torch.testing.assert_close(model.loss(batch), bpr + 0.01 * l2)
    # summed, not averaged: doubling the batch doubles the loss
    double = Batch(*(torch.cat([t, t]) for t in batch))
    torch.testing.assert_close(model.loss(double), 2 * model.loss(batch))


def test_layergcn_pruned_graph_alternates_and_inference_uses_full_graph(ds, monkeypatch):
    model = make("LayerGCN", "layergcn", ds, dropout=0.2)
    n_edges = ds.train_matrix.nnz
    kept = math.floor(n_edges * 0.8)
    calls: list[str] = []
    real_pruned, real_random = graphs_module.pruned_sym_norm_adjacency, graphs_module.random_edge_dropout
    monkeypatch.setattr(
        graphs_module, "pruned_sym_norm_adjacency", lambda *a, **k: calls.append("degree") or real_pruned(*a, **k)
    )
    monkeypatch.setattr(
        graphs_module, "random_edge_dropout", lambda *a, **k: calls.append("random") or real_random(*a, **k)
    )
    full = model.full_scores(torch.arange(N_USERS)).clone()
    for epoch in range(4):
        model.train()
        model.pre_epoch(epoch)
        g = model.train_adj.to_scipy()
        assert g.nnz == 2 * kept  # both directions of every kept edge
        assert abs(g - g.T).max() < 1e-7
        # values are 1/sqrt(deg_u deg_i) with degrees of the KEPT graph
        coo = g.tocoo()
        deg = np.asarray((g > 0).sum(axis=1)).ravel()
        np.testing.assert_allclose(coo.data, 1 / np.sqrt(deg[coo.row] * deg[coo.col]), rtol=1e-5)
        model.eval()
        torch.testing.assert_close(model.full_scores(torch.arange(N_USERS)), full)  # scoring: full A_sym
    assert calls == ["degree", "random", "degree", "random"]
    no_drop = make("LayerGCN", "layergcn", ds, dropout=0.0)
    no_drop.pre_epoch(0)
    assert no_drop.train_adj is no_drop.adj


def test_layergcn_degree_sensitive_pruning_drops_high_degree_edges_more(ds):
    model = make("LayerGCN", "layergcn", ds, dropout=0.5)
    r = ds.train_matrix.tocoo()
    du = np.asarray(ds.train_matrix.sum(1)).ravel()
    di = np.asarray(ds.train_matrix.sum(0)).ravel()
    weight = du[r.row] * di[r.col]
    hi = weight > np.median(weight)
    keep_rate = {"degree": np.zeros(2), "random": np.zeros(2)}
    torch.manual_seed(0)
    for epoch in range(40):
        model.pre_epoch(epoch)
        g = model.train_adj.to_scipy()
        kept = np.asarray(g[r.row, N_USERS + r.col]).ravel() > 0
        key = "degree" if epoch % 2 == 0 else "random"
        keep_rate[key] += [kept[hi].mean(), kept[~hi].mean()]
    assert keep_rate["degree"][0] < keep_rate["degree"][1] - 0.5  # 20 epochs summed
    assert abs(keep_rate["random"][0] - keep_rate["random"][1]) < 0.5 * abs(
        keep_rate["degree"][0] - keep_rate["degree"][1]
    )


# ====================================================================== VBPR
def test_vbpr_feature_order_text_first():
    assert feature_order(["image", "text"]) == ["text", "image"]
    assert feature_order(["audio", "image", "text"]) == ["text", "image", "audio"]
    assert feature_order(["audio"]) == ["audio"]


def test_vbpr_scores_and_batch_projection_equal_full_projection(ds):
    model = make("VBPR", "vbpr", ds, reg_weight=0.5)
    x = torch.from_numpy(np.concatenate([ds.features["text"], ds.features["image"]], axis=1)).float()
    torch.testing.assert_close(model.features, x)
    with torch.no_grad():
        model.item_linear.bias.normal_()
    d = model.item_emb.shape[1]
    model.eval()
    c = x @ model.item_linear.weight.T + model.item_linear.bias
    expected = model.user_emb[:, :d] @ model.item_emb.T + model.user_emb[:, d:] @ c.T
    torch.testing.assert_close(model.full_scores(torch.arange(N_USERS)), expected.detach(), rtol=1e-5, atol=1e-5)

    # loss on the batch's unique items == loss with the full projection (values and gradients)
    model.train()
    batch = fixed_batch(ds)
    full_items = torch.cat([model.item_emb, model.item_linear(model.features)], dim=1)
    u, p, n = model.user_emb[batch.users], full_items[batch.pos], full_items[batch.neg]
    bpr = -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
    reg = (u.norm() + p.norm() + n.norm()) / len(batch.users)
    ref = bpr + 0.5 * reg
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    for _ in range(2):  # twice: the reused gather buffer must not change anything
        fast = model.loss(batch)
        grads = torch.autograd.grad(fast, list(model.parameters()))
        torch.testing.assert_close(fast, ref)
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)


# ====================================================================== MMGCN
def literal_mmgcn(model, dataset: Dataset) -> torch.Tensor:
    """The MMGCN forward (docs/models/mmgcn.md) by the letter.

    Aggregates the TRANSFORMED neighbours x_j G over the edge list (index_add).
    """
    src, dst = bipartite_edge_list(dataset.train_matrix)
    n = N_USERS + N_ITEMS
    act = F.leaky_relu
    outs = []
    for branch in model.branches:
        feats = branch.mlp(branch.features) if branch.mlp is not None else branch.features
        x = F.normalize(torch.cat([branch.preference, feats]), dim=1)
        for g, lin, gate in zip(branch.conv, branch.linear, branch.gate, strict=True):
            h = act(edge_list_aggregate(x @ g, src, dst, n, model.config.aggr_mode))
            x_hat = act(lin(x)) + model.id_embedding
            x = act(gate(torch.cat([h, x_hat], dim=1)))
        outs.append(x)
    return torch.stack(outs).mean(0)


@pytest.mark.parametrize("quirks", [False, True])
@pytest.mark.parametrize("aggr", ["mean", "add"])
def test_mmgcn_scores_equal_literal_forward(ds, quirks, aggr):
    # image (20-d) pre-projected, text (12-d) raw: the reference's v/t setup at a small scale
    model = make("MMGCN", "mmgcn", ds, reference_quirks=quirks, aggr_mode=aggr, project_min_dim=16, dim_latent=8)
    assert [b.mlp is not None for b in model.branches] == [True, False]
    model.eval()
    with torch.no_grad():
        o = literal_mmgcn(model, ds)
    expected = o[:N_USERS] @ o[N_USERS:].T
    torch.testing.assert_close(model.full_scores(torch.arange(N_USERS)), expected, rtol=1e-4, atol=1e-5)
    # gradients too (layer 1 runs per user/item half, constant halves cached without autograd)
    model.train()
    weight = torch.randn(N_USERS + N_ITEMS, model.id_embedding.shape[1])
    params = [p for p in model.parameters() if p.requires_grad]
    fast = torch.autograd.grad((model.forward_all() * weight).sum(), params)
    slow = torch.autograd.grad((literal_mmgcn(model, ds) * weight).sum(), params)
    for f, s in zip(fast, slow, strict=True):
        torch.testing.assert_close(f, s, rtol=1e-4, atol=1e-5)


def test_mmgcn_reference_quirks_freeze_id_and_preferences(ds):
    batch = fixed_batch(ds)
    for quirks in (True, False):
        model = make("MMGCN", "mmgcn", ds, reference_quirks=quirks, reg_weight=0.1)
        names = {n for n, _ in model.named_parameters()}
        frozen = ["id_embedding", *[f"branches.{i}.preference" for i in range(len(model.branches))]]
        assert all((name in names) != quirks for name in frozen)
        before = {k: v.clone() for k, v in model.state_dict().items() if k in frozen}
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        model.train()
        for _ in range(2):
            opt.zero_grad()
            model.loss(batch).backward()
            opt.step()
        after = model.state_dict()
        changed = [not torch.equal(before[k], after[k]) for k in frozen]
        assert all(changed) if not quirks else not any(changed)


def test_mmgcn_loss_terms(ds):
    batch = fixed_batch(ds)
    for quirks in (True, False):
        model = make("MMGCN", "mmgcn", ds, reference_quirks=quirks, reg_weight=0.1, project_min_dim=16, dim_latent=8)
        model.train()
        users, items = model.compute_representations()
        u, p, n = users[batch.users], items[batch.pos], items[batch.neg]
        bpr = -torch.log(torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()
        z = model.id_embedding
        user_rows = batch.users.repeat_interleave(2)
        item_rows = torch.stack([batch.pos, batch.neg], dim=1).reshape(-1) + N_USERS
        reg = (z[user_rows] ** 2 + z[item_rows] ** 2).mean()
        # reference: only the pre-projected (visual) preferences; paper mode: every modality's
        prefs = [model.branches[0]] if quirks else list(model.branches)
        reg = reg + sum((b.preference**2).mean() for b in prefs)
        torch.testing.assert_close(model.loss(batch), bpr + 0.1 * reg)


def test_mmgcn_constant_input_cache_follows_loaded_weights(ds):
    a = make("MMGCN", "mmgcn", ds, reference_quirks=True, project_min_dim=1000, seed=0).eval()
    b = make("MMGCN", "mmgcn", ds, reference_quirks=True, project_min_dim=1000, seed=1).eval()
    users = torch.arange(N_USERS)
    b.full_scores(users)  # fills b's cache of norm(x⁰) and Ā x⁰
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.full_scores(users), a.full_scores(users))
