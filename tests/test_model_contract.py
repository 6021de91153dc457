"""The contract every registered model keeps, checked for each one on small synthetic data.

For every model in the registry: the training loss decreases and the model ranks better than a random
ranker; it trains and ranks with one, two and three content modalities (or refuses fewer than it needs
with a clear error); ranking a user block equals ranking its parts (so blocked evaluation is exact);
the same seed gives the same losses; and, where the shared real data is present, one short epoch on
``amazon_scientific_mm`` gives finite metrics.

A model whose small-data settings differ from its paper defaults gives them as a ``tiny`` preset in its
YAML (e.g. fewer layers, a larger learning rate); the preset is applied on top of :data:`FAST`.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import expected_random_recall, require_shared

from modalrec.config import load_defaults
from modalrec.data.dataset import Dataset, load_dataset
from modalrec.errors import ConfigError
from modalrec.models import list_models
from modalrec.runs import prepare_model
from modalrec.train import fit

MODELS = [cls.name for cls in list_models()]
FAST = {"epochs": 10, "learning_rate": 0.01, "stopping_step": 10, "train_batch_size": 256, "topk": [10, 20]}
SHORT = {"epochs": 2, "stopping_step": 2, "train_batch_size": 512, "topk": [20]}


def quiet(_line: str) -> None:
    pass


def model_overrides(name: str, base: dict) -> tuple[dict, str | None]:
    """``base`` plus the model's ``tiny`` preset when its YAML has one."""
    from modalrec.models import get_model_class

    _, presets, _ = load_defaults(get_model_class(name).config_name)
    return dict(base), ("tiny" if "tiny" in presets else None)


def train(name: str, dataset: Dataset, base: dict, **extra):
    overrides, preset = model_overrides(name, {**base, **extra})
    model, config, _ = prepare_model(name, dataset, overrides, preset=preset, cache_dir=False)
    return model, fit(model, dataset, config, log=quiet)


@pytest.fixture(scope="module")
def tri_modal(synthetic) -> Dataset:
    """Synthetic data with three content modalities (image, text, audio)."""
    return synthetic(150, 100, {"image": 24, "text": 12, "audio": 8}, seed=4, name="tri")


@pytest.fixture(scope="module")
def learnable(synthetic) -> Dataset:
    """300 users x 300 items (image, text): large enough that a random top-20 is clearly beaten."""
    return synthetic(300, 300, {"image": 32, "text": 16}, seed=5, name="learn")


@pytest.mark.parametrize("name", MODELS)
def test_loss_decreases_and_ranks_better_than_random(learnable, name):
    _, result = train(name, learnable, FAST)
    losses = [h["loss"] for h in result.history]
    assert all(loss is not None and math.isfinite(loss) for loss in losses), losses
    assert min(losses[1:]) < losses[0], losses
    random_recall = expected_random_recall(learnable)
    recall = result.test.metrics["recall@20"]
    assert recall > 1.5 * random_recall, (name, recall, random_recall)


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


@pytest.mark.parametrize("name", MODELS)
def test_block_scores_equal_whole_scores_and_pairs(tri_modal, name):
    model, _ = train(name, tri_modal, {**SHORT, "epochs": 1})
    model.eval()
    users = torch.arange(tri_modal.n_users)
    whole = model.full_scores(users)
    parts = torch.cat([model.full_scores(users[i : i + 7]) for i in range(0, len(users), 7)])
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-5)
    picked_users = torch.tensor([3, 0, 3, 149, 42])
    picked_items = torch.tensor([1, 99, 7, 0, 42])
    torch.testing.assert_close(
        model.score_pairs(picked_users, picked_items), whole[picked_users, picked_items], rtol=1e-5, atol=1e-5
    )
    # scores are deterministic at evaluation time (no dropout or noise left on)
    model.train()
    model.eval()
    torch.testing.assert_close(model.full_scores(users[:10]), whole[:10])


def trajectory(history: list[dict]) -> list[dict]:
    """The per-epoch history without its wall-clock timings (loss and valid metrics)."""
    return [{k: v for k, v in h.items() if k != "train_seconds"} for h in history]


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_trajectory_whatever_the_epoch_cap(syn_dataset, name):
    """Issue 15 item 7: a seed fixes the whole per-epoch history; nothing depends on ``epochs``."""
    runs = [train(name, syn_dataset, SHORT)[1] for _ in range(2)]
    longer = train(name, syn_dataset, SHORT, epochs=4, stopping_step=4)[1]
    first = trajectory(runs[0].history)
    assert len(first) == SHORT["epochs"]
    assert trajectory(runs[1].history) == first
    assert runs[0].test.metrics == runs[1].test.metrics
    assert len(longer.history) == 4
    assert trajectory(longer.history)[: len(first)] == first


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
