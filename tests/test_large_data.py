"""The large-data mode: a fixed number of steps per epoch and a sampled early-stopping validation, by a size rule."""

from __future__ import annotations

import json
import math

import pytest

import modalrec.api as mr
from modalrec.config import resolve_config
from modalrec.errors import ConfigError
from modalrec.models import get_model_class
from modalrec.training.large_data import (
    apply_large_data_mode,
    describe_large_data,
    large_data_active,
    large_data_settings,
)


def _config(**overrides):
    return resolve_config(get_model_class("BPR"), overrides=overrides)


def test_the_size_rule_and_its_overrides():
    default = _config()
    assert default.large_data == "auto"
    assert not large_data_active(default, 999_999) and large_data_active(default, 1_000_000)
    assert large_data_active(_config(large_data="always"), 10)
    assert not large_data_active(_config(large_data="never"), 10**9)
    assert large_data_active(_config(large_data_from=500), 500)
    with pytest.raises(ConfigError, match="large_data"):
        _config(large_data="on")


def test_the_batch_grows_with_the_data_and_the_steps_stay_fixed():
    config = _config(large_data_steps=64)
    for n_train in (1_000_000, 4_000_000, 16_000_000):
        batch = large_data_settings(config, n_train)["train_batch_size"]
        assert batch == math.ceil(n_train / 64) and math.ceil(n_train / batch) == 64
    small = large_data_settings(_config(large_data="always", train_batch_size=4096), 10_000)
    assert small["train_batch_size"] == 4096  # never below the configured batch
    assert large_data_settings(config, 10) == {}  # off: nothing changes
    assert large_data_settings(config, 2_000_000)["valid_user_sample"] == 10_000
    assert "valid_user_sample" not in large_data_settings(_config(valid_user_sample=300), 2_000_000)  # the user's own


def test_plain_sgd_keeps_each_pairs_step_when_the_mode_raises_the_batch(syn_dataset):
    sgd = _config(optimizer="sgd", train_batch_size=1024, learning_rate=51.2)
    out = large_data_settings(sgd, 2_000_000)
    assert out["train_batch_size"] == 31_250
    assert out["learning_rate"] == pytest.approx(51.2 * 31_250 / 1024)  # learning_rate / batch unchanged
    assert "learning_rate" not in large_data_settings(_config(train_batch_size=1024), 2_000_000)  # Adam: kept
    kept = large_data_settings(_config(optimizer="sgd", train_batch_size=1024, large_data_sgd_lr="keep"), 2_000_000)
    assert "learning_rate" not in kept
    same_batch = _config(optimizer="sgd", large_data="always", train_batch_size=4096, learning_rate=0.5)
    assert "learning_rate" not in large_data_settings(same_batch, 10_000)  # the batch did not grow
    with pytest.raises(ConfigError, match="large_data_sgd_lr"):
        _config(large_data_sgd_lr="double")
    once = apply_large_data_mode(
        _config(optimizer="sgd", large_data="always", large_data_steps=3, train_batch_size=64, learning_rate=0.1),
        syn_dataset,
    )
    n_train = syn_dataset.split("train")[0].size
    assert once.learning_rate == pytest.approx(0.1 * math.ceil(n_train / 3) / 64)
    assert apply_large_data_mode(once, syn_dataset) is once  # resolved once: the rate is not scaled again
    line = describe_large_data(once, n_train, 3)
    assert f"plain SGD, learning rate {once.learning_rate:g} (scaled with the batch" in line
    assert "plain SGD" not in describe_large_data(_config(large_data="always"), n_train, 3)  # Adam: not mentioned


def test_applying_twice_changes_nothing(syn_dataset):
    once = apply_large_data_mode(_config(large_data="always", large_data_steps=3), syn_dataset)
    assert apply_large_data_mode(once, syn_dataset) is once
    plain = _config()
    assert apply_large_data_mode(plain, syn_dataset) is plain  # the synthetic set is far below the rule


def test_a_large_data_run_records_and_announces_its_mode(syn_dir, syn_dataset, tmp_path):
    n_train = syn_dataset.split("train")[0].size
    run = mr.train(
        "BPR",
        syn_dir,
        settings={
            "epochs": 2,
            "train_batch_size": 64,
            "large_data": "always",
            "large_data_steps": 3,
            "large_data_valid_users": 40,
        },
        seed=3,
        out=tmp_path / "run",
    )
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert metrics["large_data"] is True
    assert metrics["validation"]["users"] == 40
    config = (run.run_dir / "config.yaml").read_text()
    assert f"train_batch_size: {math.ceil(n_train / 3)}" in config
    log = (run.run_dir / "train.log").read_text()
    assert "large-data mode (large_data: always" in log and "3 steps per epoch" in log

    plain = mr.train("BPR", syn_dir, settings={"epochs": 1}, seed=3, out=tmp_path / "plain")
    metrics = json.loads((plain.run_dir / "metrics.json").read_text())
    assert metrics["large_data"] is False and "large-data" not in (plain.run_dir / "train.log").read_text()


def test_a_model_that_reads_the_batch_size_sees_the_large_data_one(syn_dir, tmp_path):
    # MMSSL counts its batches from train_batch_size to close an epoch: the mode is resolved before it is built
    run = mr.train(
        "MMSSL",
        syn_dir,
        settings={"epochs": 1, "train_batch_size": 64, "large_data": "always", "large_data_steps": 2},
        seed=3,
        out=tmp_path / "r",
    )
    assert run.model.n_batches == 2


# ---------------------------------------------------------------- models that change their own step in the mode
def test_a_models_large_data_settings_apply_only_where_the_default_is_kept(syn_dataset):
    from modalrec.config import large_data_settings_of

    assert large_data_settings_of("MARIO") == {}  # its default already refreshes its learned graphs per epoch
    assert large_data_settings_of("MeAIM") == {"cl_candidates": 1024, "kl_candidates": 1024, "cl_positives": "block"}
    meaim = get_model_class("MeAIM")
    own = resolve_config(meaim, overrides={"large_data": "always", "cl_candidates": 100})
    own = apply_large_data_mode(own, syn_dataset, meaim)
    assert (own.cl_candidates, own.kl_candidates) == (100, 1024)  # the user's value stays, the default moves
    assert own.cl_positives == "block"
    off = apply_large_data_mode(resolve_config(meaim), syn_dataset, meaim)
    assert off.cl_candidates == 0  # below the size rule nothing changes


def test_slmrec_lgmrec_and_damrs_keep_their_step_linear_in_the_mode(syn_dataset):
    from modalrec.config import large_data_settings_of

    assert large_data_settings_of("SLMRec") == {"in_batch_block": 2048}
    assert large_data_settings_of("LGMRec") == {"cl_candidates": 1024}
    assert large_data_settings_of("DA-MRS") == {"kl_items": 1024, "neighbor_anchors": 1024}
    for name, key, off, on in (
        ("SLMRec", "in_batch_block", None, 2048),
        ("LGMRec", "cl_candidates", 0, 1024),
        ("DA-MRS", "kl_items", 0, 1024),
        ("DA-MRS", "neighbor_anchors", 0, 1024),
    ):
        cls = get_model_class(name)
        assert apply_large_data_mode(resolve_config(cls), syn_dataset, cls).get(key) == off  # below the size rule
        large = resolve_config(cls, overrides={"large_data": "always"})
        assert apply_large_data_mode(large, syn_dataset, cls).get(key) == on


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("SLMRec", {"in_batch_block": 32}),
        ("LGMRec", {"cl_candidates": 16}),
        ("DA-MRS", {"kl_items": 16, "neighbor_anchors": 16, "neighbor_weight": 0.1}),
    ],
)
def test_models_train_with_their_large_data_terms(syn_dir, tmp_path, name, settings):
    base = {"epochs": 3, "train_batch_size": 128, "large_data": "always", "large_data_steps": 4}
    run = mr.train(
        name, syn_dir, settings={**base, "large_data_valid_users": 0, **settings}, seed=3, out=tmp_path / "run"
    )
    losses = [h["loss"] for h in run.result.history]
    assert losses[-1] < losses[0]


def test_sampled_candidates_hold_every_positive_once():
    import torch

    from modalrec.nn.losses import sampled_candidate_rows

    torch.manual_seed(0)
    positives = torch.tensor([5, 3, 5, 99, 0])
    rows, positions = sampled_candidate_rows(positives, 100, 30)
    assert torch.equal(rows[positions], positives)
    assert torch.equal(rows, torch.unique(rows)) and rows.numel() <= 35


def test_sampled_infonce_is_the_full_one_when_the_sample_covers_the_table():
    import torch

    from modalrec.nn.losses import info_nce_full, info_nce_sampled

    torch.manual_seed(1)
    anchors, table, index = torch.randn(6, 8), torch.randn(20, 8), torch.tensor([1, 4, 4, 7, 0, 19])
    full = info_nce_full(anchors, table, index)
    assert torch.equal(info_nce_sampled(anchors, table, index, 0), full)
    assert torch.equal(info_nce_sampled(anchors, table, index, 20), full)
    sampled = info_nce_sampled(anchors, table, index, 5)
    assert 0 < float(sampled) < float(full)  # fewer candidates in the denominator: a smaller loss


def test_block_positive_infonce_with_one_block_is_the_batch_form():
    import torch

    from modalrec.nn.losses import info_nce_sampled

    anchors, table = torch.randn(12, 8), torch.randn(40, 8)
    index = torch.tensor([3, 7, 3, 9, 0, 39, 7, 7, 12, 3, 5, 1])  # repeated positives, as popular items give
    torch.manual_seed(4)
    batch = info_nce_sampled(anchors, table, index, 25, 0.3, 512, "batch")
    torch.manual_seed(4)
    block = info_nce_sampled(anchors, table, index, 25, 0.3, 512, "block")
    assert torch.allclose(block, batch, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="positives"):
        info_nce_sampled(anchors, table, index, 25, 0.3, 512, "all")


def test_block_positive_infonce_competes_within_each_block_only():
    """Each block of anchors against its own positives and the shared draw, values and gradients."""
    import torch

    from modalrec.nn.losses import info_nce_full, info_nce_sampled

    torch.manual_seed(5)
    anchors = torch.randn(10, 6, requires_grad=True)
    table = torch.randn(30, 6, requires_grad=True)
    index = torch.tensor([2, 2, 5, 29, 11, 5, 5, 0, 2, 17])
    torch.manual_seed(6)
    got = info_nce_sampled(anchors, table, index, 12, 0.2, 4, "block")
    got.backward()
    torch.manual_seed(6)
    drawn = torch.randint(0, 30, (12,))
    a2, t2 = anchors.detach().clone().requires_grad_(), table.detach().clone().requires_grad_()
    want = 0.0
    for lo in range(0, 10, 4):
        own = index[lo : lo + 4]
        rows = torch.unique(torch.cat([own, drawn]))
        want = want + info_nce_full(a2[lo : lo + 4], t2[rows], torch.searchsorted(rows, own), 0.2) * own.numel()
    want = want / 10
    want.backward()
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert torch.allclose(anchors.grad, a2.grad, rtol=1e-4, atol=1e-6)
    assert torch.allclose(table.grad, t2.grad, rtol=1e-4, atol=1e-6)


def test_meaim_trains_in_the_large_data_mode(syn_dir, tmp_path):
    settings = {"epochs": 3, "train_batch_size": 128, "large_data": "always", "large_data_steps": 4}
    settings |= {"large_data_valid_users": 0, "cl_candidates": 0, "kl_candidates": 0}
    full = mr.train("MeAIM", syn_dir, settings=settings, seed=3, out=tmp_path / "full")
    sampled = mr.train(
        "MeAIM",
        syn_dir,
        settings={**settings, "cl_candidates": 16, "kl_candidates": 16},
        seed=3,
        out=tmp_path / "sampled",
    )
    losses = [h["loss"] for h in sampled.result.history]
    assert losses[-1] < losses[0]
    assert [h["loss"] for h in full.result.history] != losses  # the sampled terms are not the full ones


def test_sampled_subset_draws_distinct_entries_and_keeps_a_covered_index():
    import torch

    from modalrec.nn.losses import sampled_subset

    index = torch.tensor([7, 3, 11, 2, 40, 5])
    assert sampled_subset(index, 0) is index and sampled_subset(index, 6) is index and sampled_subset(index, 9) is index
    torch.manual_seed(0)
    drawn = sampled_subset(index, 4)
    assert drawn.numel() == 4 and len(set(drawn.tolist())) == 4 and set(drawn.tolist()) <= set(index.tolist())
    torch.manual_seed(0)
    assert torch.equal(sampled_subset(index, 4), drawn)  # the seeded global generator decides


def test_damrs_large_data_terms_see_only_the_drawn_items(syn_dataset, monkeypatch):
    """kl_items / neighbor_anchors N: the KL term gets N batch items and L_ND N anchors; N at least the batch's
    distinct items gives the paper's loss exactly."""
    import torch

    import modalrec.models.damrs as damrs_module
    from modalrec.graphs import GraphStore
    from modalrec.models.base import Batch

    cls = get_model_class("DA-MRS")
    seen: dict[str, list[int]] = {"kl": [], "nd": []}
    kl_fn, nd_fn = damrs_module.dot_bernoulli_kl_full, damrs_module.neighbour_discrimination_nce

    def kl_spy(users, p, q, **kw):
        seen["kl"].append(p.shape[0])
        return kl_fn(users, p, q, **kw)

    def nd_spy(anchors, tables, *args):
        seen["nd"].append(anchors[0].shape[0])
        return nd_fn(anchors, tables, *args)

    monkeypatch.setattr(damrs_module, "dot_bernoulli_kl_full", kl_spy)
    monkeypatch.setattr(damrs_module, "neighbour_discrimination_nce", nd_spy)
    g = torch.Generator().manual_seed(0)
    n_u, n_i = syn_dataset.n_users, syn_dataset.n_items
    batch = Batch(
        torch.randint(0, n_u, (64,), generator=g), torch.randint(0, n_i, (64,), generator=g),
        torch.randint(0, n_i, (64,), generator=g),
    )  # fmt: skip
    distinct = torch.unique(torch.cat([batch.pos, batch.neg])).numel()
    values = {}
    for n in (0, distinct, 16):
        torch.manual_seed(5)
        model = cls(
            syn_dataset,
            resolve_config(cls, overrides={"kl_items": n, "neighbor_anchors": n}),
            GraphStore(syn_dataset, cache_dir=False),
        )
        torch.manual_seed(6)
        values[n] = float(model.loss(batch).detach())
    assert seen["kl"] == seen["nd"] == [distinct, distinct, 16]
    assert values[0] == values[distinct]
