"""The contract every registered model keeps, checked for each one on small synthetic data.

Every model passes the shipped contract kit (:func:`modalrec.testing.check_model`, what ``modalrec check-model``
runs on a user's model): its loss is finite and falls, it ranks better than a random ranker, its block, pair and
exact ranking paths agree, ``candidate_scores`` equals the ranking's columns, the same seed gives the same
losses, metrics and weights (whatever the epoch cap), saved weights load back to the same scores, its
explanations have the right shape, and its declared cold-item rule holds. Beyond the kit, for the built-in
models: each trains and ranks with one and three content modalities (or refuses fewer than it needs with a
clear error), its ranking paths agree with three modalities too, training switches torch to reproducible
kernels, and, where the shared real data is present, one short epoch on ``amazon_scientific_mm`` gives finite
metrics.

A model whose small-data settings differ from its paper defaults gives them as a ``tiny`` preset in its
YAML (e.g. fewer layers, a larger learning rate); the kit applies it on top of its own settings, as does :data:`SHORT`.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import require_shared

from modalrec.config import load_defaults
from modalrec.data.dataset import Dataset, load_dataset
from modalrec.errors import ConfigError
from modalrec.models import list_models
from modalrec.runs import prepare_model
from modalrec.testing import CHECK_NAMES, check_model
from modalrec.testing.checks import check_ranking_paths
from modalrec.training import fit

MODELS = [cls.name for cls in list_models()]
SHORT = {"epochs": 2, "stopping_step": 2, "train_batch_size": 512, "topk": [20]}


def quiet(_line: str) -> None:
    pass


def model_overrides(name: str, base: dict) -> tuple[dict, str | None]:
    """``base`` plus the model's ``tiny`` preset when its YAML has one."""
    from modalrec.models import get_model_class

    _, presets, _ = load_defaults(get_model_class(name))
    return dict(base), ("tiny" if "tiny" in presets else None)


def train(name: str, dataset: Dataset, base: dict, **extra):
    overrides, preset = model_overrides(name, {**base, **extra})
    model, config, _ = prepare_model(name, dataset, overrides, preset=preset, cache_dir=False)
    return model, fit(model, dataset, config, log=quiet)


@pytest.fixture(scope="module")
def tri_modal(synthetic) -> Dataset:
    """Synthetic data with three content modalities (image, text, audio)."""
    return synthetic(150, 100, {"image": 24, "text": 12, "audio": 8}, seed=4, name="tri")


@pytest.mark.parametrize("name", MODELS)
def test_model_passes_the_contract_kit(name):
    """Every check of the shipped kit passes (no warning either: a built-in model's cold rule matches what it reads)."""
    report = check_model(name)
    assert [c.name for c in report.checks] == list(CHECK_NAMES)
    assert all(c.status == "PASS" for c in report.checks), str(report)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("n_modalities", [1, 3])
def test_trains_and_ranks_with_one_or_three_modalities(tri_modal, name, n_modalities):
    from modalrec.models import get_model_class

    ds = tri_modal.select_modalities(["image", "text", "audio"][:n_modalities])
    if get_model_class(name).min_modalities > n_modalities:
        with pytest.raises(ConfigError, match="content modalities"):
            train(name, ds, SHORT)
        return
    model, result = train(name, ds, SHORT)
    assert all(math.isfinite(h["loss"]) for h in result.history)
    model.eval()
    scores = model.full_scores(torch.arange(5))
    assert scores.shape == (5, ds.n_items)
    assert torch.isfinite(scores).all()
    # blocks, pairs and any exact path agree with three modalities too (the kit's data has two)
    if n_modalities == 3:
        paths = check_ranking_paths(model)
        assert paths.ok, str(paths)


def test_training_makes_multithreaded_cpu_kernels_reproducible(syn_dataset):
    """With 2 intra-op threads, an accumulating index_put (the backward of ``table[index]``) used
    atomic adds whose order followed the thread timing; training switches torch to its serial,
    reproducible kernels (issue 15 item 7: two runs of one seed drifted apart after a few epochs)."""
    train("BPR", syn_dataset, {**SHORT, "epochs": 1})
    assert torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(0)
        index = torch.randint(0, 400, (20_000,), generator=g)
        values = torch.randn(20_000, 64, generator=g)
        outs = [torch.zeros(400, 64).index_put_((index,), values, accumulate=True) for _ in range(10)]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(outs[0], o) for o in outs[1:])


@pytest.fixture(scope="module")
def scientific():
    return load_dataset(require_shared("amazon_scientific_mm"))


@pytest.mark.parametrize("name", MODELS)
def test_one_short_epoch_on_real_data(scientific, name):
    _, result = train(name, scientific, {**SHORT, "epochs": 1})
    assert math.isfinite(result.history[0]["loss"])
    assert all(math.isfinite(v) for v in result.test.metrics.values())
    assert result.test.metrics["recall@20"] > 0
