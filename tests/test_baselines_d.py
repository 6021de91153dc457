"""MMSSL, DA-MRS, LGMRec (docs/models/): shared blocks against brute force, quirks, graphs, checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from modalrec.config import resolve_config
from modalrec.data.dataset import Dataset
from modalrec.data.synth import generate_synthetic
from modalrec.graphs import (
    GraphStore,
    co_interaction_graph,
    cross_modal_denoised_knn,
    left_norm_bipartite_operators,
)
from modalrec.models import build_model
from modalrec.models.base import Batch
from modalrec.nn.losses import (
    grace_info_nce,
    neighbour_discrimination_nce,
    wgan_gradient_penalty,
    wgan_gradient_penalty_linear_first,
)
from modalrec.nn.propagation import gumbel_softmax_memberships, hypergraph_propagate


@pytest.fixture(scope="module")
def ds() -> Dataset:
    g = generate_synthetic(n_users=80, n_items=50, modalities={"image": 16, "text": 8}, seed=7)
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


def random_batch(dataset: Dataset, b: int, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        torch.randint(0, dataset.n_users, (b,), generator=g),
        torch.randint(0, dataset.n_items, (b,), generator=g),
        torch.randint(0, dataset.n_items, (b,), generator=g),
    )


# ====================================================================== shared blocks
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


def test_gumbel_memberships_and_hypergraph_propagation():
    logits = torch.randn(10, 4)
    clean = gumbel_softmax_memberships(logits, 0.2, noise=False)
    torch.testing.assert_close(clean, torch.softmax(logits / 0.2, dim=1))
    a = gumbel_softmax_memberships(logits, 0.2, True, torch.Generator().manual_seed(3))
    b = gumbel_softmax_memberships(logits, 0.2, True, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, clean)
    torch.testing.assert_close(a.sum(1), torch.ones(10))
    h_i, h_u, y0 = torch.rand(10, 4), torch.rand(7, 4), torch.randn(10, 3)
    g_u, g_i = hypergraph_propagate(h_i, h_u, y0, 2)
    lam1 = h_i.T @ y0
    lam2 = h_i.T @ (h_i @ lam1)
    torch.testing.assert_close(g_i, h_i @ lam2)
    torch.testing.assert_close(g_u, h_u @ lam2)


def _grace_direct(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    refl, betw = torch.exp(a @ a.T / tau), torch.exp(a @ b.T / tau)
    return -torch.log(betw.diag() / (refl.sum(1) + betw.sum(1) - refl.diag())).mean()


def test_grace_info_nce_blocked_equals_direct_and_constant_for_zeros():
    z1 = torch.randn(13, 5, requires_grad=True)
    z2 = torch.randn(13, 5, requires_grad=True)
    got = grace_info_nce(z1, z2, 0.5, block_size=4)
    ref = _grace_direct(z1, z2, 0.5)
    torch.testing.assert_close(got, ref)
    g1 = torch.autograd.grad(got, [z1, z2])
    g2 = torch.autograd.grad(ref, [z1, z2])
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b)
    zero = grace_info_nce(torch.zeros(13, 5), z2.detach(), 0.5)
    assert math.isclose(float(zero), math.log(2 * 13 - 1), rel_tol=1e-6)


def test_neighbour_discrimination_blocked_equals_direct():
    gen = torch.Generator().manual_seed(2)
    tables = [F.normalize(torch.randn(30, 4, generator=gen), dim=1).requires_grad_(True) for _ in range(3)]
    idx = torch.tensor([0, 3, 5, 7, 11, 29])
    got = neighbour_discrimination_nce([t[idx] for t in tables], tables, 0.2, 5, block_size=4)
    total = 0.0
    q = [torch.softmax(t[idx] @ t.T, dim=1).detach() for t in tables]
    for m in range(3):
        pos_mm = torch.topk(sum(q) + q[m], 5, dim=1).indices
        pos_s = torch.topk(q[m].scatter(1, pos_mm, 0.0), 5, dim=1).indices
        e = torch.exp(tables[m][idx] @ tables[m].T / 0.2)
        tot, mm, sg = e.sum(1), e.gather(1, pos_mm).sum(1), e.gather(1, pos_s).sum(1)
        total = total + (-torch.log(mm / tot + 1e-9) - torch.log(sg / (tot - mm) + 1e-9)).mean()
    ref = total / 3
    torch.testing.assert_close(got, ref)
    for a, b in zip(torch.autograd.grad(got, tables), torch.autograd.grad(ref, tables), strict=True):
        torch.testing.assert_close(a, b)


def test_wgan_gradient_penalty_of_a_linear_critic():
    w = torch.tensor([3.0, 4.0])
    gp = wgan_gradient_penalty(lambda x: x @ w, torch.randn(6, 2), torch.randn(6, 2))
    assert math.isclose(float(gp), (5.0 - 1.0) ** 2, rel_tol=1e-6)


def test_wgan_gradient_penalty_linear_first_equals_plain():
    torch.manual_seed(0)
    first, rest_net = torch.nn.Linear(6, 4), torch.nn.Sequential(torch.nn.Tanh(), torch.nn.Linear(4, 1))
    real, fake = torch.randn(5, 6), torch.randn(5, 6)

    def critic(x):
        return rest_net(first(x)).squeeze(-1)

    torch.manual_seed(1)
    plain = wgan_gradient_penalty(critic, real, fake)
    g_plain = torch.autograd.grad(plain, [first.weight, first.bias])
    torch.manual_seed(1)
    fast = wgan_gradient_penalty_linear_first(lambda h: rest_net(h).squeeze(-1), first.weight, first(real), first(fake))
    g_fast = torch.autograd.grad(fast, [first.weight, first.bias])
    torch.testing.assert_close(fast, plain)
    for a, b in zip(g_fast, g_plain, strict=True):
        torch.testing.assert_close(a, b)


# ====================================================================== LGMRec
def test_lgmrec_quirk_switches_evaluation_noise(ds):
    clean = make("LGMRec", "lgmrec", ds, seed=1)
    quirk = make("LGMRec", "lgmrec", ds, seed=1, reference_quirks=True)
    clean.eval()
    quirk.eval()
    users = torch.arange(10)
    s_clean, s_quirk = clean.full_scores(users), quirk.full_scores(users)
    assert not torch.allclose(s_clean, s_quirk)
    quirk._cache = None  # recompute: the seeded evaluation noise is reproducible
    torch.testing.assert_close(quirk.full_scores(users), s_quirk)


def test_lgmrec_scores_equal_direct_forward(ds):
    model = make("LGMRec", "lgmrec", ds, seed=2, n_hyper_layer=2)
    model.eval()
    cfg = model.config
    with torch.no_grad():
        adj = model.adj.a.to_dense()
        r = torch.as_tensor(ds.train_matrix.toarray(), dtype=torch.float32).clamp(max=1)
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
            y = cge[ds.n_users :]
            for _ in range(cfg.n_hyper_layer):
                lam = h_i.T @ y
                y = h_i @ lam
                g_u = h_u @ lam
            gl = gl + torch.cat([g_u, y])
        out = out + cfg.alpha * F.normalize(gl, dim=1)
        expect = out[: ds.n_users] @ out[ds.n_users :].T
    torch.testing.assert_close(model.full_scores(torch.arange(ds.n_users)), expect, rtol=1e-4, atol=1e-5)


def test_lgmrec_contrastive_term_is_summed_over_batch(ds):
    batch = random_batch(ds, 32, 0)
    losses = []
    for w in (0.0, 1.0):
        model = make("LGMRec", "lgmrec", ds, seed=3, cl_weight=w, keep_rate=1.0)
        torch.manual_seed(9)  # same Gumbel noise in both forwards
        losses.append(float(model.loss(batch).detach()))
    # summed over 32 users + 32 items, each term ≥ 0 and ~log(n): far above a batch mean
    assert losses[1] - losses[0] > 32 * 0.5


# ====================================================================== DA-MRS
def test_damrs_graph_structure(ds):
    model = make("DA-MRS", "damrs", ds, knn_k=5)
    for m in ds.features:
        g = model.item_graphs[m].to_scipy()
        counts = np.diff(g.indptr)
        assert counts.max() <= 5 and counts.min() >= 1
        coo = g.tocoo()
        np.testing.assert_allclose(coo.data, 1 / np.sqrt(counts[coo.row] * counts[coo.col]), rtol=1e-6)
    iib = model.item_graphs["behaviour"].to_scipy()
    assert (iib.diagonal() > 0).all()
    assert np.diff(iib.indptr).max() <= 3  # top-2 partners + self-loop


def test_damrs_scores_and_denoised_bpr(ds):
    model = make("DA-MRS", "damrs", ds, kl_weight=0.0, neighbor_weight=0.0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(30.0)  # away from σ ≈ 1/2 so the weights are informative
    h_u, h_i, views = model.forward_all()
    items = h_i + torch.stack(views).mean(0)
    model.eval()
    torch.testing.assert_close(model.full_scores(torch.arange(5)), h_u[:5] @ items.T)
    model.train()
    batch = random_batch(ds, 64, 1)
    u = h_u[batch.users]
    q_p = torch.stack([torch.sigmoid((u * F.normalize(v[batch.pos], dim=1)).sum(1)) for v in views])
    q_n = torch.stack([torch.sigmoid((u * F.normalize(v[batch.neg], dim=1)).sum(1)) for v in views])
    w_p = (q_p.mean(0) * torch.exp(-q_p.var(0)) ** 2).clamp(0, 1)
    w_n = (q_p.max(0).values - q_n.mean()).clamp(0, 1) * (q_p.mean(0) < q_n.mean()).float()
    d = (u * items[batch.pos]).sum(1) - (u * items[batch.neg]).sum(1)
    expect = -(w_p * F.logsigmoid(d) + w_n * F.logsigmoid(-d)).mean()
    assert (w_n > 0).any()
    torch.testing.assert_close(model.loss(batch), expect, rtol=1e-5, atol=1e-6)


def test_damrs_alignment_terms_contribute(ds):
    batch = random_batch(ds, 64, 2)
    base = make("DA-MRS", "damrs", ds, kl_weight=0.0, neighbor_weight=0.0).loss(batch).item()
    nd = make("DA-MRS", "damrs", ds, kl_weight=0.0, neighbor_weight=1.0).loss(batch).item()
    assert nd > base  # the ND loss is positive


# ====================================================================== MMSSL
def test_mmssl_critic_outside_parameters_and_stepped_in_loss(ds):
    model = make("MMSSL", "mmssl", ds, train_batch_size=32)
    critic_ids = {id(p) for p in model.critic.parameters()}
    assert not critic_ids & {id(p) for p in model.parameters()}
    before = [p.detach().clone() for p in model.critic.parameters()]
    model.train()
    model.pre_epoch(0)
    loss = model.loss(random_batch(ds, 32, 0))
    after = list(model.critic.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    critic_grads = [p.grad.clone() for p in after]  # left by the critic's own step
    loss.backward()
    for p, g in zip(after, critic_grads, strict=True):  # the generator loss does not reach the critic
        torch.testing.assert_close(p.grad, g)
    assert model.user_emb.weight.grad is not None


def test_mmssl_quirk_empties_graphs_and_freezes_contrastive_loss(ds):
    quirk = make("MMSSL", "mmssl", ds, reference_quirks=True, train_batch_size=32, m_topk_rate=0.05)
    paper = make("MMSSL", "mmssl", ds, train_batch_size=32, m_topk_rate=0.05)
    n_b = quirk.n_batches
    for model in (quirk, paper):
        model.train()
        model.pre_epoch(0)
        for b in range(n_b):
            model.loss(random_batch(ds, 32, b))
            if model is quirk and b == 0:  # batch 1 uses batch 0's generated top-k (2 items per user)
                assert quirk.gen_users_image.numel() <= 32 * 2 and quirk.gen_users_image.numel() > 0
    assert quirk.gen_users_image.numel() == 0 and quirk.gen_users_text.numel() == 0
    assert paper.gen_users_image.numel() > 0
    # paper mode: the generated graph holds top-2 unobserved items of many users
    r = ds.train_matrix.tocsr()
    pairs = zip(paper.gen_users_image.tolist(), paper.gen_items_image.tolist(), strict=True)
    assert not any(r[u, i] for u, i in pairs)
    # empty graphs: ū_m = 0, the contrastive term is the constant log(2B − 1)
    out = quirk.forward_all()
    assert all(float(out["ubar_m"][m].abs().sum()) == 0.0 for m in quirk.modalities)
    users = torch.arange(20)
    cl = grace_info_nce(out["ubar_m"]["image"][users], out["h_u"][users], quirk.config.tau)
    assert math.isclose(cl.item(), math.log(2 * 20 - 1), rel_tol=1e-6)


def test_mmssl_fusion_quirk(ds):
    quirk = make("MMSSL", "mmssl", ds, seed=4, reference_quirks=True)
    paper = make("MMSSL", "mmssl", ds, seed=4)
    xs = [torch.randn(6, 64), torch.randn(6, 64)]
    wsum = quirk.w_cat.view(4, 64, 64).sum(0)
    torch.testing.assert_close(quirk._fuse(xs), torch.stack([x @ wsum for x in xs]).mean(0))
    assert not torch.allclose(paper._fuse(xs), quirk._fuse(xs))
    # with identical modality vectors attention cannot matter: both reduce to x·Wsum
    same = [xs[0], xs[0].clone()]
    torch.testing.assert_close(paper._fuse(same), quirk._fuse(same), rtol=1e-5, atol=1e-5)


def test_mmssl_checkpoint_round_trip(ds):
    model = make("MMSSL", "mmssl", ds, seed=5, train_batch_size=32, m_topk_rate=0.05)
    model.train()
    model.pre_epoch(0)
    for b in range(model.n_batches):
        model.loss(random_batch(ds, 32, b))
    model.eval()
    scores = model.full_scores(torch.arange(ds.n_users))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert any(k.startswith("critic.") for k in state)
    fresh = make("MMSSL", "mmssl", ds, seed=6, train_batch_size=32)
    assert fresh.gen_users_image.numel() != model.gen_users_image.numel()
    fresh.load_state_dict(state)
    fresh.eval()
    torch.testing.assert_close(fresh.full_scores(torch.arange(ds.n_users)), scores)
    for a, b in zip(fresh.critic.state_dict().values(), model.critic.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
