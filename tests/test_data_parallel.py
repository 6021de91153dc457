"""One run on several data-parallel workers (PyTorch DDP through Ray Train, gloo on CPU) and sharded evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from modalrec.config import resolve_config
from modalrec.errors import ConfigError
from modalrec.evaluation import Evaluator
from modalrec.graphs import GraphStore
from modalrec.models import build_model, get_model_class
from modalrec.run_files import per_user_metrics
from modalrec.run_load import load_run
from modalrec.runs import train_run

pytest.importorskip(
    "ray.train", reason="Ray Train is in the scale extra (pip install -e '.[scale]'), which CI installs"
)

SETTINGS = {"epochs": 4, "train_batch_size": 256, "learning_rate": 0.01, "checkpoint_seconds": 0}
SEEDS = (1, 2, 3)


# ---------------------------------------------------------------- sharded evaluation, in one process
def test_the_workers_blocks_merge_into_the_single_process_evaluation_exactly(syn_dataset):
    config = resolve_config(get_model_class("LightGCN"), overrides={})
    torch.manual_seed(0)
    model = build_model("LightGCN", syn_dataset, config, GraphStore(syn_dataset, cache_dir=False))
    evaluator = Evaluator(syn_dataset, "test", block_size=16)
    whole = evaluator.evaluate(model)
    for world in (2, 3, 16):
        parts = [evaluator.evaluate(model, evaluator.shard_blocks(rank, world)) for rank in range(world)]
        assert np.array_equal(np.concatenate([p.users for p in parts]), whole.users)
        for name, vector in whole.per_user.items():
            assert np.array_equal(np.concatenate([p.per_user[name] for p in parts]), vector), (world, name)
    starts = evaluator.block_starts()
    assert sorted(sum((evaluator.shard_blocks(r, 3) for r in range(3)), [])) == starts  # each block once


# ---------------------------------------------------------------- training on 2 workers
@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def runs(local_ray, syn_dir, tmp_path_factory) -> dict[tuple[str, int], Path]:
    """BPR on the synthetic set, seeds 1–3, on one process and on 2 workers; seed 1 twice on 2 workers."""
    from modalrec.run_distributed import train_distributed

    root = tmp_path_factory.mktemp("dp")
    out: dict[tuple[str, int], Path] = {}
    for seed in SEEDS:
        settings = {**SETTINGS, "seed": seed}
        out[("single", seed)], _ = train_run(
            "BPR", syn_dir, overrides=settings, out=root / f"single-{seed}", quiet=True
        )
        out[("dp", seed)] = train_distributed(
            "BPR", syn_dir, 2, overrides=settings, out=root / f"dp-{seed}", quiet=True
        )
    out[("dp-again", 1)] = train_distributed(
        "BPR", syn_dir, 2, overrides={**SETTINGS, "seed": 1}, out=root / "dp-1-again", quiet=True
    )
    out[("dp-killed", 1)] = train_distributed(
        "BPR",
        syn_dir,
        2,
        overrides={**SETTINGS, "seed": 1},
        out=root / "dp-1-killed",
        quiet=True,
        _fault={"rank": 1, "epoch": 1},
    )
    return out


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_two_workers_reach_the_single_process_metrics_within_seed_noise(runs):
    """Tolerance: per seed, |Δ test Recall@20| ≤ 0.02 (the seeds' own spread on this set is larger), and no
    significant difference in a paired t-test over users (p > 0.05) — or identical vectors."""
    deltas = []
    for seed in SEEDS:
        single, dp = (
            per_user_metrics(runs[("single", seed)])["recall@20"],
            per_user_metrics(runs[("dp", seed)])["recall@20"],
        )
        deltas.append(float(dp.mean() - single.mean()))
        if not np.array_equal(single, dp):
            assert stats.ttest_rel(dp, single).pvalue > 0.05, seed
    assert max(abs(d) for d in deltas) <= 0.02, deltas
    meta = _metrics(runs[("dp", 1)])
    assert meta["data_parallel"] == {"workers": 2, "backend": "gloo", "threads_per_worker": 1}
    assert meta["test"]["recall@20"] > 0


def test_the_same_seed_on_the_same_workers_gives_the_same_run(runs):
    a, b = _metrics(runs[("dp", 1)]), _metrics(runs[("dp-again", 1)])
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def test_a_run_whose_worker_was_killed_resumes_and_ends_as_an_uninterrupted_one(runs):
    killed, whole = runs[("dp-killed", 1)], runs[("dp", 1)]
    log = (killed / "train.log").read_text()
    assert "worker group (re)started: continuing after epoch 1" in log
    a, b = _metrics(killed), _metrics(whole)
    assert a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]
    assert not (killed / "resume.pt").exists()  # finished: model.pt supersedes it


def test_a_data_parallel_run_directory_is_an_ordinary_one(runs, syn_dataset):
    run = runs[("dp", 2)]
    assert {p.name for p in run.iterdir()} == {p.name for p in runs[("single", 2)].iterdir()}
    loaded = load_run(run)
    again = Evaluator(syn_dataset, "test").evaluate(loaded.model)  # one process ranks the saved weights
    for name, vector in per_user_metrics(run).items():
        if name != "users":
            assert np.array_equal(again.per_user[name], vector), name


def test_models_that_cannot_train_data_parallel_say_why(syn_dir, tmp_path):
    from modalrec.run_distributed import train_distributed

    with pytest.raises(ConfigError, match="MMSSL cannot train data-parallel"):
        train_distributed("MMSSL", syn_dir, 2, out=tmp_path / "r")
    with pytest.raises(ConfigError, match="at least 1"):
        train_distributed("BPR", syn_dir, 0, out=tmp_path / "r")
    assert not (tmp_path / "r").exists()  # refused before a directory is claimed


# ---------------------------------------------------------------- trials on several workers
def test_a_benchmark_trains_each_trial_on_n_workers(local_ray, syn_dir, tmp_path):
    from modalrec.experiments.benchmark import run_benchmark
    from modalrec.experiments.executors import make_executor

    executor = make_executor("local", workers_per_trial=2)
    report = run_benchmark(
        ["BPR"], syn_dir, seeds=[1], out=tmp_path / "bench", overrides=SETTINGS, executor=executor,
        log=lambda _: None,
    )  # fmt: skip
    (run,) = (tmp_path / "bench" / "runs").iterdir()
    assert _metrics(run)["data_parallel"]["workers"] == 2
    (record,) = (tmp_path / "bench" / "results" / "BPR").rglob("seed-1.json")
    stored = json.loads(record.read_text())
    assert stored["setting"]["workers"] == 2 and stored["test"] == _metrics(run)["test"]
    assert report is not None


def test_workers_per_trial_is_refused_where_it_cannot_run():
    from modalrec.experiments.executors import make_executor

    with pytest.raises(ConfigError, match="--executor local"):
        make_executor("ray", workers_per_trial=2)


def test_tune_prunes_a_data_parallel_trial_on_every_worker_at_once(local_ray, syn_dir, tmp_path):
    """Three trials on 2 workers each; the third barely learns and is pruned at its first validation (worker 0
    reports to Optuna, every worker stops); test is evaluated once, for the best complete trial."""
    optuna = pytest.importorskip("optuna", reason="Optuna is in the scale extra, which CI installs")
    from modalrec.experiments.executors import make_executor
    from modalrec.experiments.tune import run_tune

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="dp", storage=url, direction="maximize")
    good = {"learning_rate": 0.03, "reg_weight": 0.001, "train_batch_size": 512}
    for params in (good, {**good, "reg_weight": 0.01}, {**good, "learning_rate": 0.0001}):
        study.enqueue_trial(params)
    report = run_tune(
        "BPR", syn_dir, 3, out=tmp_path / "t", storage=url, study_name="dp", overrides={"epochs": 3},
        executor=make_executor("local", workers_per_trial=2), log=lambda _: None, pruner_startup=2,
        pruner_warmup=0,
    )  # fmt: skip
    trials = optuna.load_study(study_name="dp", storage=url).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    pruned_run = Path(trials[2].user_attrs["run_dir"])
    at = json.loads((pruned_run / "pruned.json").read_text())
    assert at["evaluations"] == 1 and at["epoch"] == 0 and not (pruned_run / "model.pt").exists()
    assert "pruned by the tuner after epoch 0" in (pruned_run / "train.log").read_text()
    for t in trials[:2]:
        meta = _metrics(Path(t.user_attrs["run_dir"]))
        assert meta["data_parallel"]["workers"] == 2 and meta["test"] is None  # trials never evaluate test
        assert t.value == meta["valid"]["recall@20"] and len(t.intermediate_values) == 3
    best = max(trials[:2], key=lambda t: t.value)
    assert report.best["trial"] == best.number
    assert (Path(best.user_attrs["run_dir"]) / "test_per_user.npz").is_file()
