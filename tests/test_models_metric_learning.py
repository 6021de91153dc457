"""Attentive metric learning (docs/models/: MAML): fast ranking vs. the per-pair distance, quirks, the loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


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


def test_maml_fast_ranking_equals_direct_and_naive(small3, build):
    model = build("MAML", small3, ranking_pair_block=50)  # blocks of one user
    with torch.no_grad():
        model.user_emb.mul_(3.0)  # some rows outside the unit ball: the clip must apply
    model.eval()
    users = torch.tensor([0, 5, 17, 59])
    with torch.no_grad():
        fast = model.full_scores(users)
        direct = maml_direct_scores(model, users)
        items = torch.arange(small3.n_items)
        naive = model.naive_pair_scores(users.repeat_interleave(small3.n_items), items.repeat(len(users)))
    torch.testing.assert_close(fast, direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(naive.view(len(users), -1), direct, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quirks", [False, True])
def test_maml_reference_quirks_freeze_mlp_and_attention(small3, quirks, build, fixed_batch):
    model = build("MAML", small3, reference_quirks=quirks)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(("mlp", "att"))}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.train()
    for s in range(3):
        opt.zero_grad()
        model.loss(fixed_batch(small3, 32, seed=s)).backward()
        opt.step()
    changed = [n for n, p in model.named_parameters() if n in frozen and not torch.equal(p, frozen[n])]
    assert (changed == []) if quirks else (len(changed) == len(frozen))
    # dropout: train-mode features are random in paper mode, constant in reference mode
    torch.manual_seed(1)
    a = model.features()
    b = model.features()
    assert torch.equal(a, b) == quirks


def test_maml_loss_clips_rows_and_samples_true_negatives(small3, build, fixed_batch):
    model = build("MAML", small3, num_neg=6)
    with torch.no_grad():
        model.user_emb.mul_(5.0)
    model.train()
    model.loss(fixed_batch(small3, 32))
    assert model.user_emb.norm(dim=1).max() <= 1.0 + 1e-5
    assert model.item_emb.norm(dim=1).max() <= 1.0 + 1e-5
    users = torch.arange(small3.n_users).repeat(20)
    neg = model.sample_negatives(users, 5)
    assert neg.shape == (users.numel(), 5)
    dense = torch.from_numpy(small3.train_matrix.toarray() > 0)
    assert not dense[users.unsqueeze(1).expand_as(neg), neg].any()


def test_maml_covariance_forms_and_initial_q(small3, build):
    ref, paper = build("MAML", small3), build("MAML", small3, cov_loss_form="paper")
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
