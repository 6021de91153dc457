"""ID-only models (docs/models/: BPR, LightGCN, NGCF, LayerGCN) against literal computations of their equations.

BPR, LightGCN and NGCF are checked by the contract every model keeps (test_model_contract.py); here LayerGCN's
layer-refined propagation, its summed loss and its degree-sensitive edge pruning, on a small graph.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

import modalrec.graphs as graphs_module
from modalrec.data.dataset import Dataset
from modalrec.graphs import sym_norm_adjacency
from modalrec.models.base import Batch


def dense_adj(dataset: Dataset) -> torch.Tensor:
    """The symmetric-normalised bipartite adjacency Â of the training interactions, dense."""
    return torch.from_numpy(sym_norm_adjacency(dataset.train_matrix).toarray())


# ====================================================================== LayerGCN
def test_layergcn_scores_equal_literal_equations(small2, build):
    model = build("LayerGCN", small2, n_layers=3)
    model.eval()
    a = dense_adj(small2).double()
    e0 = torch.cat([model.user_emb.weight, model.item_emb.weight]).double().detach()
    x, h = e0, torch.zeros_like(e0)
    for _ in range(3):
        y = a @ x
        w = torch.stack([torch.dot(y[v], e0[v]) / (y[v].norm() * e0[v].norm()).clamp(min=1e-8) for v in range(len(y))])
        x = w.unsqueeze(1) * y
        h = h + x
    expected = h[: small2.n_users] @ h[small2.n_users :].T
    torch.testing.assert_close(model.full_scores(torch.arange(small2.n_users)).double(), expected, rtol=1e-4, atol=1e-6)


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


def test_layergcn_loss_is_summed_bpr_plus_l2(small2, build, fixed_batch):
    model = build("LayerGCN", small2, reg_weight=0.01, dropout=0.0)
    model.train()
    model.pre_epoch(0)
    batch = fixed_batch(small2)
    users, items = model.propagate(model.adj)
    u, p, n = users[batch.users], items[batch.pos], items[batch.neg]
    bpr = -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).sum()
    ego = [model.user_emb.weight[batch.users], model.item_emb.weight[batch.pos], model.item_emb.weight[batch.neg]]
    l2 = 0.5 * sum((t**2).sum() for t in ego)
    torch.testing.assert_close(model.loss(batch), bpr + 0.01 * l2)
    # summed, not averaged: doubling the batch doubles the loss
    double = Batch(*(torch.cat([t, t]) for t in batch))
    torch.testing.assert_close(model.loss(double), 2 * model.loss(batch))


def test_layergcn_pruned_graph_alternates_and_inference_uses_full_graph(small2, monkeypatch, build):
    model = build("LayerGCN", small2, dropout=0.2)
    n_edges = small2.train_matrix.nnz
    kept = math.floor(n_edges * 0.8)
    calls: list[str] = []
    real_pruned, real_random = graphs_module.pruned_sym_norm_adjacency, graphs_module.random_edge_dropout
    monkeypatch.setattr(
        graphs_module, "pruned_sym_norm_adjacency", lambda *a, **k: calls.append("degree") or real_pruned(*a, **k)
    )
    monkeypatch.setattr(
        graphs_module, "random_edge_dropout", lambda *a, **k: calls.append("random") or real_random(*a, **k)
    )
    full = model.full_scores(torch.arange(small2.n_users)).clone()
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
        torch.testing.assert_close(model.full_scores(torch.arange(small2.n_users)), full)  # scoring: full A_sym
    assert calls == ["degree", "random", "degree", "random"]
    no_drop = build("LayerGCN", small2, dropout=0.0)
    no_drop.pre_epoch(0)
    assert no_drop.train_adj is no_drop.adj


def test_layergcn_degree_sensitive_pruning_drops_high_degree_edges_more(small2, build):
    model = build("LayerGCN", small2, dropout=0.5)
    r = small2.train_matrix.tocoo()
    du = np.asarray(small2.train_matrix.sum(1)).ravel()
    di = np.asarray(small2.train_matrix.sum(0)).ravel()
    weight = du[r.row] * di[r.col]
    hi = weight > np.median(weight)
    keep_rate = {"degree": np.zeros(2), "random": np.zeros(2)}
    torch.manual_seed(0)
    for epoch in range(40):
        model.pre_epoch(epoch)
        g = model.train_adj.to_scipy()
        kept = np.asarray(g[r.row, small2.n_users + r.col]).ravel() > 0
        key = "degree" if epoch % 2 == 0 else "random"
        keep_rate[key] += [kept[hi].mean(), kept[~hi].mean()]
    assert keep_rate["degree"][0] < keep_rate["degree"][1] - 0.5  # 20 epochs summed
    assert abs(keep_rate["random"][0] - keep_rate["random"][1]) < 0.5 * abs(
        keep_rate["degree"][0] - keep_rate["degree"][1]
    )
