"""The losses of ``modalrec.nn.losses`` shared by several models, against per-row formulas and direct
(unblocked) computations, gradients included: in-batch InfoNCE and negative cosine (SLMRec, BM3), GRACE
InfoNCE and the WGAN gradient penalty (MMSSL), neighbour discrimination (DA-MRS); and the fused kernels that form
their gradients in the forward pass (full-table InfoNCE, the dot-product Bernoulli KL, a linear decoder's L1 error)
and the feature projection with its reordered weight gradient
against autograd over the plain formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modalrec.nn import losses
from modalrec.nn.losses import (
    bernoulli_kl_symmetric_logits,
    decoded_l1_error,
    dot_bernoulli_kl_full,
    grace_info_nce,
    info_nce_full,
    info_nce_in_batch,
    negative_cosine_loss,
    neighbour_discrimination_nce,
    wgan_gradient_penalty,
    wgan_gradient_penalty_linear_first,
)


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


def test_block_in_batch_info_nce_is_the_mean_of_each_blocks_own_in_batch_loss():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(10, 4, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.randn(10, 4, generator=g, dtype=torch.float64, requires_grad=True)
    for normalize in (True, False):
        whole = info_nce_in_batch(a, c, 0.3, normalize)
        # a block at least the batch is the whole-batch formula, bit for bit (the paper's, and MMRec-sized batches)
        assert torch.equal(info_nce_in_batch(a, c, 0.3, normalize, block_size=10), whole)
        assert torch.equal(info_nce_in_batch(a, c, 0.3, normalize, block_size=64), whole)
        got = info_nce_in_batch(a, c, 0.3, normalize, block_size=4)  # blocks of 4, 4 and 2 rows
        want = (
            sum(
                info_nce_in_batch(a[lo : lo + 4], c[lo : lo + 4], 0.3, normalize) * len(a[lo : lo + 4])
                for lo in (0, 4, 8)
            )
            / 10
        )
        torch.testing.assert_close(got, want)
        assert not torch.allclose(got, whole)  # the other blocks' positives are no longer negatives
        grads = torch.autograd.grad(got, (a, c))
        torch.testing.assert_close(grads, torch.autograd.grad(want, (a, c)))


def test_negative_cosine_loss():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g)
    expected = 1 - np.mean([float(x[b] @ y[b] / (x[b].norm() * y[b].norm())) for b in range(7)])
    assert math.isclose(float(negative_cosine_loss(x, y)), expected, rel_tol=1e-5)
    assert float(negative_cosine_loss(x, 3.0 * x)) == pytest.approx(0.0, abs=1e-6)


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


# ---------------------------------------------------------------- fused kernels against autograd
def _grads(value: torch.Tensor, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(value, leaves))


@pytest.mark.parametrize("tau", [0.2, 0.004])  # 0.004: a fixed shift could underflow a row, the row max is taken
@pytest.mark.parametrize("tile_elements", [7, 2**20])  # one anchor per tile, and every anchor in one tile
def test_full_table_info_nce_equals_autograd_over_cross_entropy(tau, tile_elements, monkeypatch):
    monkeypatch.setattr(losses, "_TILE_ELEMENTS", tile_elements)
    g = torch.Generator().manual_seed(3)
    anchors = torch.randn(9, 6, generator=g, dtype=torch.float64, requires_grad=True)
    table = torch.randn(11, 6, generator=g, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([0, 3, 3, 10, 5, 1, 0, 7, 2])
    got = info_nce_full(anchors, table, index, tau, block_size=4)
    x, y = F.normalize(anchors, dim=1) / tau, F.normalize(table, dim=1)
    ref = F.cross_entropy(x @ y.T, index)
    torch.testing.assert_close(got, ref)
    for a, b in zip(_grads(got, [anchors, table]), _grads(ref, [anchors, table]), strict=True):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        torch.testing.assert_close(info_nce_full(anchors, table, index, tau), ref.detach())


@pytest.mark.parametrize("scale", [0.3, 40.0])  # 40: logits beyond ±logit(1 − 1e-7), the clamp's zero gradient
def test_dot_bernoulli_kl_equals_autograd_over_the_logit_form(scale, monkeypatch):
    monkeypatch.setattr(losses, "_TILE_ELEMENTS", 16)  # two anchors per tile of 8 rows
    g = torch.Generator().manual_seed(4)
    x = (scale * torch.randn(5, 4, generator=g, dtype=torch.float64)).requires_grad_()
    tp = torch.randn(8, 4, generator=g, dtype=torch.float64, requires_grad=True)
    tq = torch.randn(8, 4, generator=g, dtype=torch.float64, requires_grad=True)
    got = dot_bernoulli_kl_full(x, tp, tq, block_size=3)
    ref = bernoulli_kl_symmetric_logits(x @ tp.T, x @ tq.T).mean()
    torch.testing.assert_close(got, ref)
    for a, b in zip(_grads(got, [x, tp, tq]), _grads(ref, [x, tp, tq]), strict=True):
        torch.testing.assert_close(a, b)
    if scale > 20:  # some logits were clamped: their gradient is zero, as autograd's clamp gives
        assert ((x @ tp.T).abs() > 16.2).any()


@pytest.mark.parametrize("tile_elements", [7, 2**20])  # one row per tile, and every row in one tile
def test_decoded_l1_error_equals_autograd(tile_elements, monkeypatch):
    monkeypatch.setattr(losses, "_TILE_ELEMENTS", tile_elements)
    g = torch.Generator().manual_seed(5)
    codes = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    features = torch.randn(10, 7, generator=g, dtype=torch.float64)
    rows = torch.tensor([4, 0, 9, 4, 2, 7])
    got = decoded_l1_error(codes, weight, features, rows)
    ref = (codes @ weight.T - features[rows]).abs().mean()
    torch.testing.assert_close(got, ref)
    for a, b in zip(_grads(got, [codes, weight]), _grads(ref, [codes, weight]), strict=True):
        torch.testing.assert_close(a, b)


def test_feature_projection_equals_a_linear_layer_without_bias():
    from modalrec.nn.projection import project_features

    g = torch.Generator().manual_seed(6)
    features = torch.randn(9, 5, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    got, ref = project_features(features, weight), F.linear(features, weight)
    torch.testing.assert_close(got, ref)
    upstream = torch.randn(9, 3, generator=g, dtype=torch.float64)
    for a, b in zip(
        _grads((got * upstream).sum(), [features, weight]),
        _grads((ref * upstream).sum(), [features, weight]),
        strict=True,
    ):
        torch.testing.assert_close(a, b)
