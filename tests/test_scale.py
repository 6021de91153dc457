"""Scale-out (docs/scale.md): the Ray executor runs a campaign's trials as Ray tasks with the same results as the
local executor; failed trials are recorded and the others finish; an interrupted campaign resumes without
re-training finished trials. A missing ``scale`` extra gives one line naming it.

The Ray tests start one local Ray (2 CPUs) for the module; without the ``ray`` package they are skipped, saying so.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

import modalrec
from modalrec.errors import Interrupted, ModalrecError
from modalrec.experiments import trials as bench_mod
from modalrec.experiments.benchmark import run_benchmark
from modalrec.experiments.entries import Entry
from modalrec.experiments.executors import LocalExecutor, RayExecutor, require_extra

SRC = str(Path(modalrec.__file__).resolve().parents[1])
MODELS, SEEDS = ["BPR", "LightGCN"], [1, 2]
SETTINGS = {"epochs": 2, "train_batch_size": 256}


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray with 2 CPUs whose workers import this checkout's modalrec (started once for the module)."""
    try:
        import ray
    except ImportError:
        pytest.skip("ray is not installed (the 'scale' extra: pip install -e '.[scale]'); Ray tests not run")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        runtime_env={"env_vars": {"PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_table(syn_dir, tmp_path_factory):
    """table.csv of the 4-trial benchmark (2 models × 2 seeds) run by the local executor."""
    out = tmp_path_factory.mktemp("local") / "bench"
    run_benchmark(MODELS, syn_dir, SEEDS, out=out, overrides=SETTINGS, log=lambda s: None, executor=LocalExecutor())
    return (out / "table.csv").read_text()


def test_ray_benchmark_table_equals_the_local_one(ray_cluster, syn_dir, tmp_path, local_table):
    ex = RayExecutor(cpus_per_trial=1)
    assert ex.capacity == 2  # two trials at a time on the 2 CPUs
    report = run_benchmark(
        MODELS, syn_dir, SEEDS, out=tmp_path / "b", overrides=SETTINGS, log=lambda s: None, executor=ex
    )
    assert (report.trained, report.reused, report.failed) == (4, 0, 0)
    assert (tmp_path / "b" / "table.csv").read_text() == local_table
    # the driver wrote the store; the runs went where the local executor puts them
    records = [json.loads(p.read_text()) for p in (tmp_path / "b" / "results").rglob("seed-*.json")]
    assert len(records) == 4 and all(Path(r["run_dir"]).parent == tmp_path / "b" / "runs" for r in records)


def test_ray_failed_trials_are_recorded_and_the_others_finish(ray_cluster, syn_dir, tmp_path):
    """One trial's model rejects its setting at build time, one trial's worker is killed: both are recorded with
    their reason and marked in the table; the others finish; running again retries just the failed ones."""

    def kill_one(spec):  # pickled by value: the Ray worker runs it
        if spec["model"] == "BPR" and spec["seed"] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return bench_mod.run_trial(spec)

    plan = [
        Entry("BPR", "BPR"),
        # d_f must equal d: a relation of two keys, which only the model checks when it is built (in the worker)
        Entry("FREEDOM", "FREEDOM", {"feat_embed_dim": 32}, seeds=[1]),
        Entry("LightGCN", "LightGCN", seeds=[1]),
    ]
    out = tmp_path / "f"
    ex = RayExecutor(cpus_per_trial=1, trial_fn=kill_one)
    report = run_benchmark([], syn_dir, SEEDS, out=out, overrides=SETTINGS, plan=plan, log=lambda s: None, executor=ex)
    assert (report.trained, report.failed) == (2, 2)
    rows = {r.entry.label: r for r in report.results}
    assert len(rows["BPR"].records) == 1 and rows["BPR"].failures[0]["failed"].startswith("worker died")
    assert rows["FREEDOM"].failures[0]["failed"] == (
        "ConfigError: FREEDOM: feat_embed_dim must equal embedding_size 64 (users score against C_m); got 32"
    )
    assert len(rows["LightGCN"].records) == 1 and not rows["LightGCN"].failures
    md = (out / "table.md").read_text()
    assert "| BPR (failed: 1 trial: seed 2 [" in md and "| FREEDOM (failed: 1 trial: seed 1 [" in md
    assert "| LightGCN |" in md
    assert len(list((out / "results").rglob("*.failed.json"))) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert [len(r["failed"]) for r in summary["rows"]] == [1, 1, 0]
    # again, locally and without the kill: the two finished trials are reused, the failed ones run again
    again = run_benchmark([], syn_dir, SEEDS, out=out, overrides=SETTINGS, plan=plan, log=lambda s: None)
    assert (again.trained, again.reused, again.failed) == (1, 2, 1)
    assert len(list((out / "results").rglob("*.failed.json"))) == 1  # BPR seed 2's failure record is gone


def test_interrupted_ray_campaign_resumes_without_retraining(ray_cluster, syn_dir, tmp_path, local_table):
    """SIGINT reaches the driver when the first trial has finished: the campaign stops (the running trial is
    stopped), and the same call again trains only the other trials; the table equals the local executor's."""
    out = tmp_path / "r"
    first: list[str] = []

    def log(line: str) -> None:
        if "best epoch" in line and not first:  # the first trial came back and was stored: Ctrl-C now
            first.append(line)
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(Interrupted, match="run the same command again to resume"):
        run_benchmark(MODELS, syn_dir, SEEDS, out=out, overrides=SETTINGS, log=log, executor=RayExecutor())
    (stored,) = (out / "results").rglob("seed-*.json")
    stamp = stored.stat().st_mtime_ns
    report = run_benchmark(
        MODELS, syn_dir, SEEDS, out=out, overrides=SETTINGS, log=lambda s: None, executor=RayExecutor()
    )
    assert (report.trained, report.reused) == (3, 1)
    assert stored.stat().st_mtime_ns == stamp  # the finished trial was not trained or written again
    assert (out / "table.csv").read_text() == local_table


def test_missing_scale_extra_is_one_line_naming_it(monkeypatch, syn_dir, tmp_path):
    for name in ("ray", "optuna"):  # None in sys.modules: importing it raises ImportError, as when not installed
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(
        ModalrecError, match=r"needs the 'ray' package from the 'scale' extra: pip install -e '\.\[scale\]'"
    ):
        require_extra("ray", "--executor ray")
    from conftest import assert_one_line_error
    from typer.testing import CliRunner

    from modalrec.cli import app

    res = CliRunner().invoke(
        app, ["benchmark", "--models", "BPR", "--data", str(syn_dir), "--out", str(tmp_path / "x"), "--executor", "ray"]
    )
    assert_one_line_error(res, "'scale' extra", "pip install -e '.[scale]'")
    assert not (tmp_path / "x").exists()


def test_tune_trials_run_as_ray_tasks(ray_cluster, syn_dir, tmp_path):
    """``tune --executor ray``: the trials train in Ray workers, which report their epochs to the (SQLite) study."""
    optuna = pytest.importorskip("optuna", reason="optuna (the 'scale' extra) is needed for tune")
    from modalrec.experiments.tune import run_tune

    out = tmp_path / "t"
    report = run_tune(
        "BPR", syn_dir, 3, out=out, overrides={"epochs": 2}, pruner="none", log=lambda s: None, executor=RayExecutor()
    )
    assert report.finished == 3 and report.ran_here == 3
    study = optuna.load_study(study_name=report.study_name, storage=f"sqlite:///{out / 'study.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3 and all(len(t.intermediate_values) == 2 for t in done)  # reported from the workers
    assert json.loads((out / "best.json").read_text())["test"]["recall@20"] >= 0


def test_executor_options_are_checked_and_the_progress_counts(syn_dir, tmp_path):
    from conftest import assert_one_line_error
    from typer.testing import CliRunner

    from modalrec.cli import app
    from modalrec.experiments.executors import TrialProgress

    args = ["benchmark", "--models", "BPR", "--data", str(syn_dir), "--out", str(tmp_path / "x")]
    runner = CliRunner()
    assert_one_line_error(runner.invoke(app, [*args, "--executor", "dask"]), "--executor 'dask'")
    assert_one_line_error(runner.invoke(app, [*args, "--cpus-per-trial", "2"]), "apply to --executor ray")
    assert_one_line_error(runner.invoke(app, [*args, "--ray-address", "auto"]), "--ray-address only applies")
    assert not (tmp_path / "x").exists()
    lines: list[str] = []
    for bar in (False, True):  # plain counts in the log lines; a Rich bar on a terminal
        p = TrialProgress(4, lines.append, bar=bar)
        p.update(done=1, running=2)
        p.update(failed=1, running=1)
        assert p.counts() == "2/4 done, 1 running, 1 failed"
        p.close()
