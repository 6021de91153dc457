"""Integration on the real shared data (amazon_scientific_mm); skipped, with the reason, where it is absent."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import require_shared

from modalrec.data.dataset import load_dataset
from modalrec.testing.kit import expected_random_recall

FOLDER = "amazon_scientific_mm"
# a short run with a small evaluation (only @20) — enough to see learning, not to reach the published numbers
SHORT = {"epochs": 3, "learning_rate": 0.005, "topk": [20], "stopping_step": 3}


@pytest.fixture(scope="module")
def scientific():
    return load_dataset(require_shared(FOLDER))


def test_load_amazon_scientific_mm(scientific):
    ds = scientific
    assert (ds.n_users, ds.n_items) == (2928, 1585)
    assert ds.modalities == ["image", "text"]  # text_feat_minilm.npy is not a *_feat.npy modality
    assert {m: x.shape for m, x in ds.features.items()} == {"image": (1585, 512), "text": (1585, 512)}
    assert any("144 repeated (user, item) pairs" in w for w in ds.warnings), ds.warnings
    assert len(ds.users) == 19_712 - 144
    assert np.isfinite(ds.features["image"]).all()
    assert ds.title(0)
    counts = ds.summary()["per_split"]
    assert counts["train"] > 13_000 and counts["valid"] <= 2928 and counts["test"] <= 2928


def test_minilm_text_can_be_loaded_by_renaming(tmp_path):
    """The MiniLM features use a non-modality name; linking them as `<m>_feat.npy` makes them a modality."""
    src = require_shared(FOLDER)
    folder = tmp_path / "sci"
    folder.mkdir()
    for name in ("scientific_mm.inter", "image_feat.npy"):
        (folder / name).symlink_to(src / name)
    (folder / "minilm_feat.npy").symlink_to(src / "text_feat_minilm.npy")
    ds = load_dataset(folder)
    assert ds.summary()["modalities"] == {"image": 512, "minilm": 384}


@pytest.mark.parametrize("model_name", ["LightGCN", "MARIO"])
def test_short_training_beats_random(scientific, model_name, tmp_path):
    from modalrec.models import MODEL_REGISTRY
    from modalrec.runs import prepare_model
    from modalrec.training import fit

    if model_name.lower() not in MODEL_REGISTRY:
        pytest.skip(f"{model_name} is not registered in this checkout")
    model, config, _ = prepare_model(model_name, scientific, dict(SHORT), cache_dir=tmp_path / "cache")
    result = fit(model, scientific, config, log=lambda _line: None)
    assert len(result.history) == 3
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert all(math.isfinite(v) for v in result.test.metrics.values())
    random_recall = expected_random_recall(scientific)  # ≈ 20 / 1580 ≈ 0.013 with one test item per user
    assert result.test.metrics["recall@20"] > 2 * random_recall, (result.test.metrics, random_recall)
