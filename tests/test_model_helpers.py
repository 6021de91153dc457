"""The shared building blocks of ``models/base.py`` and the YAML ``bounds:`` checked by ``config.py``.

Feature buffers (one name per modality, never in ``state_dict``), the eval-mode context of
``explain()`` (the mode is restored when it returns and when it raises), the one ranking-block
rule, the one form of a model's setting error, and the bounds every model's YAML declares.
"""

from __future__ import annotations

import re

import pytest
import torch

from modalrec.config import Bound, load_bounds, load_defaults, resolve_config
from modalrec.config.bounds import parse_bound
from modalrec.data.synth import synthetic_dataset
from modalrec.errors import ConfigError
from modalrec.graphs import GraphStore
from modalrec.models import Recommender, base, list_models
from modalrec.models.base import FEATURE_BUFFER

MODELS = [cls.name for cls in list_models()]
EXPLAINERS = [cls.name for cls in list_models() if cls.explain is not Recommender.explain]


@pytest.fixture(scope="module")
def ds():
    return synthetic_dataset(n_users=40, n_items=30, modalities={"image": 8, "text": 6}, seed=5)


def build(name: str, dataset, **overrides) -> Recommender:
    cls = next(c for c in list_models() if c.name == name)
    torch.manual_seed(0)
    config = resolve_config(cls, overrides=overrides)
    return cls(dataset, config, GraphStore(dataset, cache_dir=False))


def _modes(model: torch.nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


# ---------------------------------------------------------------------- feature buffers
@pytest.mark.parametrize("name", MODELS)
def test_feature_buffers_are_named_by_modality_and_stay_out_of_the_state(name, ds):
    model = build(name, ds)
    feats = {n: b for n, b in model.named_buffers() if n.startswith("feat_")}
    assert set(feats) <= {FEATURE_BUFFER.format(m) for m in model.modalities}
    for n, buf in feats.items():
        m = n[len("feat_") :]
        assert buf.dtype == torch.float32 and buf.shape == (ds.n_items, ds.features[m].shape[1])
        assert model.feature_buffer(m) is buf
    assert not any(k.split(".")[-1].startswith("feat_") for k in model.state_dict())
    assert all(not n.startswith("feat_") for n, _ in model.named_parameters())


def test_register_feature_buffers_subset_order_and_transform(ds):
    model = build("BPR", ds)  # any model: the helper is the base's
    names = model.register_feature_buffers(ds, ["text", "image"], transform=lambda x: 2 * x)
    assert names == ["feat_text", "feat_image"]
    torch.testing.assert_close(model.feature_buffer("text"), 2 * torch.as_tensor(ds.features["text"]))
    assert "feat_text" not in model.state_dict()


def test_coo_buffers_round_trip(ds):
    model = build("BPR", ds)
    graph = GraphStore(ds, cache_dir=False).knn_matrix("image", 3, weighted=True, normalization="sym")
    model.register_coo_buffers("g", graph)
    rows, cols, vals = model.coo_buffers("g")
    coo = graph.tocoo()
    assert rows.dtype == cols.dtype == torch.int64 and vals.dtype == torch.float32
    assert rows.tolist() == coo.row.tolist() and cols.tolist() == coo.col.tolist()
    assert not any(k.startswith("g_") for k in model.state_dict())


# ---------------------------------------------------------------------- eval-only paths
@pytest.mark.parametrize("start_training", [True, False])
@pytest.mark.parametrize("name", EXPLAINERS)
def test_explain_restores_the_mode_when_it_returns_and_when_it_raises(name, ds, start_training, monkeypatch):
    assert set(EXPLAINERS) >= {"MARIO", "MeAIM"}
    model = build(name, ds).train(start_training)
    before = _modes(model)
    users, items = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    seen = []
    compute = model.representations

    def spy():
        seen.append(model.training)
        return compute()

    monkeypatch.setattr(model, "representations", spy)
    out = model.explain(users, items)
    assert out is not None and out.weights.shape[0] == 3
    assert seen and not any(seen)  # explained with dropout off
    assert _modes(model) == before

    def boom():
        raise RuntimeError("injected")

    monkeypatch.setattr(model, "representations", boom)
    with pytest.raises(RuntimeError, match="injected"):
        model.explain(users, items)
    assert _modes(model) == before


def test_in_eval_mode_keeps_an_evaluating_model_and_its_cache(ds):
    model = build("LightGCN", ds).eval()
    cached = model.representations()
    with model.in_eval_mode():
        assert not model.training
    assert model.representations() is cached


def test_ranking_mode_switches_a_training_model_back_also_when_the_block_raises(ds):
    model = build("LightGCN", ds).train()
    with pytest.raises(RuntimeError, match="injected"), base.ranking_mode(model):
        assert not model.training
        raise RuntimeError("injected")
    assert model.training

    class Ranker:  # duck-typed like the evaluator's fixed rankers: training, train(), eval()
        training = False

        def train(self, mode: bool = True):
            raise AssertionError("an evaluating ranker must be left alone")

        eval = train

    with base.ranking_mode(Ranker()):
        pass


def test_the_cache_is_dropped_by_every_mode_call_and_by_a_move_kept_otherwise(ds):
    """The contract docs/extending.md#cached-representations states: eval() refreshes the cache (also on a model
    already evaluating), so do load_state_dict and .to(); plain repeated ranking reuses it."""
    model = build("LightGCN", ds).eval()
    cached = model.representations()
    assert model.representations() is cached
    model.eval()
    refreshed = model.representations()
    assert refreshed is not cached
    model.to("cpu")  # same device, but a move all the same: cached tables could be on the old device
    assert model.representations() is not refreshed
    again = model.representations()
    model.load_state_dict(model.state_dict())
    assert model.representations() is not again


# ---------------------------------------------------------------------- ranking blocks
def test_ranking_block_size_setting_or_the_device_default(ds):
    assert build("MARIO", ds, ranking_block_size=7).ranking_block_size(ds.n_items) == 7
    assert build("MeAIM", ds, ranking_block_size=5).ranking_block_size(ds.n_items) == 5
    auto = build("MeAIM", ds).ranking_block_size(ds.n_items)  # null: 32 users per CPU thread
    assert auto == 32 * max(1, torch.get_num_threads())
    assert build("LightGCN", ds).ranking_block_size(ds.n_items) == auto  # no such key: the same default
    # CPU tiles: the same users, and columns that keep an array at PAIR_TILE_SCORES, at any catalogue size
    model = build("MeAIM", ds)
    for n_items in (50, 300_000, 10**9):
        rows, cols = model.score_tile_shape(n_items, stacked=9)
        assert rows == auto and cols == min(n_items, base.PAIR_TILE_SCORES // auto)
    maml = build("MAML", ds, ranking_pair_block=100)  # pairs per block, at least one user
    assert (maml.ranking_block_size(30), maml.ranking_block_size(7), maml.ranking_block_size(500)) == (3, 14, 1)


# ---------------------------------------------------------------------- errors found against the data
def test_setting_error_names_the_model_and_the_key(ds):
    model = build("BPR", ds)
    assert str(model.setting_error("knn_k", "must be below the 30 items; got 40")) == (
        "BPR: knn_k must be below the 30 items; got 40"
    )
    with pytest.raises(ConfigError, match=r"^MeAIM: needs at least 2 content modalities; dataset .* has 1 \(image\)$"):
        build("MeAIM", ds.select_modalities(["image"]))
    with pytest.raises(ConfigError, match=r"^MMSSL: head_num must divide embedding_size 64 .*; got 3$"):
        build("MMSSL", ds, head_num=3)
    with pytest.raises(ConfigError, match=r"^FREEDOM: feat_embed_dim must equal embedding_size 64 .*; got 32$"):
        build("FREEDOM", ds, feat_embed_dim=32)
    with pytest.raises(ConfigError, match=r"^NGCF: mess_dropout needs one value per layer of .*; got \[0.1\]$"):
        build("NGCF", ds, mess_dropout=[0.1])


# ---------------------------------------------------------------------- bounds
@pytest.mark.parametrize("model", [None, *list_models()], ids=lambda m: "overall" if m is None else m.name)
def test_every_yaml_declares_valid_bounds_on_its_own_keys(model):
    bounds = load_bounds(model)
    assert set(bounds) <= set(load_defaults(model)[0])
    assert {"embedding_size", "learning_rate", "epochs", "topk"} <= set(bounds)  # overall.yaml's, for every model


@pytest.mark.parametrize(
    ("model", "key", "value", "expected"),
    [
        ("layergcn", "n_layers", 0, "n_layers = 0 must be a positive integer"),
        ("mmgcn", "n_layers", 0, "n_layers = 0 must be a positive integer"),
        ("bm3", "dropout", 1.0, "dropout = 1.0 must be in [0, 1)"),
        ("lgmrec", "keep_rate", 0.0, "keep_rate = 0.0 must be in (0, 1]"),
        ("freedom", "mm_image_weight", -0.1, "mm_image_weight = -0.1 must be in [0, 1]"),
        ("mario", "content_gate_speed", 0.0, "content_gate_speed = 0.0 must be > 0"),
        ("mario", "content_gate_init", float("inf"), "content_gate_init = inf must be a finite number"),
        ("mario", "backbone", "gcn", "backbone must be one of lightgcn, bprmf, ngcf; got 'gcn'"),
        ("meaim", "cf_model", None, "cf_model must be one of lightgcn, mf; got None"),
        ("bpr", "init", "zeros", "init must be one of xavier_normal, small_uniform; got 'zeros'"),
        ("meaim", "kl_modality_weights", [0.5, -1], "kl_modality_weights = [0.5, -1] every entry must be >= 0; got -1"),
        ("ngcf", "mess_dropout", [0.1, 1.0], "mess_dropout = [0.1, 1.0] every entry must be in [0, 1); got 1.0"),
        ("meaim", "ranking_block_size", 0, "ranking_block_size = 0 must be a positive integer"),
        ("slmrec", "embedding_size", 1, "embedding_size = 1 must be >= 2 (the last FAC step has d/2 dimensions)"),
    ],
)
def test_out_of_bounds_values_are_one_line_naming_key_and_range(model, key, value, expected):
    for source in ("override", "--config x.yaml"):
        with pytest.raises(ConfigError) as err:
            resolve_config(model, overrides={key: value}, source=source)
        assert str(err.value) == f"{source}: {expected}"


def test_bounds_allow_the_edges_and_null():
    assert resolve_config("layergcn", overrides={"n_layers": 1}).n_layers == 1
    assert resolve_config("lgmrec", overrides={"keep_rate": 1.0}).keep_rate == 1.0
    assert resolve_config("meaim", overrides={"ranking_block_size": None}).ranking_block_size is None
    assert resolve_config("slmrec", overrides={"embedding_size": 2}).embedding_size == 2
    assert resolve_config("bpr", overrides={"embedding_size": 1}).embedding_size == 1  # overall.yaml's bound


def test_defaults_and_presets_are_checked_against_the_bounds(monkeypatch):
    import modalrec.config as config_mod

    real = config_mod.load_defaults
    bad_default = {}

    def patched(name):
        defaults, presets, space = real(name)
        return {**defaults, **bad_default}, {**presets, "bad": {"dropout": 1.5}}, space

    monkeypatch.setattr(config_mod, "load_defaults", patched)
    with pytest.raises(ConfigError, match=re.escape("configs/bm3.yaml preset 'bad': dropout = 1.5 must be in [0, 1)")):
        resolve_config("bm3", preset="bad")
    bad_default["n_layers"] = -1
    with pytest.raises(ConfigError, match=re.escape("configs/bm3.yaml: n_layers = -1 must be >= 0")):
        resolve_config("bm3")


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({}, "give {low, high"),
        ({"low": 0, "typo": 1}, "give {low, high"),
        ({"low_open": True}, "give low and/or high"),
        ({"low": "a"}, "finite numbers"),
        ({"low": 1, "high": 0}, "must be below high"),
        ({"choices": []}, "non-empty list"),
        ({"choices": ["a"], "low": 0}, "without a range"),
        ([0, 1], "give {low, high"),
    ],
)
def test_a_malformed_bound_is_an_error_naming_it(spec, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)) as err:
        parse_bound(spec, "configs/x.yaml bounds: k")
    assert str(err.value).startswith("configs/x.yaml bounds: k: ")


def test_bound_descriptions():
    assert Bound(low=1).describe() == "a positive integer"
    assert Bound(low=1.0).describe() == ">= 1.0"
    assert Bound(low=0, high=1, low_open=True, high_open=True).describe() == "in (0, 1)"
    assert Bound(high=5, high_open=True).describe() == "< 5"
    assert Bound(choices=(None, "a")).describe() == "one of null, a"
    assert Bound(choices=(None, "a")).problem(None) is None
    assert Bound(low=0).problem(None) is None  # "not set" passes a range
    assert Bound(low=0).problem(True) == "= True must be >= 0"  # a bool is not a number
