"""MeAIM (docs/models/meaim.md): exact fast ranking, loss primitives, variants, quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import require_shared
from torch.utils._python_dispatch import TorchDispatchMode

from modalrec.config import load_defaults, resolve_config
from modalrec.data.synth import synthetic_dataset
from modalrec.errors import ConfigError
from modalrec.models import get_model_class
from modalrec.models.base import Batch, Explanation
from modalrec.models.meaim import TILE_SCALARS
from modalrec.nn.losses import (
    bernoulli_kl_symmetric,
    bernoulli_kl_symmetric_logits,
    dot_bernoulli_kl_full,
    info_nce_full,
)
from modalrec.nn.scoring import meta_weight_head_affine
from modalrec.runs import prepare_model
from modalrec.training import NegativeSampler, fit


@pytest.fixture(scope="module")
def ds2():
    return synthetic_dataset("default", n_users=150, n_items=100, modalities={"image": 48, "text": 24})


@pytest.fixture(scope="module")
def ds3():
    return synthetic_dataset("default", n_users=150, n_items=100, modalities={"image": 48, "text": 24, "audio": 12})


def make(ds, **overrides):
    model, config, _ = prepare_model("MeAIM", ds, overrides, cache_dir=False)
    return model, config


def randomise(model, seed: int = 0, emb_std: float = 0.3, head_std: float = 0.02) -> None:
    """Non-trivial weights: large embeddings, heads large enough that the weights vary by pair."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = emb_std if name.startswith(("user_emb", "item_emb")) else head_std
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)


# ---------------------------------------------------------------------- registration & config
def test_registered_and_configured():
    cls = get_model_class("meaim")
    assert cls.name == "MeAIM" and cls.config_name == "meaim" and cls.min_modalities == 2
    assert cls.description and "\n" not in cls.description
    defaults, presets, search = load_defaults("meaim")
    assert defaults["embedding_size"] == 64 and defaults["train_batch_size"] == 2048
    assert defaults["learning_rate"] == 0.001 and defaults["tau"] == 0.2 and defaults["knn_k"] == 10
    assert defaults["alpha"] == 0.1 and defaults["content_layers"] == [2, 3]
    baby = (defaults["dropout"], defaults["beta_cl"], defaults["lambda_kl"], defaults["gamma_bpr"])
    assert baby == (0.5, 0.001, 100, 0.5)
    assert set(presets) == {"baby", "sports", "clothing"}
    sports = resolve_config("meaim", preset="sports")
    assert (sports.content_layers, sports.dropout, sports.lambda_kl, sports.stopping_step) == ([2, 4], 0.7, 10000, 30)
    clothing = resolve_config("meaim", dataset_name="clothing", preset="clothing")
    assert (clothing.content_layers, clothing.beta_cl, clothing.gamma_bpr) == ([3, 3], 0.0001, 1.0)
    assert {"beta_cl", "lambda_kl", "gamma_bpr", "dropout"} <= set(search)


def test_config_errors(ds2, ds3):
    with pytest.raises(ConfigError, match="content_layers has 4 entries.*3 content modalities"):
        make(ds3, content_layers=[1, 2, 3, 4])
    assert make(ds3)[0].content_layers == [2, 3, 3]  # the paper's [2, 3] extended by its last entry
    with pytest.raises(ConfigError, match="kl_modality_weights"):
        make(ds2, kl_modality_weights=[1.0])
    one = ds2.select_modalities(["image"])
    with pytest.raises(ConfigError, match="at least 2"):
        make(one)
    # a single int applies to every modality (a Config built in code is not type-checked)
    model, config = make(ds3, content_layers=[1, 1, 1])
    cls = type(model)
    model = cls(ds3, config.replace(content_layers=2), model.graphs)
    assert model.content_layers == [2, 2, 2]
    assert model.mix_weights == pytest.approx([0.1, 0.45, 0.45])


# ---------------------------------------------------------------------- primitives
def test_head_affine_form():
    torch.manual_seed(0)
    d = 8
    head = torch.nn.Sequential(torch.nn.Linear(3 * d, 12), torch.nn.Linear(12, 1))
    x, y = torch.randn(5, d, dtype=torch.float64), torch.randn(5, d, dtype=torch.float64)
    head = head.double()
    delta = (x - y).pow(2).sum(1)
    direct = head(torch.cat([delta[:, None].expand(-1, d), x, y], 1)).squeeze(1)
    c_delta, p, q, c0 = meta_weight_head_affine(head[0].weight, head[0].bias, head[1].weight, head[1].bias, d)
    assert torch.allclose(direct, c_delta * delta + x @ p + y @ q + c0, atol=1e-12)


def test_info_nce_primitive():
    torch.manual_seed(0)
    x = torch.randn(40, 16, dtype=torch.float64)
    idx = torch.arange(40)
    same = info_nce_full(x, x, idx, 0.2, block_size=7)
    perturbed = info_nce_full(x + 0.5 * torch.randn_like(x), x, idx, 0.2, block_size=7)
    shuffled = info_nce_full(x[torch.randperm(40)], x, idx, 0.2, block_size=7)
    assert same < perturbed < shuffled
    # the definition: cross-entropy of cosine logits over the whole table; block size is irrelevant
    table = torch.randn(25, 16, dtype=torch.float64)
    rows = torch.randint(0, 25, (40,))
    expected = F.cross_entropy(F.normalize(x, dim=1) @ F.normalize(table, dim=1).T / 0.2, rows)
    for block in (1, 8, 100):
        assert torch.allclose(info_nce_full(x, table, rows, 0.2, block), expected, atol=1e-12)
    a = x[:9].clone().requires_grad_()
    t = table[:6].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, t: info_nce_full(a, t, rows[:9] % 6, 0.2, 4), (a, t))


def test_bernoulli_kl_primitive():
    p = torch.tensor([0.1, 0.5, 0.9, 0.0, 1.0], dtype=torch.float64)
    assert torch.equal(bernoulli_kl_symmetric(p, p), torch.zeros(5, dtype=torch.float64))
    q = torch.tensor([0.2, 0.4, 0.5, 0.3, 0.99], dtype=torch.float64)
    value = bernoulli_kl_symmetric(p, q)
    assert (value > 0).all()
    pc, qc = p.clamp(1e-7, 1 - 1e-7), q.clamp(1e-7, 1 - 1e-7)

    def kl(a, b):
        return a * torch.log(a / b) + (1 - a) * torch.log((1 - a) / (1 - b))

    assert torch.allclose(value, kl(pc, qc) + kl(qc, pc), atol=1e-10)
    # the logit form used in training is the same function, clamping included
    x = torch.tensor([-30.0, -16.2, -3.0, 0.0, 0.5, 2.0, 16.0, 40.0], dtype=torch.float64)
    y = torch.tensor([-1.0, 20.0, -3.0, 4.0, -0.5, 2.5, 17.0, 16.5], dtype=torch.float64)
    assert torch.allclose(
        bernoulli_kl_symmetric_logits(x, y),
        bernoulli_kl_symmetric(torch.sigmoid(x), torch.sigmoid(y)),
        rtol=1e-6,
        atol=1e-9,
    )
    assert bernoulli_kl_symmetric_logits(x, x).abs().max() == 0
    torch.manual_seed(1)
    u, ip, iq = (torch.randn(n, 6, dtype=torch.float64) for n in (11, 9, 9))
    full = bernoulli_kl_symmetric(torch.sigmoid(u @ ip.T), torch.sigmoid(u @ iq.T)).mean()
    assert torch.allclose(dot_bernoulli_kl_full(u, ip, iq, block_size=4), full, atol=1e-12)
    assert dot_bernoulli_kl_full(u, ip, ip, block_size=4) == 0
    args = tuple(t[:5].clone().requires_grad_() for t in (u, ip, iq))
    assert torch.autograd.gradcheck(lambda a, b, c: dot_bernoulli_kl_full(a, b, c, 2), args)


# ---------------------------------------------------------------------- exact fast ranking
class MaxNumel(TorchDispatchMode):
    """Records the largest tensor any non-view op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:
            return out
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize(
    "n_mod,overrides",
    [
        (2, {}),
        (2, {"cf_model": "mf"}),
        (2, {"use_knn": False, "content_layers": [1, 0]}),
        (3, {"content_layers": [2, 3, 1]}),
        (3, {"content_layers": [1, 2, 2], "cf_model": "mf", "use_knn": False, "n_knn_layers": 2}),
        (3, {"content_layers": [1, 1, 1], "n_knn_layers": 2, "kl_modality_weights": [0.2, 0.3, 0.5]}),
    ],
)
def test_fast_ranking_equals_naive(ds2, ds3, n_mod, overrides):
    ds = ds2 if n_mod == 2 else ds3
    model, _ = make(ds, ranking_block_size=16, **overrides)
    randomise(model, seed=n_mod)
    model.eval()
    a = n_mod + 1
    with torch.no_grad():
        users, items = model.forward_representations()
    # the heads matter: stage-1 and stage-2 weights vary from pair to pair
    ex = model.explain(torch.arange(100), torch.arange(100))
    assert ex.weights.std(dim=0).max() > 1e-3 and ex.extra["item_weights"].std(dim=0).max() > 1e-3
    # float32 as used in evaluation
    block = torch.arange(10, 50)
    all_items = torch.arange(ds.n_items)
    fast32 = model.full_scores(block)
    naive32 = model.naive_pair_scores(block.repeat_interleave(ds.n_items), all_items.repeat(len(block)))
    assert torch.allclose(fast32, naive32.view(len(block), -1), rtol=1e-4, atol=1e-4)
    # float64: to 1e-5 on several user blocks (including a single user and an unsorted block)
    model.double()
    model._cache = model.build_rank_cache([u.double() for u in users], [i.double() for i in items])
    for block in (torch.arange(0, 40), torch.tensor([149]), torch.randperm(150)[:37], torch.arange(150)):
        mode = MaxNumel()
        with mode:
            fast = model.full_scores(block)
        n = len(block)  # nothing of size (users, items, d): one workspace of a 16-user tile's arrays
        tile = min(16, n) * ds.n_items
        assert mode.largest <= max((a * a + a + len(TILE_SCALARS)) * tile, n * ds.n_items) < n * ds.n_items * model.dim
        naive = model.naive_pair_scores(block.repeat_interleave(ds.n_items), all_items.repeat(len(block)))
        assert fast.shape == (len(block), ds.n_items)
        assert torch.allclose(fast, naive.view(len(block), -1), rtol=0, atol=1e-5)
    # score_pairs goes through the fast path too
    u, i = torch.tensor([3, 3, 7]), torch.tensor([1, 5, 2])
    assert torch.allclose(model.score_pairs(u, i), model.naive_pair_scores(u, i), atol=1e-5)


def test_tiles_do_not_change_scores(ds3, monkeypatch):
    """Several partial (users × items) tiles give the whole-row scores, in float32 and float64."""
    from modalrec.models import base

    model, _ = make(ds3, ranking_block_size=1024, content_layers=[1, 2, 1])
    randomise(model, seed=5)
    model.eval()
    users = torch.randperm(ds3.n_users, generator=torch.Generator().manual_seed(0))[:131]
    assert model.score_tile_shape(ds3.n_items) == (1024, ds3.n_items)  # one tile spans every item
    whole32 = model.full_scores(users)
    with torch.no_grad():
        reps = model.forward_representations()
    monkeypatch.setattr(base, "PAIR_TILE_SCORES", 1024 * 9)  # 9 items a tile: the last tile partial
    assert model.score_tile_shape(ds3.n_items) == (1024, 9) and ds3.n_items % 9
    torch.testing.assert_close(model.full_scores(users), whole32, rtol=0, atol=1e-6)
    small, _ = make(ds3, ranking_block_size=7, content_layers=[1, 2, 1])
    small.load_state_dict(model.state_dict())
    small.eval()
    monkeypatch.setattr(base, "PAIR_TILE_SCORES", 7 * 9)  # 7 users × 9 items: partial tiles both ways
    assert small.score_tile_shape(ds3.n_items) == (7, 9) and len(users) % 7
    torch.testing.assert_close(small.full_scores(users), whole32, rtol=0, atol=1e-6)
    model.double()
    model._cache = model.build_rank_cache([u.double() for u in reps[0]], [i.double() for i in reps[1]])
    tiled64 = model.full_scores(users)
    uu, ii = users.repeat_interleave(ds3.n_items), torch.arange(ds3.n_items).repeat(len(users))
    naive = model.naive_pair_scores(uu, ii).view(len(users), -1)
    torch.testing.assert_close(tiled64, naive, rtol=0, atol=1e-9)


def test_explain_and_item_representation(ds3):
    model, _ = make(ds3, content_layers=[1, 2, 1])
    model.eval()
    users, items = torch.tensor([0, 1, 2, 5]), torch.tensor([3, 3, 9, 0])
    ex = model.explain(users, items)
    assert isinstance(ex, Explanation) and ex.kind == "meta-weights"
    assert ex.parts == ["id", "image", "text", "audio"] == ex.extra["item_parts"]
    assert ex.weights.shape == (4, 4) and ex.extra["item_weights"].shape == (4, 4, 4)
    assert torch.allclose(ex.weights.sum(1), torch.ones(4))
    assert torch.allclose(ex.extra["item_weights"].sum(2), torch.ones(4, 4))
    rep = model.item_representation()
    assert rep.shape == (ds3.n_items, model.dim)
    with torch.no_grad():
        _, item_reps = model.forward_representations()
    assert torch.allclose(rep, torch.stack(item_reps).mean(0), atol=1e-6)


def test_loss_composition(ds3):
    """loss() = γ-weighted per-branch BPR + β·Σ_pairs InfoNCE + λ·symmetric KL, recomputed plainly."""
    model, config = make(ds3, content_layers=[1, 2, 1], dropout=0.0, beta_cl=0.3, lambda_kl=2.0, gamma_bpr=0.7)
    randomise(model, seed=5)
    model.train()
    gen = torch.Generator().manual_seed(0)
    batch = Batch(
        torch.randint(0, 150, (64,), generator=gen),
        torch.randint(0, 100, (64,), generator=gen),
        torch.randint(0, 100, (64,), generator=gen),
    )
    with torch.no_grad():
        got = model.loss(batch)
        users, items = model.forward_representations()
        u = [t[batch.users] for t in users]
        pos = model.pair_forward(u, [t[batch.pos] for t in items])
        neg = model.pair_forward(u, [t[batch.neg] for t in items])
        branch = -F.logsigmoid(pos["y"] - neg["y"])
        omega_bar = (pos["omega"] + neg["omega"]) / 2
        bpr = (0.7 * (omega_bar * branch).sum(1) + 0.3 * branch[:, 0]).mean()
        cl = 0.0
        for a, b in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]:  # every pair of {id, image, text, audio}
            for table_a, table_b, rows in ((users[a], users[b], batch.users), (items[a], items[b], batch.pos)):
                logits = F.normalize(table_a[rows], dim=1) @ F.normalize(table_b, dim=1).T / 0.2
                cl = cl + F.cross_entropy(logits, rows)
        content = F.normalize(0.1 * items[1] + 0.45 * items[2] + 0.45 * items[3], dim=1)
        p = torch.sigmoid(users[0][batch.users] @ content.T)
        q = torch.sigmoid(users[0][batch.users] @ F.normalize(items[0], dim=1).T)
        kl = bernoulli_kl_symmetric(p, q).mean()
    assert kl > 0 and cl > 0
    assert torch.allclose(got, bpr + 0.3 * cl + 2.0 * kl, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- training
def train_losses(model, ds, epochs: int, lr: float, batch: int = 256) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    u, i = ds.split("train")
    sampler = NegativeSampler(u, i, ds.n_items, np.random.default_rng(0))
    means = []
    for _ in range(epochs):
        model.train()
        losses = []
        for bu, bp, bn in sampler.epoch(batch):
            opt.zero_grad()
            loss = model.loss(Batch(*(torch.from_numpy(a) for a in (bu, bp, bn))))
            assert torch.isfinite(loss)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        means.append(float(np.mean(losses)))
    return means


VARIANTS = {
    "full": {},
    "CK": {"beta_cl": 0.0, "lambda_kl": 0.0},
    "CL only": {"lambda_kl": 0.0},
    "KL only": {"beta_cl": 0.0},
    "mf": {"cf_model": "mf"},
    "no knn": {"use_knn": False},
    "3 modalities": {"content_layers": [2, 3, 1]},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_train(ds2, ds3, variant, monkeypatch):
    overrides = VARIANTS[variant]
    model, config = make(ds3 if variant == "3 modalities" else ds2, **overrides)
    import modalrec.models.meaim as meaim

    def forbidden(*args, **kwargs):
        raise AssertionError("a term with weight 0 was computed")

    if config.beta_cl == 0:
        monkeypatch.setattr(meaim, "info_nce_sampled", forbidden)
    if config.lambda_kl == 0:
        monkeypatch.setattr(meaim, "dot_bernoulli_kl_full", forbidden)
    losses = train_losses(model, ds3 if variant == "3 modalities" else ds2, epochs=8, lr=0.01)
    assert losses[-1] < losses[0], losses


def test_beats_random_and_bpr():
    """Same data, same 20-epoch budget; BPR gets its better learning rate by validation recall."""
    ds = synthetic_dataset("default", n_users=600, n_items=400)
    common = {"epochs": 20, "stopping_step": 100, "train_batch_size": 512}

    def run(name, lr):
        model, config, _ = prepare_model(name, ds, {**common, "learning_rate": lr}, cache_dir=False)
        return fit(model, ds, config, log=lambda _: None)

    bpr = max((run("BPR", lr) for lr in (0.003, 0.01)), key=lambda r: r.valid.metrics["recall@20"]).test.metrics
    meaim = run("MeAIM", 0.01).test.metrics
    random_recall = 20 / ds.n_items  # expected recall@20 of a uniformly random ranking
    assert meaim["recall@20"] > 3 * random_recall
    assert meaim["recall@20"] > bpr["recall@20"] + 0.03
    assert meaim["ndcg@20"] > bpr["ndcg@20"] + 0.03


def test_amazon_scientific():
    from modalrec.data.dataset import load_dataset

    ds = load_dataset(require_shared("amazon_scientific_mm"), ["image", "text"])
    assert ds.n_items == 1585
    model, config, _ = prepare_model("MeAIM", ds, {"epochs": 2, "train_batch_size": 2048}, cache_dir=False)
    result = fit(model, ds, config, log=lambda _: None)
    losses = [h["loss"] for h in result.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert result.test.metrics["recall@20"] > 20 / ds.n_items
