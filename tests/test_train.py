"""The trainer: negative sampling, batches, the CF baselines, determinism, early stopping, NaN, config."""

from __future__ import annotations

import math
import signal
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modalrec.config import Config, describe_preset, parse_overrides, resolve_config
from modalrec.data.dataset import Dataset
from modalrec.errors import ConfigError, ModalrecError
from modalrec.evaluation import Evaluator
from modalrec.models.base import Batch, Recommender
from modalrec.runs import prepare_model
from modalrec.testing.kit import expected_random_recall
from modalrec.training import Callback, NegativeSampler, Trainer, TrainingStopped, fit

FAST = {"epochs": 15, "learning_rate": 0.01, "stopping_step": 5, "train_batch_size": 256}
CF_MODELS = ("BPR", "LightGCN", "NGCF")


def quiet(_line: str) -> None:
    pass


# ================================================================ negative sampling
@st.composite
def _interactions(draw):
    n_items = draw(st.integers(2, 12))
    n_users = draw(st.integers(1, 6))
    pairs = draw(st.lists(st.tuples(st.integers(0, n_users - 1), st.integers(0, n_items - 1)), min_size=1, max_size=40))
    u = np.array([p[0] for p in pairs], dtype=np.int64)
    i = np.array([p[1] for p in pairs], dtype=np.int64)
    return u, i, n_items


@settings(max_examples=80, deadline=None)
@given(data=_interactions(), seed=st.integers(0, 2**16))
def test_negative_sampler_never_returns_a_positive(data, seed):
    users, items, n_items = data
    pool = set(items.tolist())
    per_user = {u: set(items[users == u].tolist()) for u in set(users.tolist())}
    if any(len(s) >= len(pool) for s in per_user.values()):
        with pytest.raises(ModalrecError, match="every training item"):
            NegativeSampler(users, items, n_items, np.random.default_rng(seed))
        return
    sampler = NegativeSampler(users, items, n_items, np.random.default_rng(seed))
    query = np.repeat(np.array(sorted(per_user), dtype=np.int64), 30)
    neg = sampler.sample(query)
    assert neg.shape == query.shape
    for u, n in zip(query.tolist(), neg.tolist(), strict=True):
        assert n not in per_user[u]
        assert n in pool  # only items that occur in training
    assert not sampler.is_positive(query, neg).any()
    assert sampler.is_positive(users, items).all()


def test_negative_sampler_is_uniform_over_the_training_pool():
    # items 0..9 occur in training, items 10..14 never do; user 0 owns item 0 only
    users = np.array([0] + [1] * 9, dtype=np.int64)
    items = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], dtype=np.int64)
    sampler = NegativeSampler(users, items, 15, np.random.default_rng(0))
    neg = sampler.sample(np.zeros(90_000, dtype=np.int64))
    counts = np.bincount(neg, minlength=15)
    assert counts[0] == 0 and counts[10:].sum() == 0
    expected = 90_000 / 9
    assert np.all(np.abs(counts[1:10] - expected) < 0.05 * expected), counts  # ~10 sigma slack
    chi2 = ((counts[1:10] - expected) ** 2 / expected).sum()
    assert chi2 < 40  # 8 degrees of freedom; p < 1e-5


def test_epoch_yields_every_training_pair_once():
    rng = np.random.default_rng(3)
    users = rng.integers(0, 20, size=500)
    items = rng.integers(0, 50, size=500)
    sampler = NegativeSampler(users, items, 50, np.random.default_rng(1))
    batches = list(sampler.epoch(64))
    assert [len(b[0]) for b in batches] == [64] * 7 + [500 - 7 * 64]
    u = np.concatenate([b[0] for b in batches])
    p = np.concatenate([b[1] for b in batches])
    n = np.concatenate([b[2] for b in batches])
    assert sorted(zip(u.tolist(), p.tolist(), strict=True)) == sorted(zip(users.tolist(), items.tolist(), strict=True))
    assert not sampler.is_positive(u, n).any()
    second = np.concatenate([b[0] for b in sampler.epoch(64)])
    assert not np.array_equal(second, u)  # reshuffled every epoch


# ================================================================ the CF baselines on synthetic data
@pytest.fixture(scope="module")
def trained(syn_dataset):
    """Each CF model trained once (15 epochs) on the conftest synthetic dataset."""
    out = {}
    for name in CF_MODELS:
        model, config, _ = prepare_model(name, syn_dataset, dict(FAST), cache_dir=False)
        out[name] = (model, fit(model, syn_dataset, config, log=quiet))
    return out


@pytest.mark.parametrize("name", CF_MODELS)
def test_cf_model_loss_decreases(trained, name):
    losses = [h["loss"] for h in trained[name][1].history]
    assert all(math.isfinite(x) for x in losses)
    assert losses[1] < losses[0]
    assert losses[4] < losses[0] - 0.02, losses[:5]
    assert min(losses) < 0.9 * losses[0]


@pytest.mark.parametrize("name", CF_MODELS)
def test_cf_model_beats_a_random_ranker(trained, syn_dataset, name):
    result = trained[name][1]
    random_recall = expected_random_recall(syn_dataset)
    recall = result.test.metrics["recall@20"]
    assert recall > 1.5 * random_recall, (recall, random_recall)
    assert result.test.metrics["ndcg@20"] > 0
    assert 0 <= result.best_epoch < FAST["epochs"]
    best_logged = max(h["valid"]["recall@20"] for h in result.history)  # history holds 4-decimal values
    assert result.valid.metrics["recall@20"] == pytest.approx(best_logged, abs=1e-4)
    assert result.history[result.best_epoch]["valid"]["recall@20"] == best_logged
    assert set(result.timings) >= {"seconds_per_epoch", "ranking_seconds", "peak_memory_mb", "epochs_run"}


class RandomScores(Recommender):
    """Uniformly random scores: the random ranker, to check the analytic baseline."""

    name = "RandomScores"

    def __init__(self, dataset, seed):
        super().__init__(dataset, Config({}), None)
        self.gen = torch.Generator().manual_seed(seed)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def full_scores(self, users):
        return torch.rand(len(users), self.n_items, generator=self.gen)


def test_random_ranker_matches_the_analytic_expectation(syn_dataset):
    ev = Evaluator(syn_dataset, "test", ks=(20,))
    recalls = [ev.evaluate(RandomScores(syn_dataset, s)).metrics["recall@20"] for s in range(40)]
    expected = expected_random_recall(syn_dataset)
    assert abs(np.mean(recalls) - expected) < 0.03, (np.mean(recalls), expected)


@pytest.mark.parametrize("name", CF_MODELS)
def test_same_seed_same_result_other_seed_differs(syn_dataset, name):
    def run(seed):
        model, config, _ = prepare_model(name, syn_dataset, {**FAST, "epochs": 3, "seed": seed}, cache_dir=False)
        r = fit(model, syn_dataset, config, log=quiet)
        strip = [{k: v for k, v in h.items() if k != "train_seconds"} for h in r.history]
        return r, strip, model

    a, ha, ma = run(7)
    b, hb, mb = run(7)
    c, hc, _ = run(8)
    assert ha == hb
    assert a.test.metrics == b.test.metrics and a.valid.metrics == b.valid.metrics
    for k, v in a.test.per_user.items():
        np.testing.assert_array_equal(v, b.test.per_user[k])
    for (k, v), (_, w) in zip(ma.state_dict().items(), mb.state_dict().items(), strict=True):
        assert torch.equal(v, w), k
    assert [h["loss"] for h in hc] != [h["loss"] for h in ha]


# ================================================================ early stopping, restore, NaN, one test pass
class Scripted(Recommender):
    """A model whose ranking quality is scripted: valid/test items get a bonus that shrinks as ``drift`` grows.

    ``loss = -drift`` so every optimiser step increases ``drift``; the valid metric therefore never improves
    after the first evaluation. ``nan_epoch``: the loss is NaN from that epoch on.
    """

    name = "Scripted"

    def __init__(self, dataset: Dataset, nan_epoch: int | None = None) -> None:
        super().__init__(dataset, Config({}), None)
        self.drift = torch.nn.Parameter(torch.zeros(()))
        target = torch.zeros(dataset.n_users, dataset.n_items)
        for split in ("valid", "test"):
            u, i = dataset.split(split)
            target[torch.from_numpy(u), torch.from_numpy(i)] = 1.0
        self.register_buffer("target", target)
        self.noise = torch.rand(dataset.n_users, dataset.n_items, generator=torch.Generator().manual_seed(0))
        self.nan_epoch = nan_epoch
        self.epoch = -1
        self.seen_drift: list[float] = []  # drift at every evaluation (full ranking outside training)

    def pre_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def loss(self, batch: Batch) -> torch.Tensor:
        loss = -self.drift + 0.0 * batch.users.float().mean()
        if self.nan_epoch is not None and self.epoch >= self.nan_epoch:
            return loss * float("nan")
        return loss

    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        d = float(self.drift)
        if not self.training:
            self.seen_drift.append(d)
        bonus = 1.0 - 20.0 * d  # drift grows by ~lr = 0.01 per step
        return self.noise[users] + bonus * self.target[users]


def _scripted_config(**overrides) -> Config:
    base = resolve_config(
        "bpr", overrides={"epochs": 30, "stopping_step": 3, "learning_rate": 0.01, "train_batch_size": 100_000}
    )
    return base.replace(**overrides)


def _count_evaluations(monkeypatch) -> dict[str, int]:
    calls = {"valid": 0, "test": 0}
    original = Evaluator.evaluate

    def counting(self, model):
        calls[self.split] += 1
        return original(self, model)

    monkeypatch.setattr(Evaluator, "evaluate", counting)
    return calls


def test_early_stopping_and_best_weight_restore(syn_dataset, monkeypatch):
    calls = _count_evaluations(monkeypatch)
    model = Scripted(syn_dataset)
    result = fit(model, syn_dataset, _scripted_config(), log=quiet)
    # epoch 0 is the best; stopping_step + 1 = 4 further evaluations without improvement stop training
    assert result.best_epoch == 0
    assert len(result.history) == 5 and result.timings["epochs_run"] == 5
    assert "no improvement" in result.stop_reason
    assert calls == {"valid": 5, "test": 1}
    # one step per epoch: drift after epoch 0 ≈ 0.01, after epoch 4 ≈ 0.05; the best weights are back
    first, last_valid, at_test = model.seen_drift[0], model.seen_drift[4], model.seen_drift[-1]
    assert last_valid > first + 0.02
    assert float(model.drift.detach()) == first and at_test == first
    # the test metrics are those of the restored weights, not of the last epoch's
    again = Evaluator(syn_dataset, "test", ks=(10, 20)).evaluate(model)
    assert again.metrics == result.test.metrics
    assert result.valid.metrics["recall@20"] == pytest.approx(result.history[0]["valid"]["recall@20"], abs=1e-4)
    with torch.no_grad():
        model.drift.fill_(last_valid)
    worse = Evaluator(syn_dataset, "test", ks=(10, 20)).evaluate(model)
    assert worse.metrics["recall@20"] < result.test.metrics["recall@20"]


def test_patience_counts_evaluations_with_eval_step(syn_dataset, monkeypatch):
    calls = _count_evaluations(monkeypatch)
    result = fit(Scripted(syn_dataset), syn_dataset, _scripted_config(eval_step=2, stopping_step=1), log=quiet)
    # evaluations after epochs 1, 3, 5: the first is best, two more exceed stopping_step = 1
    assert result.best_epoch == 1
    assert len(result.history) == 6
    assert calls == {"valid": 3, "test": 1}
    assert ["valid" in h for h in result.history] == [False, True] * 3


def test_nan_loss_stops_and_keeps_the_best(syn_dataset, monkeypatch):
    calls = _count_evaluations(monkeypatch)
    model = Scripted(syn_dataset, nan_epoch=2)
    result = fit(model, syn_dataset, _scripted_config(), log=quiet)
    assert result.stop_reason == "non-finite loss at epoch 2"
    assert len(result.history) == 3 and result.history[2]["loss"] is None  # None keeps metrics.json strict JSON
    assert result.best_epoch == 0
    assert calls == {"valid": 2, "test": 1}
    assert float(model.drift.detach()) == model.seen_drift[0]
    assert all(math.isfinite(v) for v in result.test.metrics.values())


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")
def test_nan_in_the_first_epoch_still_gives_a_result(syn_dataset, monkeypatch):
    calls = _count_evaluations(monkeypatch)
    model = Scripted(syn_dataset, nan_epoch=0)
    result = fit(model, syn_dataset, _scripted_config(), log=quiet)
    assert result.best_epoch == -1 and "epoch 0" in result.stop_reason
    assert calls == {"valid": 1, "test": 1}
    assert float(model.drift.detach()) == 0.0  # no step was taken with a NaN loss


def test_max_epochs_and_strict_improvement(syn_dataset, monkeypatch):
    calls = _count_evaluations(monkeypatch)
    model = Scripted(syn_dataset)
    result = fit(model, syn_dataset, _scripted_config(epochs=3, stopping_step=10), log=quiet)
    assert result.stop_reason == "max epochs reached" and len(result.history) == 3
    assert calls == {"valid": 3, "test": 1}


def test_real_model_test_split_evaluated_once(syn_dataset, monkeypatch):
    calls = _count_evaluations(monkeypatch)
    model, config, _ = prepare_model("LightGCN", syn_dataset, {**FAST, "epochs": 4}, cache_dir=False)
    fit(model, syn_dataset, config, log=quiet)
    assert calls == {"valid": 4, "test": 1}


def test_valid_metric_must_be_computed(syn_dataset):
    # checked when the configuration is resolved, before any model is built or folder claimed
    with pytest.raises(ConfigError, match="valid_metric 'recall@50' is not among the computed metrics"):
        prepare_model("BPR", syn_dataset, {"epochs": 1, "valid_metric": "recall@50"}, cache_dir=False)


# ================================================================ callbacks: stop and resume in process
class StopAt(Callback):
    """Requests a stop after batch ``batch`` (0-based) of ``epoch``, or after the epoch when ``batch`` is None."""

    def __init__(self, epoch: int, batch: int | None) -> None:
        self.epoch, self.batch = epoch, batch

    def on_batch_end(self, trainer: Trainer, epoch: int, batch: int, loss: float) -> None:
        if (epoch, batch) == (self.epoch, self.batch):
            trainer.request_stop(signal.SIGTERM)

    def on_epoch_boundary(self, trainer: Trainer, epoch: int) -> None:
        if self.batch is None and epoch == self.epoch:
            trainer.request_stop(signal.SIGTERM)


@pytest.mark.parametrize(("epoch", "batch"), [(1, 2), (1, None)])
def test_a_callback_stops_training_and_its_state_resumes_exactly(syn_dataset, epoch, batch):
    """A stop requested by a callback hands over the state at that point; fit(resume=it) ends like a run never
    stopped: the same history, metrics and weights."""
    over = {**FAST, "epochs": 4, "checkpoint_seconds": 0}

    def fresh():
        model, config, _ = prepare_model("LightGCN", syn_dataset, over, cache_dir=False)
        return model, config

    model, config = fresh()
    reference = fit(model, syn_dataset, config, log=quiet)
    reference_weights = model.state_dict()
    states: list[dict] = []
    model, config = fresh()
    with pytest.raises(TrainingStopped) as info:
        fit(model, syn_dataset, config, log=quiet, checkpoint=states.append, callbacks=[StopAt(epoch, batch)])
    stop = info.value
    next_batch = None if batch is None else batch + 1
    assert (stop.signum, stop.epoch, stop.batch, stop.saved) == (
        signal.SIGTERM,
        epoch + (batch is None),
        next_batch,
        True,
    )
    assert (states[-1]["trainer"]["epoch"], states[-1]["trainer"]["batch"]) == (stop.epoch, stop.batch)
    assert len(states) == epoch + 1  # one per epoch boundary (every evaluation, no time floor), one at the stop
    model, config = fresh()
    resumed = fit(model, syn_dataset, config, log=quiet, resume=states[-1])
    strip = [[{k: v for k, v in h.items() if k != "train_seconds"} for h in r.history] for r in (reference, resumed)]
    assert strip[0] == strip[1]
    assert (resumed.best_epoch, resumed.valid.metrics, resumed.test.metrics) == (
        reference.best_epoch,
        reference.valid.metrics,
        reference.test.metrics,
    )
    assert all(torch.equal(v, reference_weights[k]) for k, v in model.state_dict().items())


# ================================================================ configuration
def test_unknown_key_is_an_error_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown configuration key 'learning_rat'.*did you mean 'learning_rate'"):
        resolve_config("lightgcn", overrides={"learning_rat": 0.1})
    with pytest.raises(ConfigError, match="unknown configuration key 'zzz'"):
        resolve_config("lightgcn", overrides={"zzz": 1})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epochs", "ten"),
        ("epochs", 1.5),
        ("learning_rate", "fast"),
        ("topk", 20),
        ("mask_valid_at_test", 1),
        ("epochs", True),
    ],
)
def test_wrong_type_is_an_error(key, value):
    with pytest.raises(ConfigError, match=key):
        resolve_config("bpr", overrides={key: value})


def test_compatible_values_are_accepted():
    cfg = resolve_config("bpr", overrides={"learning_rate": 1, "topk": [5, 20, 50], "seed": 3})
    assert cfg.learning_rate == 1 and cfg.topk == [5, 20, 50] and cfg["seed"] == 3
    assert cfg.preset is None


def test_a_preset_applies_only_by_its_name():
    defaults = resolve_config("lightgcn")
    by_name = resolve_config("lightgcn", dataset_name="Baby")  # named like a preset: only hinted at
    assert by_name.preset is None and by_name.to_dict() == defaults.to_dict() and by_name.preset_overrides == {}
    assert by_name.preset_hint == "baby"  # case-insensitive match
    explicit = resolve_config("lightgcn", dataset_name="synthetic", preset="sports")
    assert explicit.preset == "sports" and explicit.n_layers == 2 and explicit.reg_weight == 0.0
    assert resolve_config("lightgcn", dataset_name="synthetic").to_dict() == defaults.to_dict()
    # the named preset applies whatever the dataset's name; overrides win over the preset
    mixed = resolve_config("lightgcn", dataset_name="baby", preset="sports", overrides={"n_layers": 4})
    assert mixed.preset == "sports" and mixed.n_layers == 4 and mixed.train_batch_size == 4096
    assert mixed.preset_hint is None


def test_a_dataset_named_baby_gets_no_bpr_preset_unless_it_is_named():
    defaults = resolve_config("bpr")
    baby_preset = {"reg_weight": 0.1, "train_batch_size": 4096}  # bpr.yaml's presets: baby
    assert any(defaults[k] != v for k, v in baby_preset.items())  # so applying it would show
    for preset in (None, "none"):
        unnamed = resolve_config("bpr", dataset_name="baby", preset=preset)
        assert unnamed.preset is None and unnamed.preset_overrides == {}
        assert unnamed.to_dict() == defaults.to_dict()
    named = resolve_config("bpr", dataset_name="baby", preset="baby")
    assert named.preset == "baby" and named.preset_overrides == baby_preset
    assert {k: named[k] for k in baby_preset} == baby_preset


def test_the_start_line_names_the_preset_it_did_not_apply():
    hint = describe_preset(resolve_config("bpr", dataset_name="Baby"))
    assert hint == (
        "preset: none (model defaults and your overrides); this model has a preset 'baby' (settings copied from "
        "published runs, not validated here) — name it with --preset baby to use it"
    )
    # no hint without a matching preset, nor when a preset (or none) is named
    assert describe_preset(resolve_config("bpr", dataset_name="synthetic")) == (
        "preset: none (model defaults and your overrides)"
    )
    assert describe_preset(resolve_config("bpr", dataset_name="baby", preset="none")) == (
        "preset: none (model defaults and your overrides)"
    )
    named = describe_preset(resolve_config("bpr", dataset_name="baby", preset="baby"))
    assert named == "preset 'baby' (asked for) sets reg_weight=0.1, train_batch_size=4096"


def test_unknown_preset_is_an_error():
    with pytest.raises(ConfigError, match="no preset 'babby'.*baby"):
        resolve_config("bpr", preset="babby")
    with pytest.raises(ConfigError, match="unknown model 'nosuchmodel'"):
        resolve_config("nosuchmodel")


def test_config_object_and_override_parsing():
    cfg = resolve_config("ngcf")
    assert cfg.weight_size == [64, 64] and "weight_size" in cfg and len(cfg) == len(cfg.to_dict())
    with pytest.raises(AttributeError):
        _ = cfg.nope
    assert cfg.replace(epochs=5).epochs == 5 and cfg.epochs != 5
    with pytest.raises(ConfigError, match="unknown configuration key 'epoch'"):
        cfg.replace(epoch=5)
    assert parse_overrides(["topk=[10, 50]", "learning_rate=0.01", "mask_valid_at_test=true", "x = a=b"]) == {
        "topk": [10, 50],
        "learning_rate": 0.01,
        "mask_valid_at_test": True,
        "x": "a=b",
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_overrides(["topk=[1, 2"])


def test_allocator_tuning_can_be_switched_off(monkeypatch):
    from modalrec import allocator as train_mod  # the allocator switch lives here

    monkeypatch.setattr(train_mod, "_ALLOCATOR_TUNED", False)
    assert train_mod.release_freed_memory() is False  # nothing switched off, nothing to hand back
    monkeypatch.setenv("MODALREC_DEFAULT_MALLOC", "1")
    assert train_mod.keep_freed_memory_in_process() is False
    monkeypatch.delenv("MODALREC_DEFAULT_MALLOC")
    applied = train_mod.keep_freed_memory_in_process()
    assert applied is sys.platform.startswith("linux")
    assert train_mod.keep_freed_memory_in_process() is applied  # idempotent
    assert train_mod.release_freed_memory() is applied


def _biased_bpr_parts(model, n_items: int):
    """A fixed batch and its literal pieces: the batch, e_u, e_i, b, and the scores s_p, s_n (with biases)."""
    with torch.no_grad():
        model.item_bias.weight.normal_()
    users, pos, neg = torch.arange(20), torch.arange(20) % n_items, (torch.arange(20) + 7) % 100
    e_u, e_i, b = model.user_emb.weight, model.item_emb.weight, model.item_bias.weight[:, 0]
    with torch.no_grad():
        s_p = (e_u[users] * e_i[pos]).sum(1) + b[pos]
        s_n = (e_u[users] * e_i[neg]).sum(1) + b[neg]
    return Batch(users, pos, neg), e_u, e_i, b, s_p, s_n


def test_bpr_item_bias_scores_loss_and_ranking(syn_dataset):
    """item_bias: s = e_u·e_j + b_j in the loss and in full ranking; EmbLoss covers b_p, b_n; it trains."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model, config, _ = prepare_model("BPR", syn_dataset, {"item_bias": True, "reg_weight": 0.5}, cache_dir=False)
    batch, e_u, e_i, b, s_p, s_n = _biased_bpr_parts(model, syn_dataset.n_items)
    users, pos, neg = batch.users, batch.pos, batch.neg
    with torch.no_grad():
        reg = sum(torch.linalg.norm(t) for t in (e_u[users], e_i[pos], e_i[neg], b[pos], b[neg])) / 20
        want = -F.logsigmoid(s_p - s_n).mean() + 0.5 * reg
        torch.testing.assert_close(model.loss(batch), want)
    model.eval()
    torch.testing.assert_close(model.full_scores(users), e_u[users] @ e_i.T + b[None, :])
    plain, _, _ = prepare_model("BPR", syn_dataset, {}, cache_dir=False)
    assert not hasattr(plain, "item_bias") or plain.item_bias is None
    model, config, _ = prepare_model("BPR", syn_dataset, {**FAST, "item_bias": True}, cache_dir=False)
    result = fit(model, syn_dataset, config, log=quiet)
    assert result.test.metrics["recall@20"] > 1.5 * expected_random_recall(syn_dataset)
    assert float(model.item_bias.weight.detach().abs().max()) > 0  # the bias was learned


def test_bpr_squared_regulariser_and_small_uniform_start(syn_dataset):
    """reg_form sq: λ·½Σ‖x‖²/B (biases included); init small_uniform: every entry in [−½d⁻¹, ½d⁻¹]."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    over = {"item_bias": True, "reg_form": "sq", "reg_weight": 0.3, "init": "small_uniform"}
    model, config, _ = prepare_model("BPR", syn_dataset, over, cache_dir=False)
    d = int(config.embedding_size)
    for emb in (model.user_emb.weight.detach(), model.item_emb.weight.detach()):
        assert float(emb.abs().max()) <= 0.5 / d and float(emb.std()) > 0.1 / d
    batch, e_u, e_i, b, s_p, s_n = _biased_bpr_parts(model, syn_dataset.n_items)
    users, pos, neg = batch.users, batch.pos, batch.neg
    with torch.no_grad():
        sq = 0.5 * sum(t.pow(2).sum() for t in (e_u[users], e_i[pos], e_i[neg], b[pos], b[neg])) / 20
        torch.testing.assert_close(model.loss(batch), -F.logsigmoid(s_p - s_n).mean() + 0.3 * sq)
    for key, bad in (("reg_form", "l1"), ("init", "zeros")):
        with pytest.raises(ConfigError, match=f"override: {key} must be one of"):
            prepare_model("BPR", syn_dataset, {key: bad}, cache_dir=False)


def test_sgd_optimizer_trains_and_an_unknown_optimizer_is_one_clear_error(syn_dataset):
    """optimizer: sgd steps on the batch-mean loss (learning rate = per-sample step × batch size)."""
    model, config, _ = prepare_model(
        "BPR", syn_dataset, {**FAST, "optimizer": "sgd", "learning_rate": 20.0, "reg_form": "sq"}, cache_dir=False
    )
    result = fit(model, syn_dataset, config, log=quiet)
    assert result.test.metrics["recall@20"] > 1.5 * expected_random_recall(syn_dataset)
    model, config, _ = prepare_model("BPR", syn_dataset, {**FAST, "optimizer": "rmsprop"}, cache_dir=False)
    with pytest.raises(ConfigError, match="optimizer must be one of adam, sgd; got 'rmsprop'"):
        fit(model, syn_dataset, config, log=quiet)


def test_min_epochs_holds_early_stopping_back(syn_dataset):
    """With patience 0 training stops at the first non-improvement, but never before min_epochs."""
    over = {**FAST, "stopping_step": 0, "learning_rate": 0.5, "epochs": 30}
    model, config, _ = prepare_model("BPR", syn_dataset, over, cache_dir=False)
    free = fit(model, syn_dataset, config, log=quiet)
    model, config, _ = prepare_model("BPR", syn_dataset, {**over, "min_epochs": 12}, cache_dir=False)
    held = fit(model, syn_dataset, config, log=quiet)
    assert len(free.history) < 12 <= len(held.history)
