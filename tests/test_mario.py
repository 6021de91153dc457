"""MARIO (docs/models/mario.md): fast ranking = literal per-pair formula, variants, loss, graphs, explanations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modalrec.config import resolve_config
from modalrec.data.dataset import Dataset
from modalrec.errors import ConfigError
from modalrec.graphs import GraphStore, build_knn_graph
from modalrec.models.mario import INTERACTION, MARIO

N_USERS, N_ITEMS = 120, 80
MODALITIES = {"image": 32, "text": 16, "audio": 8}


@pytest.fixture(scope="module")
def full_ds(synthetic) -> Dataset:
    """N_USERS × N_ITEMS with the three content modalities of MODALITIES."""
    return synthetic(N_USERS, N_ITEMS, MODALITIES, seed=3)


@pytest.fixture(scope="module")
def ds(full_ds) -> Dataset:
    """Two content modalities (image, text)."""
    return full_ds.select_modalities(["image", "text"])


def randomise(model: MARIO, scale: float = 3.0) -> None:
    """Blow the Xavier-sized weights up so the attention is far from uniform."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
            if p.dim() == 1:  # biases start at zero
                p.normal_(0.0, 0.1)
        if model.content_gate is not None:  # the default gate starts at 0; open it so content counts
            model.content_gate.uniform_(0.8, 1.2).div_(model.gate_speed)


# ====================================================================== 1. fast ranking = literal formula
@pytest.mark.parametrize("backbone", ["bprmf", "lightgcn", "ngcf"])
@pytest.mark.parametrize("n_content", [1, 2, 3])
@pytest.mark.parametrize("content_norm", ["l2", "none"])
def test_full_scores_equal_naive_pair_formula(full_ds, backbone, n_content, content_norm, build):
    dataset = full_ds.select_modalities(list(MODALITIES)[:n_content])
    model = build("MARIO", dataset, backbone=backbone, ranking_block_size=16, content_norm=content_norm)
    randomise(model)
    if content_norm == "l2":  # unit content rows: larger user vectors make the attention far from uniform
        with torch.no_grad():
            model.user_emb.weight.mul_(8.0)
    model.eval()
    assert model.parts == [*list(MODALITIES)[:n_content], INTERACTION]
    items = torch.arange(N_ITEMS)
    spread = 0.0
    tol = 1e-5 if content_norm == "none" else 1e-3  # larger scores: float32 round-off grows with them
    for lo, hi in [(0, 7), (7, 50), (50, N_USERS)]:
        users = torch.arange(lo, hi)
        fast = model.full_scores(users)
        assert fast.shape == (hi - lo, N_ITEMS)
        uu, ii = users.repeat_interleave(N_ITEMS), items.repeat(hi - lo)
        naive = model.naive_pair_scores(uu, ii).view(hi - lo, N_ITEMS)
        torch.testing.assert_close(fast, naive, rtol=tol, atol=tol)
        torch.testing.assert_close(model.score_pairs(uu, ii), naive.reshape(-1), rtol=tol, atol=tol)
        w = model.explain(uu, ii).weights
        spread = max(spread, float((w.max(dim=1).values - w.min(dim=1).values).max()))
    assert spread > 0.2, "attention too uniform for the comparison to mean anything"


@pytest.mark.parametrize("fusion", ["mean", "max", "fc"])
def test_fusion_full_scores_equal_naive(ds, fusion, build):
    model = build("MARIO", ds, fusion=fusion)
    randomise(model)
    model.eval()
    users = torch.arange(0, 40)
    uu, ii = users.repeat_interleave(N_ITEMS), torch.arange(N_ITEMS).repeat(40)
    naive = model.naive_pair_scores(uu, ii).view(40, N_ITEMS)
    torch.testing.assert_close(model.full_scores(users), naive, rtol=1e-5, atol=1e-5)


def test_ranking_block_size_and_tiles_do_not_change_scores(ds, build, monkeypatch):
    from modalrec.models import base

    a = build("MARIO", ds, ranking_block_size=1024).eval()
    b = build("MARIO", ds, ranking_block_size=7).eval()
    b.load_state_dict(a.state_dict())
    users = torch.arange(N_USERS)
    whole_rows = a.full_scores(users)
    assert a.score_tile_shape(N_ITEMS) == (1024, N_ITEMS)  # this catalogue: one tile spans every item
    # a call with fewer users than a tile: the tile takes them all and widens to keep its scores
    assert a.score_tile_shape(300_000, n_rows=594) == (594, base.PAIR_TILE_SCORES // 594)
    assert a.score_tile_shape(300_000) == (1024, base.PAIR_TILE_SCORES // 1024)
    torch.testing.assert_close(whole_rows, b.full_scores(users), rtol=0, atol=1e-6)
    monkeypatch.setattr(base, "PAIR_TILE_SCORES", 7 * 9)  # tiles of 7 users × 9 items, the last ones partial
    assert b.score_tile_shape(N_ITEMS) == (7, 9) and N_ITEMS % 9 and N_USERS % 7
    torch.testing.assert_close(whole_rows, b.full_scores(users), rtol=0, atol=1e-6)


def test_ranking_blocks_shrink_where_a_catalogue_would_make_them_gigabytes(ds, build, monkeypatch):
    from modalrec.models import base

    model = build("MARIO", ds, ranking_block_size=1024).eval()
    assert model.ranking_block_size(7_050, stacked=3) == 1024  # Baby's catalogue: the setting as it is
    assert model.ranking_block_size(300_000, stacked=3) == base.MAX_STACKED_SCORES // 900_000 == 74
    assert model.ranking_block_size(10**9, stacked=3) == 1  # never an empty block
    users = torch.arange(N_USERS)
    want = model.full_scores(users).clone()
    monkeypatch.setattr(base, "MAX_STACKED_SCORES", 3 * N_ITEMS * 7)  # 7-user blocks on this catalogue
    torch.testing.assert_close(model.full_scores(users), want, rtol=0, atol=1e-6)


# ====================================================================== 2. variants build and train
VARIANTS = [
    {},
    {"backbone": "bprmf"},
    {"backbone": "ngcf"},
    {"backbone": "lightgcn", "n_layers": 3, "n_mm_layers": 2},
    {"fusion": "mean"},
    {"fusion": "max"},
    {"fusion": "fc"},
    {"modalities": ["text", INTERACTION]},  # w/o image
    {"modalities": ["image", INTERACTION]},  # w/o text
    {"modalities": ["image", "text"]},  # w/o interaction
    {"modalities": [INTERACTION]},
    {"mu": 0.0},
    {"decode_from": "compressed"},
    {"graph_refresh": "epoch"},
    {"lambda_coeff": 1.0},
    {"lambda_coeff": 0.0},
]


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_variant_trains(ds, overrides, build, fixed_batch):
    model = build("MARIO", ds, **overrides)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    batch = fixed_batch(ds, 256)
    losses = []
    for step in range(30):
        if step % 10 == 0:
            model.pre_epoch(step // 10)
        opt.zero_grad()
        loss = model.loss(batch)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.9 * losses[0], losses
    model.eval()
    scores = model.full_scores(torch.arange(10))
    assert scores.shape == (10, N_ITEMS) and torch.isfinite(scores).all()
    assert model.item_representation().shape == (N_ITEMS, model.dim)


def test_dropped_modality_has_no_parameters_or_mp_term(ds, build):
    model = build("MARIO", ds, modalities=["text", INTERACTION])
    assert model.parts == ["text", INTERACTION] and model.content == ["text"]
    assert len(model.compress) == 1 and model.compress[0].in_features == 16
    assert len(model.decoders) == 1 and model.decoders[0].out_features == 16
    # the order in the config does not matter: dataset order, then interaction
    assert build("MARIO", ds, modalities=[INTERACTION, "text", "image"]).parts == ["image", "text", INTERACTION]
    assert build("MARIO", ds, modalities="text").parts == ["text"]


def test_loss_matches_the_written_formula(ds, build, fixed_batch):
    """L = BPR(r̂⁺, r̂⁻) + μ Σ_m mean|F_m − v^m W̃_m| + λ_reg ½(‖E_u‖²+‖E_p‖²+‖E_n‖²)/B (Eqs. 9–11)."""
    for decode_from in ("propagated", "compressed"):
        model = build("MARIO", ds, mu=0.7, reg_weight=0.01, decode_from=decode_from).eval()
        randomise(model, 2.0)
        batch = fixed_batch(ds, n=64)
        with torch.no_grad():
            got = model.loss(batch)
            bpr = -F.logsigmoid(
                model.naive_pair_scores(batch.users, batch.pos) - model.naive_pair_scores(batch.users, batch.neg)
            ).mean()
            reps = model.representations()
            items = torch.unique(torch.cat([batch.pos, batch.neg]))
            mp = 0.0
            for i, m in enumerate(["image", "text"]):
                src = reps.content[i] if decode_from == "propagated" else reps.compressed[i]
                feats = torch.from_numpy(ds.features[m])[items]
                mp += (src[items] @ model.decoders[i].weight.T - feats).abs().sum() / feats.numel()
            eu, ei = model.user_emb.weight, model.item_emb.weight
            reg = 0.5 * (eu[batch.users].pow(2).sum() + ei[batch.pos].pow(2).sum() + ei[batch.neg].pow(2).sum()) / 64
            want = bpr + 0.7 * mp + 0.01 * reg
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_lightgcn_backbone_is_the_layer_mean(ds, build):
    model = build("MARIO", ds, n_layers=2).eval()
    a = torch.from_numpy(model.graphs.norm_adj_matrix().toarray())
    h0 = torch.cat([model.user_emb.weight, model.item_emb.weight]).detach()
    want = (h0 + a @ h0 + a @ (a @ h0)) / 3
    u, v = model.backbone_forward()
    torch.testing.assert_close(torch.cat([u, v]).detach(), want, rtol=1e-5, atol=1e-6)
    bpr = build("MARIO", ds, backbone="bprmf")
    u, v = bpr.backbone_forward()
    assert u is bpr.user_emb.weight and v is bpr.item_emb.weight


# ====================================================================== 3. explanations, decoders, config errors
@pytest.mark.parametrize("modalities", [None, ["image", "text"], ["text", INTERACTION], [INTERACTION]])
def test_attention_explanation(ds, modalities, build):
    model = build("MARIO", ds, modalities=modalities)
    randomise(model)
    model.train()  # explain must switch dropout off itself and restore the mode
    users, items = torch.tensor([0, 0, 5, 9, 119]), torch.tensor([1, 2, 3, 79, 0])
    expl = model.explain(users, items)
    assert model.training
    assert expl.kind == "attention" and expl.parts == model.parts
    assert expl.weights.shape == (5, len(model.parts))
    assert (expl.weights >= 0).all()
    torch.testing.assert_close(expl.weights.sum(dim=1), torch.ones(5))
    model.eval()
    reps = model.representations()
    logits = torch.stack([(reps.users[users] * reps.items[m, items]).sum(1) for m in range(len(model.parts))], 1)
    torch.testing.assert_close(expl.weights, torch.softmax(logits / math.sqrt(model.dim), dim=1))


def test_fusion_explanations(ds, build):
    users, items = torch.tensor([0, 3, 7]), torch.tensor([4, 4, 60])
    mean = build("MARIO", ds, fusion="mean").explain(users, items)
    assert mean.kind == "uniform" and mean.parts == ["image", "text", INTERACTION]
    torch.testing.assert_close(mean.weights, torch.full((3, 3), 1 / 3))
    model = build("MARIO", ds, fusion="max").eval()
    mx = model.explain(users, items)
    assert mx.kind == "max-share" and mx.weights.shape == (3, 3)
    torch.testing.assert_close(mx.weights.sum(dim=1), torch.ones(3))
    v = model.representations().items[:, items]
    want = torch.stack([(v.argmax(dim=0) == m).float().mean(dim=1) for m in range(3)], dim=1)
    torch.testing.assert_close(mx.weights, want)
    torch.testing.assert_close(mx.weights[0], mx.weights[1])  # the same item for two users: user-independent
    assert build("MARIO", ds, fusion="fc").explain(users, items) is None


def test_mu_zero_has_no_decoder(ds, build):
    model = build("MARIO", ds, mu=0.0)
    assert model.decoders is None
    assert not any("decoder" in name for name, _ in model.named_parameters())
    assert any("decoder" in name for name, _ in build("MARIO", ds).named_parameters())


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ({"modalities": ["image", "video"]}, ["'video'", "image, text", INTERACTION]),
        ({"modalities": []}, ["at least one", "empty"]),
        ({"modalities": ["text", "text"]}, ["twice"]),
        ({"modalities": [1, 2]}, ["list of modality names"]),
        ({"backbone": "gcn"}, ["backbone", "lightgcn, bprmf, ngcf"]),
        ({"fusion": "sum"}, ["fusion", "attention, mean, max, fc"]),
        ({"decode_from": "raw"}, ["decode_from"]),
        ({"graph_refresh": "never"}, ["graph_refresh"]),
        ({"lambda_coeff": 1.5}, ["lambda_coeff", "[0, 1]"]),
        ({"mu": -1.0}, ["mu"]),
        ({"content_norm": "l1"}, ["content_norm", "none, l2"]),
    ],
)
def test_invalid_config_is_a_clear_error(ds, overrides, fragments, build):
    with pytest.raises(ConfigError) as err:
        build("MARIO", ds, **overrides)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_mario_needs_a_content_modality(full_ds, build):
    with pytest.raises(ConfigError, match="at least 1 content"):
        build("MARIO", full_ds.select_modalities([]))


# ====================================================================== 4. graphs
def _dense(op) -> np.ndarray:
    return op.to_scipy().toarray()


def test_modality_graph_formula_and_no_gradient(ds, build, fixed_batch):
    lam, k = 0.7, 6
    model = build("MARIO", ds, lambda_coeff=lam, knn_k=k).train()
    compressed = model._compressed()
    assert compressed[0].requires_grad
    for i, m in enumerate(["image", "text"]):
        op = model.modality_graph(i, compressed[i])
        assert not op.a.values().requires_grad and op.a.values().grad_fn is None
        fixed = build_knn_graph(ds.features[m], k, weighted=True, normalization="none").toarray()
        learned = build_knn_graph(compressed[i].detach().numpy(), k, weighted=True, normalization="none").toarray()
        g = lam * fixed + (1 - lam) * learned
        deg = g.sum(axis=1)
        inv = np.where(deg > 0, np.abs(deg) ** -0.5, 0.0)
        np.testing.assert_allclose(_dense(op), inv[:, None] * g * inv[None, :], rtol=1e-5, atol=1e-6)
    # gradients reach W_m through X⁰ = C_m only
    model.loss(fixed_batch(ds, n=32)).backward()
    assert all(w.weight.grad is not None and w.weight.grad.abs().sum() > 0 for w in model.compress)


def test_lambda_one_is_the_fixed_graph(ds, build):
    model = build("MARIO", ds, lambda_coeff=1.0, knn_k=5)
    ops = model.refresh_graphs()
    for op, m in zip(ops, ["image", "text"], strict=True):
        want = model.graphs.knn(m, 5, weighted=True, normalization="sym")
        np.testing.assert_allclose(_dense(op), _dense(want), rtol=1e-5, atol=1e-7)


def test_fixed_graph_is_cached_in_the_graph_store(ds, tmp_path, build):
    graphs = GraphStore(ds, cache_dir=tmp_path)
    build("MARIO", ds, graphs=graphs)
    knn_keys = [name for name in graphs._memo if name.startswith("knn-")]
    assert len(knn_keys) == 2  # one fixed graph per content modality
    builds = graphs.builds
    build("MARIO", ds, graphs=graphs, seed=1)
    assert graphs.builds == builds  # the second model reuses the store's graphs
    fresh = GraphStore(ds, cache_dir=tmp_path)
    build("MARIO", ds, graphs=fresh)
    assert fresh.builds == 0 and fresh.cache_hits >= 3  # Â and both kNN graphs come from disk


def test_graph_refresh_modes(ds, build, fixed_batch):
    batch = fixed_batch(ds, n=32)
    fwd = build("MARIO", ds, graph_refresh="forward").train()
    fwd.loss(batch)
    first = fwd._graph_cache
    fwd.loss(batch)
    assert fwd._graph_cache is not first  # rebuilt in every forward pass

    ep = build("MARIO", ds, graph_refresh="epoch").train()
    ep.pre_epoch(0)
    cached = ep._graph_cache
    opt = torch.optim.SGD(ep.parameters(), lr=1.0)
    for _ in range(2):
        opt.zero_grad()
        ep.loss(batch).backward()
        opt.step()
        assert ep._graph_cache is cached  # reused within the epoch
    ep.pre_epoch(1)
    assert ep._graph_cache is not cached
    cached = ep._graph_cache
    ep.eval()
    ep.full_scores(torch.arange(3))
    assert ep._graph_cache is not cached  # rebuilt for evaluation from the current weights


# ---------------------------------------------------------------------- content scale control
def test_content_norm_l2_gives_unit_rows_and_none_the_raw_projection(ds, build):
    assert resolve_config("mario").content_norm == "l2"  # the default
    for norm in ("l2", "none"):
        model = build("MARIO", ds, content_norm=norm).eval()
        randomise(model, 5.0)
        with torch.no_grad():
            comp = model.representations().compressed
            for i, m in enumerate(["image", "text"]):
                raw = torch.from_numpy(ds.features[m]) @ model.compress[i].weight.T
                want = F.normalize(raw, dim=1) if norm == "l2" else raw
                torch.testing.assert_close(comp[i], want, rtol=1e-5, atol=1e-6)
        norms = torch.stack([c.norm(dim=1) for c in comp])
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5) == (norm == "l2")


def test_paper_preset_is_the_literal_model():
    assert resolve_config("mario", preset="paper").content_norm == "none"
    assert resolve_config("mario", dataset_name="baby").content_norm == "l2"


def test_content_norm_makes_scores_independent_of_the_projection_scale(ds, build):
    """Adam grows the unregularised W_m; with unit content rows that growth cannot change the ranking
    (the scores are invariant to a rescaled W_m), while the paper model's scores follow it."""
    users = torch.arange(30)
    for norm in ("none", "l2"):
        model = build("MARIO", ds, content_norm=norm).eval()
        randomise(model, 3.0)
        before = model.full_scores(users).clone()
        with torch.no_grad():
            for w in model.compress:
                w.weight.mul_(50.0)
        model.train()
        model.eval()  # drop cached representations
        after = model.full_scores(users)
        same = torch.allclose(before, after, rtol=1e-4, atol=1e-4)
        assert same == (norm == "l2"), norm


# ====================================================================== content gate
def test_content_gate_scales_content_scores_only_and_starts_at_the_backbone(ds, build):
    """content_gate: learned multiplies v^m (m ≠ IN) by g_m in the scores; the decoders read ungated v^m."""
    model = build("MARIO", ds, content_gate="learned", content_gate_init=0.0, ranking_block_size=16)
    assert model.content_gate is not None and model.content_gate.shape == (2,)
    model.eval()
    users, items = torch.arange(N_USERS), torch.arange(N_ITEMS)
    with torch.no_grad():
        reps = model.forward_representations()
        assert torch.all(reps.items[:2] == 0)  # g = 0: content scores vanish
        s_in = reps.users @ reps.items[2].T
        # r̂ = s·e^{s/√d} / (2 + e^{s/√d}) is increasing in s here, so the ranking is the backbone's alone
        assert torch.equal(model.full_scores(users).argsort(dim=1), s_in.argsort(dim=1))
        mp_closed = model.preservation_loss(reps, items)
        model.content_gate.fill_(3.0 / model.gate_speed)
        reps3 = model.forward_representations()
        torch.testing.assert_close(reps3.items[:2], 3.0 * torch.stack(reps3.content))
        torch.testing.assert_close(model.preservation_loss(reps3, items), mp_closed)  # the gate is not decoded
    randomise(model)
    uu, ii = users[:10].repeat_interleave(N_ITEMS), items.repeat(10)
    torch.testing.assert_close(
        model.full_scores(users[:10]).reshape(-1), model.naive_pair_scores(uu, ii), rtol=1e-4, atol=1e-4
    )
    assert build("MARIO", ds, content_gate="none").content_gate is None
    default = build("MARIO", ds)  # the default: a learned gate that starts closed
    assert default.content_gate is not None and torch.all(default.gate_values() == 0)
    with pytest.raises(ConfigError, match="content_gate must be one of none, learned"):
        build("MARIO", ds, content_gate="fixed")
