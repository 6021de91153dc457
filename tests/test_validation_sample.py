"""Early stopping on a fixed, seeded sample of the valid users (``valid_user_sample``); test always ranks everyone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modalrec.config import resolve_config
from modalrec.errors import ConfigError
from modalrec.evaluation import Evaluator, top_k_items
from modalrec.graphs import GraphStore
from modalrec.models import build_model, get_model_class
from modalrec.training import fit


def _model(dataset, **overrides):
    config = resolve_config(get_model_class("BPR"), overrides={"epochs": 3, **overrides})
    torch.manual_seed(0)
    return build_model("BPR", dataset, config, GraphStore(dataset, cache_dir=False)), config


def test_a_sampled_evaluation_is_the_full_one_restricted_to_the_drawn_users(syn_dataset):
    model, _ = _model(syn_dataset)
    full = Evaluator(syn_dataset, "valid").evaluate(model)
    sample = Evaluator(syn_dataset, "valid", user_sample=40, sample_seed=5)
    again = Evaluator(syn_dataset, "valid", user_sample=40, sample_seed=5)
    other = Evaluator(syn_dataset, "valid", user_sample=40, sample_seed=6)
    assert sample.users.size == 40 and sample.n_eligible_users == full.users.size
    assert np.array_equal(sample.users, again.users) and not np.array_equal(sample.users, other.users)
    assert np.all(np.diff(sample.users) > 0) and np.isin(sample.users, full.users).all()
    got = sample.evaluate(model)
    rows = np.searchsorted(full.users, sample.users)
    for name, per_user in got.per_user.items():
        np.testing.assert_array_equal(per_user, full.per_user[name][rows], err_msg=name)
    assert Evaluator(syn_dataset, "valid", user_sample=10_000).users.size == full.users.size  # above the count: all


def test_a_run_that_samples_reports_full_valid_metrics_and_says_what_it_sampled(syn_dataset):
    model, config = _model(syn_dataset, valid_user_sample=30)
    lines: list[str] = []
    result = fit(model, syn_dataset, config, log=lines.append)
    n_valid = Evaluator(syn_dataset, "valid").users.size
    assert result.validation == {"users": 30, "of": n_valid, "seed": config.seed}
    assert any("validates on 30 of the" in line for line in lines)
    assert result.valid.users.size == n_valid  # the best weights validated on every user
    full = Evaluator(syn_dataset, "valid").evaluate(model)  # the model holds the best weights now
    assert result.valid.metrics == full.metrics
    assert result.test is not None and result.test.users.size == Evaluator(syn_dataset, "test").users.size
    assert all(h["valid"] for h in result.history)


def test_without_a_sample_nothing_changes(syn_dataset):
    plain_model, plain_config = _model(syn_dataset)
    plain = fit(plain_model, syn_dataset, plain_config, log=lambda _: None)
    big_model, big_config = _model(syn_dataset, valid_user_sample=10_000)  # more than there are: every user
    big = fit(big_model, syn_dataset, big_config, log=lambda _: None)
    assert plain.validation == big.validation == {"users": plain.valid.users.size, "of": plain.valid.users.size}
    assert plain.valid.metrics == big.valid.metrics and plain.test.metrics == big.test.metrics


def test_a_negative_sample_size_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="valid_user_sample"):
        resolve_config(get_model_class("BPR"), overrides={"valid_user_sample": -1})


def test_a_run_directory_records_its_validation(syn_dir, tmp_path):
    import modalrec.api as mr

    run = mr.train("BPR", syn_dir, settings={"epochs": 2, "valid_user_sample": 25}, seed=3, out=tmp_path / "run")
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert metrics["validation"]["users"] == 25 and metrics["validation"]["seed"] == 3


def _counting_representations(model, monkeypatch) -> list[int]:
    """Count the model's computations of its ranking representations."""
    calls: list[int] = []
    compute = model.compute_representations

    def counted():
        calls.append(1)
        return compute()

    monkeypatch.setattr(model, "compute_representations", counted)
    return calls


def test_rankings_of_a_model_in_evaluation_mode_share_one_computation(syn_dataset, monkeypatch):
    model, _ = _model(syn_dataset)
    evaluator = Evaluator(syn_dataset, "valid", block_size=16)
    first = evaluator.evaluate(model)  # from training mode: switched to evaluation and back
    assert model.training
    calls = _counting_representations(model, monkeypatch)
    model.eval()
    starts = evaluator.block_starts()
    parts = [evaluator.evaluate(model, blocks=starts[:2]), evaluator.evaluate(model, blocks=starts[2:])]
    again = Evaluator(syn_dataset, "test").evaluate(model)
    assert len(calls) == 1 and not model.training  # one computation for the chunks and the other split
    for name, per_user in first.per_user.items():
        np.testing.assert_array_equal(np.concatenate([p.per_user[name] for p in parts]), per_user, err_msg=name)
    assert again.users.size > 0
    model.train()
    evaluator.evaluate(model)
    assert len(calls) == 2 and model.training  # trained since: computed again


def test_a_sampled_run_tests_and_validates_its_best_weights_on_one_computation(syn_dataset, monkeypatch):
    model, config = _model(syn_dataset, valid_user_sample=30, epochs=2)
    trainer_calls = _counting_representations(model, monkeypatch)
    result = fit(model, syn_dataset, config, log=lambda _: None)
    # one per epoch's sampled validation, one for the best weights' full validation and test together
    assert len(trainer_calls) == len(result.history) + 1
    assert result.test is not None and result.valid.users.size == Evaluator(syn_dataset, "valid").users.size


def test_a_ranking_that_raises_leaves_a_training_model_in_training_mode(syn_dataset, monkeypatch):
    model, _ = _model(syn_dataset)
    model.train()

    def broken(users):
        raise RuntimeError("injected")

    monkeypatch.setattr(model, "full_scores", broken)
    with pytest.raises(RuntimeError, match="injected"):
        Evaluator(syn_dataset, "valid", block_size=16).evaluate(model)
    assert model.training
    with pytest.raises(RuntimeError, match="injected"):
        top_k_items(model, torch.arange(3), 5)
    assert model.training
