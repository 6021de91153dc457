"""The closed-form SGD step (BPR, Rendle form): the update autograd + torch SGD take, touching only batch rows."""

from __future__ import annotations

import copy

import pytest
import torch

from modalrec.config import resolve_config
from modalrec.graphs import GraphStore
from modalrec.models import build_model, get_model_class
from modalrec.models.base import Batch
from modalrec.models.bpr import BPR
from modalrec.training import fit
from modalrec.training.state import TrainingStopped
from modalrec.training.trainer import Trainer

RENDLE = {"optimizer": "sgd", "reg_form": "sq", "item_bias": True, "reg_weight": 0.05, "learning_rate": 0.5}


def _autograd_step(model: BPR, batch: Batch, lr: float) -> float:
    """Reference: the trainer's generic path — loss, backward, torch SGD."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    opt.zero_grad()
    loss = model.loss(batch)
    loss.backward()
    opt.step()
    return float(loss.detach())


@pytest.mark.parametrize("item_bias", [True, False])
def test_one_closed_form_step_equals_the_autograd_step(small2, build, item_bias):
    model = build("BPR", small2, **{**RENDLE, "item_bias": item_bias})
    with torch.no_grad():  # a non-zero bias, so the bias terms of the gradient are exercised
        if model.item_bias is not None:
            model.item_bias.weight.normal_(0, 0.3)
    # repeated users and items (and an item that is one sample's positive and another's negative)
    users = torch.tensor([0, 0, 3, 5, 5, 5, 7, 9])
    pos = torch.tensor([1, 2, 1, 4, 6, 6, 2, 8])
    neg = torch.tensor([2, 9, 11, 1, 1, 3, 4, 2])
    batch = Batch(users, pos, neg)
    reference = copy.deepcopy(model)
    expected_loss = _autograd_step(reference, batch, 0.5)
    model.train()
    with torch.no_grad():
        loss = model.closed_form_sgd_step(batch, 0.5)
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    for (name, got), want in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7, msg=name)
    untouched = torch.ones(small2.n_users, dtype=torch.bool)
    untouched[users] = False
    before = build("BPR", small2, **{**RENDLE, "item_bias": item_bias}).user_emb.weight
    assert torch.equal(model.user_emb.weight[untouched], before[untouched])  # rows outside the batch never move


def test_a_non_finite_loss_changes_nothing(small2, build):
    model = build("BPR", small2, **RENDLE)
    with torch.no_grad():
        model.user_emb.weight[0] = float("inf")
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        assert (
            model.closed_form_sgd_step(Batch(torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([3, 4])), 0.1)
            is None
        )
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


class _AutogradBPR(BPR):
    """BPR with the closed form switched off: the trainer back-propagates its loss."""

    def has_closed_form_sgd_step(self) -> bool:
        return False


def _train(cls: type[BPR], dataset, **overrides):
    """``cls`` trained 3 epochs from torch seed 3 with the Rendle-form settings; (model, result)."""
    config = resolve_config(
        get_model_class("BPR"), overrides={**RENDLE, "epochs": 3, "learning_rate": 4.0, **overrides}
    )
    torch.manual_seed(3)
    model = cls(dataset, config, GraphStore(dataset, cache_dir=False))
    return model, fit(model, dataset, config, log=lambda _: None)


def test_training_through_the_closed_form_matches_autograd_training(syn_dataset):
    fast, fast_result = _train(BPR, syn_dataset, learning_rate_scheduler=[0.5, 1])
    slow, slow_result = _train(_AutogradBPR, syn_dataset, learning_rate_scheduler=[0.5, 1])
    for name, value in fast.state_dict().items():
        torch.testing.assert_close(value, slow.state_dict()[name], rtol=1e-4, atol=1e-6, msg=name)
    assert [h["loss"] for h in fast_result.history] == pytest.approx([h["loss"] for h in slow_result.history], rel=1e-5)
    assert fast_result.best_epoch == slow_result.best_epoch


def test_the_trainer_builds_no_torch_optimiser_for_the_closed_form(syn_dataset):
    config = resolve_config(get_model_class("BPR"), overrides=RENDLE)
    model = build_model("BPR", syn_dataset, config, GraphStore(syn_dataset, cache_dir=False))
    assert Trainer(model, syn_dataset, config, log=lambda _: None).optimizer is None
    for other in ({"reg_form": "emb"}, {"optimizer": "adam"}, {"weight_decay": 0.01}):
        config = resolve_config(get_model_class("BPR"), overrides={**RENDLE, **other})
        model = build_model("BPR", syn_dataset, config, GraphStore(syn_dataset, cache_dir=False))
        assert Trainer(model, syn_dataset, config, log=lambda _: None).optimizer is not None, other


def test_a_closed_form_run_resumes_exactly(syn_dataset):
    config = resolve_config(get_model_class("BPR"), overrides={**RENDLE, "epochs": 4, "learning_rate": 4.0})
    torch.manual_seed(3)
    whole = build_model("BPR", syn_dataset, config, GraphStore(syn_dataset, cache_dir=False))
    fit(whole, syn_dataset, config, log=lambda _: None)

    states: list[dict] = []
    torch.manual_seed(3)
    first = build_model("BPR", syn_dataset, config, GraphStore(syn_dataset, cache_dir=False))
    calls = iter([None] * 3 + [2] + [None] * 10_000)  # an interrupt mid-run
    with pytest.raises(TrainingStopped):
        fit(first, syn_dataset, config, log=lambda _: None, checkpoint=states.append, interrupt=lambda: next(calls))
    torch.manual_seed(99)  # the resume restores every random state itself
    second = build_model("BPR", syn_dataset, config, GraphStore(syn_dataset, cache_dir=False))
    fit(second, syn_dataset, config, log=lambda _: None, resume=copy.deepcopy(states[-1]))
    for name, value in whole.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name
