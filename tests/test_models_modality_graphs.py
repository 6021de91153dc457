"""Models that convolve over per-modality or item–item graphs (docs/models/: MMGCN, GRCN, LATTICE, FREEDOM).

Each fast path is checked against a literal (dense or edge-list) computation of the documented forward pass,
plus the reference-code quirks, the graphs' structure and when they are rebuilt.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modalrec.data.dataset import Dataset
from modalrec.graphs import bipartite_edge_list, build_knn_graph
from modalrec.models.freedom import modality_graph_weights
from modalrec.nn.propagation import edge_list_aggregate, propagate, split_nodes


# ====================================================================== MMGCN
def literal_mmgcn(model, dataset: Dataset) -> torch.Tensor:
    """The MMGCN forward (docs/models/mmgcn.md) by the letter.

    Aggregates the TRANSFORMED neighbours x_j G over the edge list (index_add).
    """
    src, dst = bipartite_edge_list(dataset.train_matrix)
    n = dataset.n_users + dataset.n_items
    act = F.leaky_relu
    outs = []
    for m, branch in zip(model.modalities, model.branches, strict=True):
        feats = branch.mlp(model.feature_buffer(m)) if branch.mlp is not None else model.feature_buffer(m)
        x = F.normalize(torch.cat([branch.preference, feats]), dim=1)
        for g, lin, gate in zip(branch.conv, branch.linear, branch.gate, strict=True):
            h = act(edge_list_aggregate(x @ g, src, dst, n, model.config.aggr_mode))
            x_hat = act(lin(x)) + model.id_embedding
            x = act(gate(torch.cat([h, x_hat], dim=1)))
        outs.append(x)
    return torch.stack(outs).mean(0)


@pytest.mark.parametrize("quirks", [False, True])
@pytest.mark.parametrize("aggr", ["mean", "add"])
def test_mmgcn_scores_equal_literal_forward(small2, quirks, aggr, build):
    # image (20-d) pre-projected, text (12-d) raw: the reference's v/t setup at a small scale
    model = build("MMGCN", small2, reference_quirks=quirks, aggr_mode=aggr, project_min_dim=16, dim_latent=8)
    assert [b.mlp is not None for b in model.branches] == [True, False]
    model.eval()
    with torch.no_grad():
        o = literal_mmgcn(model, small2)
    expected = o[: small2.n_users] @ o[small2.n_users :].T
    torch.testing.assert_close(model.full_scores(torch.arange(small2.n_users)), expected, rtol=1e-4, atol=1e-5)
    # gradients too (layer 1 runs per user/item half, constant halves cached without autograd)
    model.train()
    weight = torch.randn(small2.n_users + small2.n_items, model.id_embedding.shape[1])
    params = [p for p in model.parameters() if p.requires_grad]
    fast = torch.autograd.grad((model.forward_all() * weight).sum(), params)
    slow = torch.autograd.grad((literal_mmgcn(model, small2) * weight).sum(), params)
    for f, s in zip(fast, slow, strict=True):
        torch.testing.assert_close(f, s, rtol=1e-4, atol=1e-5)


def test_mmgcn_reference_quirks_freeze_id_and_preferences(small2, build, fixed_batch):
    batch = fixed_batch(small2)
    for quirks in (True, False):
        model = build("MMGCN", small2, reference_quirks=quirks, reg_weight=0.1)
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


def test_mmgcn_loss_terms(small2, build, fixed_batch):
    batch = fixed_batch(small2)
    for quirks in (True, False):
        model = build("MMGCN", small2, reference_quirks=quirks, reg_weight=0.1, project_min_dim=16, dim_latent=8)
        model.train()
        users, items = model.compute_representations()
        u, p, n = users[batch.users], items[batch.pos], items[batch.neg]
        bpr = -torch.log(torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()
        z = model.id_embedding
        user_rows = batch.users.repeat_interleave(2)
        item_rows = torch.stack([batch.pos, batch.neg], dim=1).reshape(-1) + small2.n_users
        reg = (z[user_rows] ** 2 + z[item_rows] ** 2).mean()
        # reference: only the pre-projected (visual) preferences; paper mode: every modality's
        prefs = [model.branches[0]] if quirks else list(model.branches)
        reg = reg + sum((b.preference**2).mean() for b in prefs)
        torch.testing.assert_close(model.loss(batch), bpr + 0.1 * reg)


def test_mmgcn_constant_input_cache_follows_loaded_weights(small2, build):
    a = build("MMGCN", small2, reference_quirks=True, project_min_dim=1000, seed=0).eval()
    b = build("MMGCN", small2, reference_quirks=True, project_min_dim=1000, seed=1).eval()
    users = torch.arange(small2.n_users)
    b.full_scores(users)  # fills b's cache of norm(x⁰) and Ā x⁰
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.full_scores(users), a.full_scores(users))


# ====================================================================== GRCN
def edges_of(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(users, items) of the training interactions as index tensors."""
    r = ds.train_matrix.tocoo()
    return torch.from_numpy(r.row.astype(np.int64)), torch.from_numpy(r.col.astype(np.int64))


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
def test_grcn_matches_dense_reference(small3, quirks, build):
    model = build("GRCN", small3, reference_quirks=quirks)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_nodes(), grcn_dense_reference(model, small3), rtol=1e-4, atol=1e-5)


def test_grcn_reference_quirks_skip_routing(small3, build):
    paper, ref = build("GRCN", small3, reference_quirks=False), build("GRCN", small3, reference_quirks=True)
    ref.load_state_dict(paper.state_dict())
    paper.eval()
    ref.eval()
    users_p, items_p = paper.representations()
    users_r, items_r = ref.representations()
    assert not torch.allclose(users_p, users_r, atol=1e-4)
    # without routing the users' content part is norm(P_m) + x̂ — check p = norm(P_m) via the dense path
    with torch.no_grad():
        torch.testing.assert_close(
            torch.cat([users_r, items_r]), grcn_dense_reference(ref, small3), rtol=1e-4, atol=1e-5
        )


def test_grcn_prunes_edges_with_negative_confidence(small3, build):
    model = build("GRCN", small3)
    with torch.no_grad():
        model.confidence[: small3.n_users] = -1.0  # edges leaving users get weight max_m(a·C) < 0 -> pruned
        model.confidence[small3.n_users :] = 1.0
        out = model.forward_nodes()
        z0 = F.normalize(model.id_emb, dim=1)
    # item rows only receive messages from users: all pruned, so Q_id = z0 there
    torch.testing.assert_close(out[small3.n_users :, : z0.shape[1]], z0[small3.n_users :])
    assert not torch.allclose(out[: small3.n_users, : z0.shape[1]], z0[: small3.n_users])


def test_grcn_loss_has_gradients_everywhere(small3, build, fixed_batch):
    model = build("GRCN", small3, reg_weight=0.1)
    model.train()
    model.loss(fixed_batch(small3, 32)).backward()
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


def test_lattice_item_graph_equals_dense_reference_and_is_sparse(small3, build):
    model = build("LATTICE", small3, knn_block_size=7)
    with torch.no_grad():
        model.modal_weight.copy_(torch.tensor([0.2, 0.9, -0.3]))
        rows, cols, vals = model.item_graph_coo()
        ours = torch.zeros(small3.n_items, small3.n_items).index_put((rows, cols), vals, accumulate=True)
        torch.testing.assert_close(ours, lattice_dense_graph(model, small3), rtol=1e-5, atol=1e-6)
    # learned part: k entries per row per modality; frozen part: k per row per modality
    assert rows.numel() == 2 * len(model.modalities) * model.k * small3.n_items


def test_lattice_graph_gradients_only_on_first_batch_after_pre_epoch(small3, build, fixed_batch):
    model = build("LATTICE", small3)
    model.train()
    model.pre_epoch(0)
    model.loss(fixed_batch(small3, 32, seed=1)).backward()
    assert model.projections[0].weight.grad.abs().sum() > 0
    assert model.features[1].grad.abs().sum() > 0
    assert model.modal_weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    model.loss(fixed_batch(small3, 32, seed=2)).backward()  # reuses the detached graph
    assert model.projections[0].weight.grad is None and model.modal_weight.grad is None
    assert model.item_emb.weight.grad is not None


def test_lattice_evaluation_rebuilds_learned_graph(small3, build):
    model = build("LATTICE", small3, lambda_coeff=0.0)
    model.eval()
    before = model.full_scores(torch.arange(5))
    with torch.no_grad():
        model.projections[0].weight.mul_(-1.0).add_(0.3)
    model.eval()  # clears the cache, as the trainer does before every evaluation
    assert not torch.allclose(before, model.full_scores(torch.arange(5)))


# ====================================================================== FREEDOM
def test_modality_graph_weights():
    assert modality_graph_weights(["image", "text"], 0.1) == [0.1, 0.9]
    assert modality_graph_weights(["text", "image", "audio"], 0.1) == pytest.approx([0.45, 0.1, 0.45])
    assert modality_graph_weights(["image"], 0.1) == [1.0]
    assert modality_graph_weights(["text", "audio"], 0.1) == [0.5, 0.5]


def test_freedom_frozen_item_graph(mid3_as2, build):
    k = 5
    model = build("FREEDOM", mid3_as2, knn_k=k, mm_image_weight=0.2)
    s = model.item_graph.to_scipy().toarray()
    gv = build_knn_graph(mid3_as2.features["image"], k, weighted=False).toarray()
    gt = build_knn_graph(mid3_as2.features["text"], k, weighted=False).toarray()
    np.testing.assert_allclose(gv[gv > 0], 1 / k, rtol=1e-6)
    assert ((gv > 0).sum(1) == k).all()
    np.testing.assert_allclose(s, 0.2 * gv + 0.8 * gt, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(s.sum(1), 1.0, rtol=1e-5)
    assert ((s > 0).sum(1) <= 2 * k).all()
    assert not model.item_graph.a.requires_grad


def test_freedom_pruned_graph_per_epoch(mid3_as2, build):
    rho = 0.7
    model = build("FREEDOM", mid3_as2, dropout=rho)
    n_edges = mid3_as2.train_matrix.nnz
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


def test_freedom_scores_and_loss(mid3_as2, build, fixed_batch):
    model = build("FREEDOM", mid3_as2, reg_weight=0.01)
    torch.manual_seed(0)
    model.pre_epoch(0)
    batch = fixed_batch(mid3_as2, 32, unseen_negatives=False)
    h = model.item_graph @ model.item_emb.weight
    e0 = torch.cat([model.user_emb.weight, model.item_emb.weight])

    def bpr(u, p, n):
        return -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()

    hu, hi = split_nodes(propagate(model.train_adj, e0, 2, "mean"), mid3_as2.n_users)
    hi = hi + h
    u = hu[batch.users]
    expected = bpr(u, hi[batch.pos], hi[batch.neg])
    for feat, proj in zip(model.features, model.projections, strict=True):
        cm = proj(feat)
        expected = expected + 0.01 * bpr(u, cm[batch.pos], cm[batch.neg])
    model.train()
    torch.testing.assert_close(model.loss(batch), expected, rtol=1e-5, atol=1e-6)
    # scoring: the FULL graph, not the pruned one
    hu, hi = split_nodes(propagate(model.graphs.norm_adj(), e0, 2, "mean"), mid3_as2.n_users)
    model.eval()
    torch.testing.assert_close(model.full_scores(torch.tensor([2, 3])), (hu[[2, 3]] @ (hi + h).T).detach())
