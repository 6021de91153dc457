"""Content as side input (docs/models/: VBPR): scores and the batched loss against the full item projection."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from modalrec.models.vbpr import feature_order


# ====================================================================== VBPR
def test_vbpr_feature_order_text_first():
    assert feature_order(["image", "text"]) == ["text", "image"]
    assert feature_order(["audio", "image", "text"]) == ["text", "image", "audio"]
    assert feature_order(["audio"]) == ["audio"]


def test_vbpr_scores_and_batch_projection_equal_full_projection(small2, build, fixed_batch):
    model = build("VBPR", small2, reg_weight=0.5)
    x = torch.from_numpy(np.concatenate([small2.features["text"], small2.features["image"]], axis=1)).float()
    torch.testing.assert_close(model.features, x)
    with torch.no_grad():
        model.item_linear.bias.normal_()
    d = model.item_emb.shape[1]
    model.eval()
    c = x @ model.item_linear.weight.T + model.item_linear.bias
    expected = model.user_emb[:, :d] @ model.item_emb.T + model.user_emb[:, d:] @ c.T
    torch.testing.assert_close(model.full_scores(torch.arange(small2.n_users)), expected.detach(), rtol=1e-5, atol=1e-5)

    # loss on the batch's unique items == loss with the full projection (values and gradients)
    model.train()
    batch = fixed_batch(small2)
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
