"""SLMRec, BM3, FREEDOM (docs/models/): exact formulas vs. the fast paths, quirks, graphs; shared losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modalrec.config import resolve_config
from modalrec.data.dataset import Dataset
from modalrec.data.synth import generate_synthetic
from modalrec.graphs import GraphStore, build_knn_graph
from modalrec.models import build_model
from modalrec.models.base import Batch
from modalrec.models.freedom import modality_graph_weights
from modalrec.nn.losses import info_nce_in_batch, negative_cosine_loss
from modalrec.nn.propagation import propagate, split_nodes


@pytest.fixture(scope="module")
def ds() -> Dataset:
    g = generate_synthetic(n_users=80, n_items=50, modalities={"image": 16, "text": 8, "audio": 4}, seed=7)
    return Dataset(
        name="syn_c",
        n_users=g["n_users"],
        n_items=g["n_items"],
        users=g["users"],
        items=g["items"],
        labels=g["labels"],
        timestamps=g["timestamps"],
        features=g["features"],
    )


@pytest.fixture(scope="module")
def ds2(ds) -> Dataset:
    return ds.select_modalities(["image", "text"])


def make(name: str, dataset: Dataset, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = resolve_config(name.lower(), overrides=overrides)
    return build_model(name, dataset, cfg, GraphStore(dataset, cache_dir=False))


def batch_of(dataset: Dataset, n: int = 32, seed: int = 0) -> Batch:
    u, i = dataset.split("train")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(u), n, replace=False)
    neg = rng.integers(0, dataset.n_items, n)
    return Batch(torch.from_numpy(u[pick]), torch.from_numpy(i[pick]), torch.from_numpy(neg))


def step(model, batch: Batch, lr: float = 0.05) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    opt.zero_grad()
    model.loss(batch).backward()
    opt.step()


# ====================================================================== shared losses
def test_info_nce_in_batch_matches_per_row_formula():
    g = torch.Generator().manual_seed(0)
    a, c = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    for normalize in (True, False):
        x, y = (F.normalize(a, dim=1), F.normalize(c, dim=1)) if normalize else (a, c)
        logits = x @ y.T / 0.3
        expected = -torch.stack([logits[b, b] - torch.logsumexp(logits[b], 0) for b in range(6)]).mean()
        torch.testing.assert_close(info_nce_in_batch(a, c, 0.3, normalize=normalize), expected)
    assert not torch.allclose(info_nce_in_batch(a, c, 0.3, True), info_nce_in_batch(a, c, 0.3, False))
    # one-directional: swapping anchors and positives changes the value
    assert not torch.allclose(info_nce_in_batch(a, c, 0.3, False), info_nce_in_batch(c, a, 0.3, False))


def test_negative_cosine_loss():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g)
    expected = 1 - np.mean([float(x[b] @ y[b] / (x[b].norm() * y[b].norm())) for b in range(7)])
    assert math.isclose(float(negative_cosine_loss(x, y)), expected, rel_tol=1e-5)
    assert float(negative_cosine_loss(x, 3.0 * x)) == pytest.approx(0.0, abs=1e-6)


# ====================================================================== SLMRec
@pytest.mark.parametrize("layers", [0, 1, 2, 3])
def test_slmrec_views_equal_plain_lightgcn_per_view(ds, layers):
    model = make("SLMRec", ds, layer_num=layers)
    users, items = model.views()
    for k in range(model.n_views):
        item0 = model.item_emb.weight if k == 0 else model.projections[k - 1](getattr(model, f"feat_{k - 1}"))
        e0 = torch.cat([model.user_emb.weight, item0])
        ru, ri = split_nodes(propagate(model.graphs.norm_adj(), e0, layers, "mean"), ds.n_users)
        torch.testing.assert_close(model.view(users, k), ru, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.view(items, k), ri, rtol=1e-5, atol=1e-6)


def test_slmrec_features_are_normalised_and_frozen(ds2):
    model = make("SLMRec", ds2)
    for i in range(len(model.modalities)):
        torch.testing.assert_close(getattr(model, f"feat_{i}").norm(dim=1), torch.ones(ds2.n_items))
    assert all(not n.startswith("feat_") for n, _ in model.named_parameters())


def test_slmrec_scores_and_main_loss(ds2):
    model = make("SLMRec", ds2, ssl_alpha=0.0, reg_weight=0.0)
    batch = batch_of(ds2)
    users, items = model.views()
    h_u, h_i = model.fuse_user(users), model.fuse_item(items)
    model.train()
    logits = F.normalize(h_u[batch.users], dim=1) @ F.normalize(h_i[batch.pos], dim=1).T / 0.2
    expected = F.cross_entropy(logits, torch.arange(len(batch.users)))
    torch.testing.assert_close(model.loss(batch), expected, rtol=1e-5, atol=1e-6)
    model.eval()
    torch.testing.assert_close(model.full_scores(torch.tensor([0, 5])), (h_u[[0, 5]] @ h_i.T).detach())


def test_slmrec_fac_adds_one_contrast_per_modality(ds):
    model = make("SLMRec", ds)
    assert [model.modalities[i] for i in model.fac_order] == ["image", "audio", "text"]
    assert model.fac_chain[-1].out_features == model.dim // 2
    batch = batch_of(ds)
    _, items = model.views()
    z, total = model.view(items[batch.pos], 0), 0.0
    for k, i in enumerate(model.fac_order):
        z = model.fac_chain[k](z)
        e = model.fac_modal[k](model.view(items[batch.pos], 1 + i))
        total = total + F.cross_entropy(z @ e.T / 0.2, torch.arange(len(batch.pos)))
    torch.testing.assert_close(model.fac_loss(items[batch.pos]), total, rtol=1e-5, atol=1e-6)


def test_slmrec_reference_quirks_reg_weight(ds2):
    batch = batch_of(ds2)
    losses = {}
    for quirks in (False, True):
        for reg in (0.0, 0.5):
            model = make("SLMRec", ds2, reference_quirks=quirks, reg_weight=reg)
            model.train()
            losses[quirks, reg] = float(model.loss(batch).detach())
    assert losses[False, 0.5] > losses[False, 0.0]  # paper: reg penalises the batch's ego rows
    assert losses[True, 0.5] == losses[True, 0.0]  # reference: reg is read but never used


def test_slmrec_reference_quirks_stale_sigmoid_scores(ds2):
    batch = batch_of(ds2)
    paper, ref = make("SLMRec", ds2), make("SLMRec", ds2, reference_quirks=True)
    users = torch.arange(10)
    for model in (paper, ref):
        step(model, batch)
        model.eval()
    with torch.no_grad():
        ref.train(False)
        u, i = ref.views()
        current = ref.fuse_user(u)[users] @ ref.fuse_item(i).T
    ref_scores = ref.full_scores(users)
    assert ((ref_scores > 0) & (ref_scores < 1)).all()
    # the reference ranks with H from BEFORE the last optimiser step, not with the current weights
    assert not torch.allclose(ref_scores, torch.sigmoid(current), atol=1e-6)
    torch.testing.assert_close(ref_scores, torch.sigmoid(ref.stale_user[users] @ ref.stale_item.T))
    # paper mode: current weights, raw dot products
    with torch.no_grad():
        u, i = paper.views()
        torch.testing.assert_close(paper.full_scores(users), paper.fuse_user(u)[users] @ paper.fuse_item(i).T)
    # the stale tables travel with the state dict (restoring the best epoch restores its scores)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    step(ref, batch)
    ref.eval()
    assert not torch.allclose(ref.full_scores(users), ref_scores)
    ref.load_state_dict(state)
    ref.eval()
    torch.testing.assert_close(ref.full_scores(users), ref_scores)


# ====================================================================== BM3
def test_bm3_scores_are_predicted_lightgcn_plus_residual(ds2):
    model = make("BM3", ds2, n_layers=2)
    model.eval()
    e0 = torch.cat([model.user_emb.weight, model.item_emb.weight])
    hu, hi = split_nodes(propagate(model.graphs.norm_adj(), e0, 2, "mean"), ds2.n_users)
    hi = hi + model.item_emb.weight
    expected = model.predictor(hu[[1, 7]]) @ model.predictor(hi).T
    torch.testing.assert_close(model.full_scores(torch.tensor([1, 7])), expected.detach(), rtol=1e-5, atol=1e-6)


def test_bm3_loss_formula_without_dropout(ds):
    model = make("BM3", ds, dropout=0.0, reg_weight=0.3, cl_weight=2.0)
    model.train()
    batch = batch_of(ds)
    hu, hi = model.encode()
    pred = model.predictor
    u, p = batch.users, batch.pos

    def c(x, y):
        return 1 - F.cosine_similarity(x, y, dim=-1).mean()

    expected = c(pred(hu[u]), hi[p]) + c(pred(hi[p]), hu[u])
    expected = expected + 0.3 * (hu.norm() + hi.norm()) / ds.n_items
    cl = 0.0
    for feat, proj in zip(model.features, model.projections, strict=True):
        cm = proj(feat)
        cl = cl + c(pred(cm[p]), hi[p]) + c(pred(cm[p]), cm[p])
    expected = expected + 2.0 * cl
    torch.testing.assert_close(model.loss(batch), expected, rtol=1e-5, atol=1e-6)


def test_bm3_ignores_negatives_and_trains_raw_features(ds2):
    batch = batch_of(ds2)
    other = Batch(batch.users, batch.pos, torch.roll(batch.neg, 3))
    model = make("BM3", ds2)
    model.train()
    torch.manual_seed(5)
    a = model.loss(batch)
    torch.manual_seed(5)
    b = model.loss(other)
    assert float(a.detach()) == float(b.detach())
    a.backward()
    grad = model.features[0].grad
    touched = grad.abs().sum(1) > 0
    assert touched.any()
    assert set(torch.nonzero(touched).ravel().tolist()) <= set(batch.pos.tolist())
    # targets are dropout-perturbed in training (loss varies with the RNG when dropout > 0)
    torch.manual_seed(6)
    assert float(model.loss(batch).detach()) != float(a.detach())


# ====================================================================== FREEDOM
def test_modality_graph_weights():
    assert modality_graph_weights(["image", "text"], 0.1) == [0.1, 0.9]
    assert modality_graph_weights(["text", "image", "audio"], 0.1) == pytest.approx([0.45, 0.1, 0.45])
    assert modality_graph_weights(["image"], 0.1) == [1.0]
    assert modality_graph_weights(["text", "audio"], 0.1) == [0.5, 0.5]


def test_freedom_frozen_item_graph(ds2):
    k = 5
    model = make("FREEDOM", ds2, knn_k=k, mm_image_weight=0.2)
    s = model.item_graph.to_scipy().toarray()
    gv = build_knn_graph(ds2.features["image"], k, weighted=False).toarray()
    gt = build_knn_graph(ds2.features["text"], k, weighted=False).toarray()
    np.testing.assert_allclose(gv[gv > 0], 1 / k, rtol=1e-6)
    assert ((gv > 0).sum(1) == k).all()
    np.testing.assert_allclose(s, 0.2 * gv + 0.8 * gt, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(s.sum(1), 1.0, rtol=1e-5)
    assert ((s > 0).sum(1) <= 2 * k).all()
    assert not model.item_graph.a.requires_grad


def test_freedom_pruned_graph_per_epoch(ds2):
    rho = 0.7
    model = make("FREEDOM", ds2, dropout=rho)
    n_edges = ds2.train_matrix.nnz
    torch.manual_seed(3)
    model.pre_epoch(0)
    a = model.train_adj.to_scipy().tocsr()
    m = int(np.floor(n_edges * (1 - rho)))
    assert a.nnz == 2 * m
    assert abs(a - a.T).max() < 1e-7
    binary = (a != 0).astype(np.float64)
    deg = np.asarray(binary.sum(1)).ravel()
    coo = a.tocoo()
    np.testing.assert_allclose(coo.data, 1 / np.sqrt(deg[coo.row] * deg[coo.col]), rtol=1e-5)
    kept_first = a.copy()
    torch.manual_seed(3)
    model.pre_epoch(1)
    assert abs(model.train_adj.to_scipy() - kept_first).max() == 0  # seeded: reproducible
    model.pre_epoch(2)
    assert abs(model.train_adj.to_scipy() - kept_first).max() > 0  # resampled every epoch


def test_freedom_scores_and_loss(ds2):
    model = make("FREEDOM", ds2, reg_weight=0.01)
    torch.manual_seed(0)
    model.pre_epoch(0)
    batch = batch_of(ds2)
    h = model.item_graph @ model.item_emb.weight
    e0 = torch.cat([model.user_emb.weight, model.item_emb.weight])

    def bpr(u, p, n):
        return -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()

    hu, hi = split_nodes(propagate(model.train_adj, e0, 2, "mean"), ds2.n_users)
    hi = hi + h
    u = hu[batch.users]
    expected = bpr(u, hi[batch.pos], hi[batch.neg])
    for feat, proj in zip(model.features, model.projections, strict=True):
        cm = proj(feat)
        expected = expected + 0.01 * bpr(u, cm[batch.pos], cm[batch.neg])
    model.train()
    torch.testing.assert_close(model.loss(batch), expected, rtol=1e-5, atol=1e-6)
    # scoring: the FULL graph, not the pruned one
    hu, hi = split_nodes(propagate(model.graphs.norm_adj(), e0, 2, "mean"), ds2.n_users)
    model.eval()
    torch.testing.assert_close(model.full_scores(torch.tensor([2, 3])), (hu[[2, 3]] @ (hi + h).T).detach())
