"""Self-supervised models (docs/models/: SLMRec, BM3, MMSSL, DA-MRS, LGMRec): exact formulas vs. the fast
paths, reference-code quirks, graphs and checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modalrec.data.dataset import Dataset
from modalrec.models.base import Batch
from modalrec.nn.losses import grace_info_nce
from modalrec.nn.propagation import propagate, split_nodes


@pytest.fixture(scope="module")
def mid2(synthetic) -> Dataset:
    """80 users × 50 items generated with image (16-d) and text (8-d) features only."""
    return synthetic(80, 50, {"image": 16, "text": 8}, seed=7)


def step(model, batch: Batch, lr: float = 0.05) -> None:
    """One Adam step of ``model`` on ``batch`` (a fresh optimiser, so no state carries over)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    opt.zero_grad()
    model.loss(batch).backward()
    opt.step()


def random_batch(dataset: Dataset, b: int, seed: int) -> Batch:
    """``b`` seeded uniform (user, item, item) triples, interactions or not (the shapes a loss sees)."""
    g = torch.Generator().manual_seed(seed)
    return Batch(
        torch.randint(0, dataset.n_users, (b,), generator=g),
        torch.randint(0, dataset.n_items, (b,), generator=g),
        torch.randint(0, dataset.n_items, (b,), generator=g),
    )


# ====================================================================== SLMRec
@pytest.mark.parametrize("layers", [0, 1, 2, 3])
def test_slmrec_views_equal_plain_lightgcn_per_view(mid3, layers, build):
    model = build("SLMRec", mid3, layer_num=layers)
    users, items = model.views()
    for k in range(model.n_views):
        item0 = (
            model.item_emb.weight if k == 0 else model.projections[k - 1](model.feature_buffer(model.modalities[k - 1]))
        )
        e0 = torch.cat([model.user_emb.weight, item0])
        ru, ri = split_nodes(propagate(model.graphs.norm_adj(), e0, layers, "mean"), mid3.n_users)
        torch.testing.assert_close(model.view(users, k), ru, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.view(items, k), ri, rtol=1e-5, atol=1e-6)


def test_slmrec_features_are_normalised_and_frozen(mid3_as2, build):
    model = build("SLMRec", mid3_as2)
    for m in model.modalities:
        torch.testing.assert_close(model.feature_buffer(m).norm(dim=1), torch.ones(mid3_as2.n_items))
    assert all(not n.startswith("feat_") for n, _ in model.named_parameters())


def test_slmrec_scores_and_main_loss(mid3_as2, build, fixed_batch):
    model = build("SLMRec", mid3_as2, ssl_alpha=0.0, reg_weight=0.0)
    batch = fixed_batch(mid3_as2, 32, unseen_negatives=False)
    users, items = model.views()
    h_u, h_i = model.fuse_user(users), model.fuse_item(items)
    model.train()
    logits = F.normalize(h_u[batch.users], dim=1) @ F.normalize(h_i[batch.pos], dim=1).T / 0.2
    expected = F.cross_entropy(logits, torch.arange(len(batch.users)))
    torch.testing.assert_close(model.loss(batch), expected, rtol=1e-5, atol=1e-6)
    model.eval()
    torch.testing.assert_close(model.full_scores(torch.tensor([0, 5])), (h_u[[0, 5]] @ h_i.T).detach())


def test_slmrec_fac_adds_one_contrast_per_modality(mid3, build, fixed_batch):
    model = build("SLMRec", mid3)
    assert [model.modalities[i] for i in model.fac_order] == ["image", "audio", "text"]
    assert model.fac_chain[-1].out_features == model.dim // 2
    batch = fixed_batch(mid3, 32, unseen_negatives=False)
    _, items = model.views()
    z, total = model.view(items[batch.pos], 0), 0.0
    for k, i in enumerate(model.fac_order):
        z = model.fac_chain[k](z)
        e = model.fac_modal[k](model.view(items[batch.pos], 1 + i))
        total = total + F.cross_entropy(z @ e.T / 0.2, torch.arange(len(batch.pos)))
    torch.testing.assert_close(model.fac_loss(items[batch.pos]), total, rtol=1e-5, atol=1e-6)


def test_slmrec_reference_quirks_reg_weight(mid3_as2, build, fixed_batch):
    batch = fixed_batch(mid3_as2, 32, unseen_negatives=False)
    losses = {}
    for quirks in (False, True):
        for reg in (0.0, 0.5):
            model = build("SLMRec", mid3_as2, reference_quirks=quirks, reg_weight=reg)
            model.train()
            losses[quirks, reg] = float(model.loss(batch).detach())
    assert losses[False, 0.5] > losses[False, 0.0]  # paper: reg penalises the batch's ego rows
    assert losses[True, 0.5] == losses[True, 0.0]  # reference: reg is read but never used


def test_slmrec_reference_quirks_stale_sigmoid_scores(mid3_as2, build, fixed_batch):
    batch = fixed_batch(mid3_as2, 32, unseen_negatives=False)
    paper, ref = build("SLMRec", mid3_as2), build("SLMRec", mid3_as2, reference_quirks=True)
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
def test_bm3_scores_are_predicted_lightgcn_plus_residual(mid3_as2, build):
    model = build("BM3", mid3_as2, n_layers=2)
    model.eval()
    e0 = torch.cat([model.user_emb.weight, model.item_emb.weight])
    hu, hi = split_nodes(propagate(model.graphs.norm_adj(), e0, 2, "mean"), mid3_as2.n_users)
    hi = hi + model.item_emb.weight
    expected = model.predictor(hu[[1, 7]]) @ model.predictor(hi).T
    torch.testing.assert_close(model.full_scores(torch.tensor([1, 7])), expected.detach(), rtol=1e-5, atol=1e-6)


def test_bm3_loss_formula_without_dropout(mid3, build, fixed_batch):
    model = build("BM3", mid3, dropout=0.0, reg_weight=0.3, cl_weight=2.0)
    model.train()
    batch = fixed_batch(mid3, 32, unseen_negatives=False)
    hu, hi = model.encode()
    pred = model.predictor
    u, p = batch.users, batch.pos

    def c(x, y):
        return 1 - F.cosine_similarity(x, y, dim=-1).mean()

    expected = c(pred(hu[u]), hi[p]) + c(pred(hi[p]), hu[u])
    expected = expected + 0.3 * (hu.norm() + hi.norm()) / mid3.n_items
    cl = 0.0
    for feat, proj in zip(model.features, model.projections, strict=True):
        cm = proj(feat)
        cl = cl + c(pred(cm[p]), hi[p]) + c(pred(cm[p]), cm[p])
    expected = expected + 2.0 * cl
    torch.testing.assert_close(model.loss(batch), expected, rtol=1e-5, atol=1e-6)


def test_bm3_ignores_negatives_and_trains_raw_features(mid3_as2, build, fixed_batch):
    batch = fixed_batch(mid3_as2, 32, unseen_negatives=False)
    other = Batch(batch.users, batch.pos, torch.roll(batch.neg, 3))
    model = build("BM3", mid3_as2)
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


# ====================================================================== LGMRec
def test_lgmrec_quirk_switches_evaluation_noise(mid2, build):
    clean = build("LGMRec", mid2, seed=1)
    quirk = build("LGMRec", mid2, seed=1, reference_quirks=True)
    clean.eval()
    quirk.eval()
    users = torch.arange(10)
    s_clean, s_quirk = clean.full_scores(users), quirk.full_scores(users)
    assert not torch.allclose(s_clean, s_quirk)
    quirk._cache = None  # recompute: the seeded evaluation noise is reproducible
    torch.testing.assert_close(quirk.full_scores(users), s_quirk)


def test_lgmrec_scores_equal_direct_forward(mid2, build):
    model = build("LGMRec", mid2, seed=2, n_hyper_layer=2)
    model.eval()
    cfg = model.config
    with torch.no_grad():
        adj = model.adj.a.to_dense()
        r = torch.as_tensor(mid2.train_matrix.toarray(), dtype=torch.float32).clamp(max=1)
        e0 = torch.cat([model.user_emb.weight, model.item_emb.weight])
        layers = [e0]
        for _ in range(cfg.n_ui_layers):
            layers.append(adj @ layers[-1])
        cge = torch.stack(layers).mean(0)
        out = cge.clone()
        gl = torch.zeros_like(cge)
        for m in model.modalities:
            x = getattr(model, f"feat_{m}")
            f_i = x @ model.proj[m]
            f_u = (r @ f_i) / r.sum(1, keepdim=True).clamp(min=1)
            h = torch.cat([f_u, f_i])
            for _ in range(cfg.n_mm_layers):
                h = adj @ h
            out = out + F.normalize(h, dim=1)
            h_i = torch.softmax(x @ model.hyper[m] / cfg.tau, dim=1)
            h_u = torch.softmax(r @ (x @ model.hyper[m]) / cfg.tau, dim=1)
            y = cge[mid2.n_users :]
            for _ in range(cfg.n_hyper_layer):
                lam = h_i.T @ y
                y = h_i @ lam
                g_u = h_u @ lam
            gl = gl + torch.cat([g_u, y])
        out = out + cfg.alpha * F.normalize(gl, dim=1)
        expect = out[: mid2.n_users] @ out[mid2.n_users :].T
    torch.testing.assert_close(model.full_scores(torch.arange(mid2.n_users)), expect, rtol=1e-4, atol=1e-5)


def test_lgmrec_contrastive_term_is_summed_over_batch(mid2, build):
    batch = random_batch(mid2, 32, 0)
    losses = []
    for w in (0.0, 1.0):
        model = build("LGMRec", mid2, seed=3, cl_weight=w, keep_rate=1.0)
        torch.manual_seed(9)  # same Gumbel noise in both forwards
        losses.append(float(model.loss(batch).detach()))
    # summed over 32 users + 32 items, each term ≥ 0 and ~log(n): far above a batch mean
    assert losses[1] - losses[0] > 32 * 0.5


# ====================================================================== DA-MRS
def test_damrs_graph_structure(mid2, build):
    model = build("DA-MRS", mid2, knn_k=5)
    for m in mid2.features:
        g = model.item_graphs[m].to_scipy()
        counts = np.diff(g.indptr)
        assert counts.max() <= 5 and counts.min() >= 1
        coo = g.tocoo()
        np.testing.assert_allclose(coo.data, 1 / np.sqrt(counts[coo.row] * counts[coo.col]), rtol=1e-6)
    iib = model.item_graphs["behaviour"].to_scipy()
    assert (iib.diagonal() > 0).all()
    assert np.diff(iib.indptr).max() <= 3  # top-2 partners + self-loop


def test_damrs_scores_and_denoised_bpr(mid2, build):
    model = build("DA-MRS", mid2, kl_weight=0.0, neighbor_weight=0.0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(30.0)  # away from σ ≈ 1/2 so the weights are informative
    h_u, h_i, views = model.forward_all()
    items = h_i + torch.stack(views).mean(0)
    model.eval()
    torch.testing.assert_close(model.full_scores(torch.arange(5)), h_u[:5] @ items.T)
    model.train()
    batch = random_batch(mid2, 64, 1)
    u = h_u[batch.users]
    q_p = torch.stack([torch.sigmoid((u * F.normalize(v[batch.pos], dim=1)).sum(1)) for v in views])
    q_n = torch.stack([torch.sigmoid((u * F.normalize(v[batch.neg], dim=1)).sum(1)) for v in views])
    w_p = (q_p.mean(0) * torch.exp(-q_p.var(0)) ** 2).clamp(0, 1)
    w_n = (q_p.max(0).values - q_n.mean()).clamp(0, 1) * (q_p.mean(0) < q_n.mean()).float()
    d = (u * items[batch.pos]).sum(1) - (u * items[batch.neg]).sum(1)
    expect = -(w_p * F.logsigmoid(d) + w_n * F.logsigmoid(-d)).mean()
    assert (w_n > 0).any()
    torch.testing.assert_close(model.loss(batch), expect, rtol=1e-5, atol=1e-6)


def test_damrs_alignment_terms_contribute(mid2, build):
    batch = random_batch(mid2, 64, 2)
    base = build("DA-MRS", mid2, kl_weight=0.0, neighbor_weight=0.0).loss(batch).item()
    nd = build("DA-MRS", mid2, kl_weight=0.0, neighbor_weight=1.0).loss(batch).item()
    assert nd > base  # the ND loss is positive


# ====================================================================== MMSSL
def test_mmssl_critic_outside_parameters_and_stepped_in_loss(mid2, build):
    model = build("MMSSL", mid2, train_batch_size=32)
    critic_ids = {id(p) for p in model.critic.parameters()}
    assert not critic_ids & {id(p) for p in model.parameters()}
    before = [p.detach().clone() for p in model.critic.parameters()]
    model.train()
    model.pre_epoch(0)
    loss = model.loss(random_batch(mid2, 32, 0))
    after = list(model.critic.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    critic_grads = [p.grad.clone() for p in after]  # left by the critic's own step
    loss.backward()
    for p, g in zip(after, critic_grads, strict=True):  # the generator loss does not reach the critic
        torch.testing.assert_close(p.grad, g)
    assert model.user_emb.weight.grad is not None


def test_mmssl_quirk_empties_graphs_and_freezes_contrastive_loss(mid2, build):
    quirk = build("MMSSL", mid2, reference_quirks=True, train_batch_size=32, m_topk_rate=0.05)
    paper = build("MMSSL", mid2, train_batch_size=32, m_topk_rate=0.05)
    n_b = quirk.n_batches
    for model in (quirk, paper):
        model.train()
        model.pre_epoch(0)
        for b in range(n_b):
            model.loss(random_batch(mid2, 32, b))
            if model is quirk and b == 0:  # batch 1 uses batch 0's generated top-k (2 items per user)
                assert quirk.gen_users_image.numel() <= 32 * 2 and quirk.gen_users_image.numel() > 0
    assert quirk.gen_users_image.numel() == 0 and quirk.gen_users_text.numel() == 0
    assert paper.gen_users_image.numel() > 0
    # paper mode: the generated graph holds top-2 unobserved items of many users
    r = mid2.train_matrix.tocsr()
    pairs = zip(paper.gen_users_image.tolist(), paper.gen_items_image.tolist(), strict=True)
    assert not any(r[u, i] for u, i in pairs)
    # empty graphs: ū_m = 0, the contrastive term is the constant log(2B − 1)
    out = quirk.forward_all()
    assert all(float(out["ubar_m"][m].abs().sum()) == 0.0 for m in quirk.modalities)
    users = torch.arange(20)
    cl = grace_info_nce(out["ubar_m"]["image"][users], out["h_u"][users], quirk.config.tau)
    assert math.isclose(cl.item(), math.log(2 * 20 - 1), rel_tol=1e-6)


def test_mmssl_fusion_quirk(mid2, build):
    quirk = build("MMSSL", mid2, seed=4, reference_quirks=True)
    paper = build("MMSSL", mid2, seed=4)
    xs = [torch.randn(6, 64), torch.randn(6, 64)]
    wsum = quirk.w_cat.view(4, 64, 64).sum(0)
    torch.testing.assert_close(quirk._fuse(xs), torch.stack([x @ wsum for x in xs]).mean(0))
    assert not torch.allclose(paper._fuse(xs), quirk._fuse(xs))
    # with identical modality vectors attention cannot matter: both reduce to x·Wsum
    same = [xs[0], xs[0].clone()]
    torch.testing.assert_close(paper._fuse(same), quirk._fuse(same), rtol=1e-5, atol=1e-5)


def test_mmssl_checkpoint_round_trip(mid2, build):
    model = build("MMSSL", mid2, seed=5, train_batch_size=32, m_topk_rate=0.05)
    model.train()
    model.pre_epoch(0)
    for b in range(model.n_batches):
        model.loss(random_batch(mid2, 32, b))
    model.eval()
    scores = model.full_scores(torch.arange(mid2.n_users))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert any(k.startswith("critic.") for k in state)
    fresh = build("MMSSL", mid2, seed=6, train_batch_size=32)
    assert fresh.gen_users_image.numel() != model.gen_users_image.numel()
    fresh.load_state_dict(state)
    fresh.eval()
    torch.testing.assert_close(fresh.full_scores(torch.arange(mid2.n_users)), scores)
    for a, b in zip(fresh.critic.state_dict().values(), model.critic.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
