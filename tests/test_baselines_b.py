"""GRCN, LATTICE, MAML (docs/models/): model behaviour against direct dense / per-pair computations.

Also the shared blocks they added: ``segment_softmax`` and ``LearnedEdgeGraph`` (nn/propagation.py),
``learned_knn_coo`` (graphs.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modalrec.config import resolve_config
from modalrec.data.dataset import Dataset
from modalrec.data.synth import generate_synthetic
from modalrec.graphs import GraphStore, build_knn_graph, learned_knn_coo
from modalrec.models import build_model
from modalrec.models.base import Batch
from modalrec.nn.propagation import LearnedEdgeGraph, edge_list_aggregate, segment_softmax

N_USERS, N_ITEMS = 60, 40
MODALITIES = {"image": 20, "text": 12, "audio": 6}


@pytest.fixture(scope="module")
def ds() -> Dataset:
    g = generate_synthetic(n_users=N_USERS, n_items=N_ITEMS, modalities=dict(MODALITIES), seed=7)
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


def make(name: str, ds: Dataset, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = resolve_config(name.lower(), ds.name, overrides)
    return build_model(name, ds, config, GraphStore(ds, cache_dir=False))


def a_batch(ds: Dataset, n: int = 32, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    u, i = ds.split("train")
    pick = rng.choice(len(u), n, replace=False)
    train = set(zip(u.tolist(), i.tolist(), strict=True))
    neg = []
    for uu in u[pick]:
        j = int(rng.integers(ds.n_items))
        while (int(uu), j) in train:
            j = int(rng.integers(ds.n_items))
        neg.append(j)
    return Batch(torch.from_numpy(u[pick]), torch.from_numpy(i[pick]), torch.tensor(neg))


def edges_of(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    r = ds.train_matrix.tocoo()
    return torch.from_numpy(r.row.astype(np.int64)), torch.from_numpy(r.col.astype(np.int64))


# ====================================================================== shared blocks
def test_segment_softmax_is_softmax_within_groups():
    torch.manual_seed(0)
    index = torch.tensor([2, 0, 2, 2, 0, 4])
    logits = torch.randn(6) * 30  # large values: the max subtraction keeps it finite
    out = segment_softmax(logits, index, 5)
    for g in (0, 2, 4):
        m = index == g
        torch.testing.assert_close(out[m], torch.softmax(logits[m], dim=0))


def test_learned_edge_graph_matches_gather_scatter_with_gradients():
    torch.manual_seed(0)
    n, e = 30, 200
    src, dst = torch.randint(0, n, (e,)), torch.randint(0, n, (e,))
    g = LearnedEdgeGraph(src, dst, n)
    x = torch.randn(n, 5, requires_grad=True)
    y = torch.randn(n, 5, requires_grad=True)
    w = torch.rand(e, requires_grad=True)
    weights = torch.randn(n, 5)
    fast = (g.aggregate(x, w) * weights).sum() + (g.edge_dot(x, y) * w).sum()
    slow = (edge_list_aggregate(x, src, dst, n, "add", edge_weight=w) * weights).sum() + (
        (x[dst] * y[src]).sum(1) * w
    ).sum()
    torch.testing.assert_close(fast, slow)
    for a, b in zip(torch.autograd.grad(fast, [x, y, w]), torch.autograd.grad(slow, [x, y, w]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


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


# ====================================================================== GRCN
def grcn_dense_reference(model, ds: Dataset) -> torch.Tensor:
    """O computed with dense N×N masks, literally as in docs/models/grcn.md (routing only in paper mode)."""
    n_u, n = ds.n_users, ds.n_users + ds.n_items
    u, i = edges_of(ds)
    mask = torch.zeros(n, n, dtype=torch.bool)  # mask[v, j]: edge j -> v
    mask[u, i + n_u] = True
    mask[i + n_u, u] = True
    i2u = torch.zeros(n, n, dtype=torch.bool)
    i2u[u, i + n_u] = True

    def attend(x, m):
        logits = (x @ x.T).masked_fill(~m, float("-inf"))
        a = torch.nan_to_num(torch.softmax(logits, dim=1), nan=0.0)  # rows without incoming edges
        return a @ x, a

    outs, att = [], []
    for k, mod in enumerate(model.modalities):
        f = F.normalize(F.leaky_relu(model.mlps[k](torch.as_tensor(ds.features[mod], dtype=torch.float32))), dim=1)
        p = F.normalize(model.preferences[k], dim=1)
        if not model.reference_quirks:
            for _ in range(model.n_routing):
                agg, _ = attend(torch.cat([p, f]), i2u)
                p = F.normalize(p + agg[:n_u], dim=1)
        x = torch.cat([p, f])
        x_hat, a = attend(x, mask)
        outs.append(x + x_hat)
        att.append(a * model.confidence[:, k][None, :])  # confidence of the SOURCE j (column)
    w = torch.relu(torch.stack(att).max(dim=0).values) * mask
    z0 = F.normalize(model.id_emb, dim=1)
    z1 = w @ z0
    return torch.cat([z0 + z1 + w @ z1, *outs], dim=1)


@pytest.mark.parametrize("quirks", [False, True])
def test_grcn_matches_dense_reference(ds, quirks):
    model = make("GRCN", ds, reference_quirks=quirks)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_nodes(), grcn_dense_reference(model, ds), rtol=1e-4, atol=1e-5)


def test_grcn_reference_quirks_skip_routing(ds):
    paper, ref = make("GRCN", ds, reference_quirks=False), make("GRCN", ds, reference_quirks=True)
    ref.load_state_dict(paper.state_dict())
    paper.eval()
    ref.eval()
    users_p, items_p = paper.representations()
    users_r, items_r = ref.representations()
    assert not torch.allclose(users_p, users_r, atol=1e-4)
    # without routing the users' content part is norm(P_m) + x̂ — check p = norm(P_m) via the dense path
    with torch.no_grad():
        torch.testing.assert_close(torch.cat([users_r, items_r]), grcn_dense_reference(ref, ds), rtol=1e-4, atol=1e-5)


def test_grcn_prunes_edges_with_negative_confidence(ds):
    model = make("GRCN", ds)
    with torch.no_grad():
        model.confidence[: ds.n_users] = -1.0  # edges leaving users get weight max_m(a·C) < 0 -> pruned
        model.confidence[ds.n_users :] = 1.0
        out = model.forward_nodes()
        z0 = F.normalize(model.id_emb, dim=1)
    # item rows only receive messages from users: all pruned, so Q_id = z0 there
    torch.testing.assert_close(out[ds.n_users :, : z0.shape[1]], z0[ds.n_users :])
    assert not torch.allclose(out[: ds.n_users, : z0.shape[1]], z0[: ds.n_users])


def test_grcn_loss_has_gradients_everywhere(ds):
    model = make("GRCN", ds, reg_weight=0.1)
    model.train()
    model.loss(a_batch(ds)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ====================================================================== LATTICE
def lattice_dense_graph(model, ds: Dataset) -> torch.Tensor:
    """S with dense I × I matrices as in the reference (forward step 1)."""
    alpha = torch.softmax(model.modal_weight, dim=0)

    def dnorm(s):
        d = s.sum(dim=1)
        inv = torch.where(d > 0, d.pow(-0.5), torch.zeros_like(d))
        return inv[:, None] * s * inv[None, :]

    learned, orig = 0, 0
    for k, mod in enumerate(model.modalities):
        h = F.normalize(model.projections[k](model.features[k]), dim=1)
        sim = h @ h.T
        vals, idx = torch.topk(sim, model.k, dim=1)
        learned = learned + alpha[k] * torch.zeros_like(sim).scatter(1, idx, vals)
        fixed = build_knn_graph(ds.features[mod], model.k, weighted=True, normalization="sym").toarray()
        orig = orig + alpha[k] * torch.from_numpy(fixed)
    return (1 - model.lambda_coeff) * dnorm(learned) + model.lambda_coeff * orig


def test_lattice_item_graph_equals_dense_reference_and_is_sparse(ds):
    model = make("LATTICE", ds, knn_block_size=7)
    with torch.no_grad():
        model.modal_weight.copy_(torch.tensor([0.2, 0.9, -0.3]))
        rows, cols, vals = model.item_graph_coo()
        ours = torch.zeros(ds.n_items, ds.n_items).index_put((rows, cols), vals, accumulate=True)
        torch.testing.assert_close(ours, lattice_dense_graph(model, ds), rtol=1e-5, atol=1e-6)
    # learned part: k entries per row per modality; frozen part: k per row per modality
    assert rows.numel() == 2 * len(model.modalities) * model.k * ds.n_items


def test_lattice_graph_gradients_only_on_first_batch_after_pre_epoch(ds):
    model = make("LATTICE", ds)
    model.train()
    model.pre_epoch(0)
    model.loss(a_batch(ds, seed=1)).backward()
    assert model.projections[0].weight.grad.abs().sum() > 0
    assert model.features[1].grad.abs().sum() > 0
    assert model.modal_weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    model.loss(a_batch(ds, seed=2)).backward()  # reuses the detached graph
    assert model.projections[0].weight.grad is None and model.modal_weight.grad is None
    assert model.item_emb.weight.grad is not None


def test_lattice_evaluation_rebuilds_learned_graph(ds):
    model = make("LATTICE", ds, lambda_coeff=0.0)
    model.eval()
    before = model.full_scores(torch.arange(5))
    with torch.no_grad():
        model.projections[0].weight.mul_(-1.0).add_(0.3)
    model.eval()  # clears the cache, as the trainer does before every evaluation
    assert not torch.allclose(before, model.full_scores(torch.arange(5)))


# ====================================================================== MAML
def maml_direct_scores(model, users: torch.Tensor) -> torch.Tensor:
    """−D(u, j) for users × all items from the documented formulas, one pair at a time (vectorised per user)."""
    p = model.user_emb.detach()
    q = model.item_emb.detach()
    p = p * torch.clamp(1.0 / p.norm(dim=1, keepdim=True), max=1.0)
    q = q * torch.clamp(1.0 / q.norm(dim=1, keepdim=True), max=1.0)
    phi = model._item_features(dropout=False)
    out = []
    for u in users.tolist():
        c = F.normalize(torch.cat([p[u].expand_as(q), q, phi], dim=1), dim=1)
        e = torch.tanh(c @ model.att1.weight.T + model.att1.bias)
        g = torch.relu(F.normalize(e, dim=1) @ model.att2.weight.T + model.att2.bias)
        a = model.dim * torch.softmax(g, dim=1)
        out.append(-((a * p[u] - a * q) ** 2).sum(dim=1))
    return torch.stack(out)


def test_maml_fast_ranking_equals_direct_and_naive(ds):
    model = make("MAML", ds, ranking_pair_block=50)  # blocks of one user
    with torch.no_grad():
        model.user_emb.mul_(3.0)  # some rows outside the unit ball: the clip must apply
    model.eval()
    users = torch.tensor([0, 5, 17, 59])
    with torch.no_grad():
        fast = model.full_scores(users)
        direct = maml_direct_scores(model, users)
        items = torch.arange(ds.n_items)
        naive = model.naive_pair_scores(users.repeat_interleave(ds.n_items), items.repeat(len(users)))
    torch.testing.assert_close(fast, direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(naive.view(len(users), -1), direct, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quirks", [False, True])
def test_maml_reference_quirks_freeze_mlp_and_attention(ds, quirks):
    model = make("MAML", ds, reference_quirks=quirks)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(("mlp", "att"))}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.train()
    for s in range(3):
        opt.zero_grad()
        model.loss(a_batch(ds, seed=s)).backward()
        opt.step()
    changed = [n for n, p in model.named_parameters() if n in frozen and not torch.equal(p, frozen[n])]
    assert (changed == []) if quirks else (len(changed) == len(frozen))
    # dropout: train-mode features are random in paper mode, constant in reference mode
    torch.manual_seed(1)
    a = model.features()
    b = model.features()
    assert torch.equal(a, b) == quirks


def test_maml_loss_clips_rows_and_samples_true_negatives(ds):
    model = make("MAML", ds, num_neg=6)
    with torch.no_grad():
        model.user_emb.mul_(5.0)
    model.train()
    model.loss(a_batch(ds))
    assert model.user_emb.norm(dim=1).max() <= 1.0 + 1e-5
    assert model.item_emb.norm(dim=1).max() <= 1.0 + 1e-5
    users = torch.arange(ds.n_users).repeat(20)
    neg = model.sample_negatives(users, 5)
    assert neg.shape == (users.numel(), 5)
    dense = torch.from_numpy(ds.train_matrix.toarray() > 0)
    assert not dense[users.unsqueeze(1).expand_as(neg), neg].any()


def test_maml_covariance_forms_and_initial_q(ds):
    ref, paper = make("MAML", ds), make("MAML", ds, cov_loss_form="paper")
    with torch.no_grad():
        p, q = ref.user_emb, ref.item_emb
        # Q starts at the feature projection φ (dropout off)
        torch.testing.assert_close(q, ref._item_features(dropout=False))
        y = torch.cat([q, p])
        y = y - y.mean(0)
        cov = y.T @ y / y.shape[0]
        torch.testing.assert_close(ref.covariance_loss(p, q), cov.sum() - cov.diagonal().sum())
        expected = (torch.linalg.norm(cov) - cov.diagonal().pow(2).sum()) / y.shape[0]
        torch.testing.assert_close(paper.covariance_loss(p, q), expected)
