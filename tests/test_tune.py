"""``modalrec tune`` (docs/scale.md): an Optuna study over a model's search space, selected on validation only.

A study on a real PostgreSQL server (started by the test in a temporary folder: Debian's ``initdb`` + ``pg_ctl``)
is shared by two ``modalrec tune`` processes: the study ends with exactly the asked number of finished trials,
each trained once. Pruning stops a bad trial early; test is evaluated once, for the best trial. Without the
``optuna`` package, or without PostgreSQL, the tests are skipped with the reason.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import free_port

import modalrec
from modalrec.config import load_override_file, load_search_ranges, resolve_config
from modalrec.errors import ConfigError

SRC = str(Path(modalrec.__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def optuna():
    try:
        import optuna
    except ImportError:
        pytest.skip("optuna is not installed (the 'scale' extra: pip install -e '.[scale]'); tune tests not run")
    return optuna


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))  # Debian keeps them off PATH
    return versions[-1] if versions else None


@pytest.fixture(scope="module")
def postgres(optuna):
    """``postgresql://postgres@127.0.0.1:<port>/optuna`` on a server of its own, stopped at the end.

    initdb refuses to run as root: as root the server runs as the ``postgres`` user (or ``nobody``).
    """
    pytest.importorskip("psycopg", reason="psycopg (the 'scale' extra) is needed for a postgresql:// storage")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl not found (apt-get install postgresql; .ci/run does)")
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="modalrec-pg-"))
    if os.geteuid() == 0:
        user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
        if user is None or shutil.which("runuser") is None:
            pytest.skip("running as root and neither a 'postgres' user nor runuser exists to run PostgreSQL")
        shutil.chown(root, user)
        prefix = ["runuser", "-u", user, "--"]
    port = free_port()
    data, logfile = root / "db", root / "server.log"
    try:
        subprocess.run(
            [*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust"], check=True, capture_output=True
        )
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-o", opts, "-l", str(logfile), "-w", "start"],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL could not be started here: {exc}")
    try:
        import psycopg  # the driver the 'scale' extra installs (psycopg 3)

        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE optuna")
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _trials_csv(folder: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO((folder / "trials.csv").read_text())))


def test_search_ranges_extend_the_grid_without_changing_it():
    from modalrec.config import load_defaults
    from modalrec.experiments.tune import tune_space

    ranges = load_search_ranges("lightgcn")
    assert ranges["n_layers"] == {"low": 1, "high": 4, "log": False, "int": True}
    assert ranges["learning_rate"]["log"] and ranges["reg_weight"]["log"]
    assert "search_ranges" not in load_defaults("lightgcn")[0]  # not a configuration key
    assert load_defaults("lightgcn")[2]["n_layers"] == [1, 2, 3, 4]  # the grid's lists are as they were
    space = tune_space("LightGCN", {"train_batch_size": 1024})
    assert space["n_layers"]["int"] and "train_batch_size" not in space
    assert tune_space("LightGCN", {}, "grid")["n_layers"] == {"choices": [1, 2, 3, 4]}
    from modalrec.config import parse_range

    with pytest.raises(ConfigError, match="log range needs low > 0"):
        parse_range("reg_weight", {"low": 0, "high": 1, "log": True}, "x")


def test_pruning_stops_a_bad_trial_and_selection_never_looks_at_test(optuna, syn_dir, tmp_path, monkeypatch):
    from modalrec.evaluation import Evaluator
    from modalrec.experiments.tune import run_tune

    test_passes = []
    real = Evaluator.evaluate

    def counting(self, model):
        if self.split == "test":
            test_passes.append(1)
        return real(self, model)

    monkeypatch.setattr(Evaluator, "evaluate", counting)
    out = tmp_path / "t"
    out.mkdir()
    url = f"sqlite:///{out / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    good = {"learning_rate": 0.03, "reg_weight": 0.001, "train_batch_size": 512}
    for p in (good, {**good, "reg_weight": 0.01}, {**good, "learning_rate": 0.0001}):  # the last barely learns
        study.enqueue_trial(p)
    report = run_tune(
        "BPR",
        syn_dir,
        3,
        out=out,
        storage=url,
        study_name="s",
        overrides={"epochs": 4},
        log=lambda s: None,
        pruner_startup=2,
        pruner_warmup=0,
    )
    rows = _trials_csv(out)
    assert [r["state"] for r in rows] == ["complete", "complete", "pruned"]
    assert int(rows[2]["epochs"]) < 4  # stopped early
    assert not (
        Path(optuna.load_study(study_name="s", storage=url).trials[2].user_attrs["run_dir"]) / "model.pt"
    ).exists()
    assert len(test_passes) == 1  # only the best trial, once
    best = max(rows[:2], key=lambda r: float(r["valid_recall@20"]))
    assert report.best["trial"] == int(best["trial"]) and best["best"] == "1"
    for r in rows[:2]:
        run = Path(optuna.load_study(study_name="s", storage=url).trials[int(r["trial"])].user_attrs["run_dir"])
        assert json.loads((run / "metrics.json").read_text())["test"] is None  # trials never evaluate test
        assert (run / "test_per_user.npz").exists() == (r["best"] == "1")
    for name in ("best_config.yaml", "best.json", "trials.md", "optimization_history.png", "param_importances.png"):
        assert (out / name).is_file(), name
    cfg = load_override_file(out / "best_config.yaml")  # what `modalrec train --config` reads
    resolve_config("bpr", "synthetic", cfg)
    assert cfg["epochs"] == 4 and cfg["learning_rate"] == pytest.approx(float(best["learning_rate"]), rel=1e-2)
    # the same call again: the study already has its 3 trials; nothing is trained, test is not evaluated again
    again = run_tune("BPR", syn_dir, 3, out=out, storage=url, study_name="s", overrides={"epochs": 4}, log=lambda s: 0)
    assert again.ran_here == 0 and again.finished == 3 and len(test_passes) == 1


def test_two_processes_share_one_postgresql_study_exactly(postgres, optuna, syn_dir, tmp_path):
    n = 5
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "modalrec", "tune", "BPR", "--data", str(syn_dir), "--trials", str(n)]
    cmd += ["--epochs", "2", "--storage", postgres, "--study-name", "shared", "--pruner", "none", "--out"]
    procs = [
        subprocess.Popen([*cmd, str(tmp_path / f"w{i}"), "--seed", str(i)], env=env, stdout=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    ran = [int(next(line for line in o.splitlines() if "trials run here" in line).split()[0]) for o in outputs]
    study = optuna.load_study(study_name="shared", storage=postgres)
    states = optuna.trial.TrialState
    finished = [t for t in study.trials if t.state in (states.COMPLETE, states.PRUNED)]
    assert len(finished) == n and sum(ran) == n  # exact: no trial lost, none run twice
    assert all(t.state == states.FAIL and t.user_attrs.get("surplus") for t in study.trials if t not in finished)
    runs = [Path(t.user_attrs["run_dir"]) for t in finished]
    assert len(set(runs)) == n and all((r / "metrics.json").is_file() for r in runs)  # each trained once, finished
    # each process reports the best trial it saw when it finished; the one that finished last saw them all
    reports = [json.loads((tmp_path / f"w{i}" / "best.json").read_text()) for i in range(2)]
    values = {t.number: t.value for t in finished}
    assert all(r["valid"] == values[r["trial"]] for r in reports)
    assert max(r["valid"] for r in reports) == max(v for v in values.values() if v is not None)


def test_tune_cli_errors_are_one_line(optuna, syn_dir, tmp_path):
    from conftest import assert_one_line_error
    from typer.testing import CliRunner

    from modalrec.cli import app

    def run(*args):
        return CliRunner().invoke(app, ["tune", "BPR", "--data", str(syn_dir), "--out", str(tmp_path / "x"), *args])

    assert_one_line_error(run("--trials", "2", "--sampler", "cma"), "--sampler 'cma'")
    assert_one_line_error(run("--trials", "0"), "--trials 0")
    assert_one_line_error(
        run("--trials", "2", "--storage", "postgresql://u:secret@127.0.0.1:1/none"), "cannot open the study storage"
    )
    res = run("--trials", "2", "--storage", "postgresql://u:secret@127.0.0.1:1/none")
    assert "secret" not in res.output


def test_grid_sampler_runs_the_whole_grid_and_stops_when_it_is_exhausted(optuna, syn_dir, tmp_path):
    """--trials as large as the grid (or larger) runs every point once and ends cleanly.

    Optuna's grid sampler stops ``Study.optimize`` when its grid is done, which raised ``RuntimeError`` on the
    ask-and-tell driver's last ``tell``. A failed trial takes a grid point for good: the driver then stops
    asking before the budget instead of running a tried point again.
    """
    from modalrec.experiments.study import make_sampler
    from modalrec.experiments.tune import run_tune, tune_space

    fixed = {"epochs": 1, "reg_weight": 0.001, "train_batch_size": 512}  # the grid: learning_rate's 3 values
    space = tune_space("BPR", fixed, "grid")
    assert list(space) == ["learning_rate"] and len(space["learning_rate"]["choices"]) == 3

    def tune(out, trials):
        lines: list[str] = []
        kwargs = dict(out=out, storage=f"sqlite:///{out / 'study.db'}", study_name="g", sampler="grid")
        report = run_tune("BPR", syn_dir, trials, overrides=fixed, log=lines.append, **kwargs)
        return report, lines

    report, lines = tune(tmp_path / "all", 5)
    assert report.ran_here == report.finished == 3
    assert "grid sampler: the grid has 3 points; --trials 5 → 3" in lines
    assert "grid sampler: all 3 grid points have been tried; no more trials to run" in lines
    tried = sorted(float(r["learning_rate"]) for r in _trials_csv(tmp_path / "all"))
    assert tried == sorted(space["learning_rate"]["choices"])  # each point once

    # a study whose first grid point failed: the other two run, then the driver stops (3 asked, 2 finished)
    out = tmp_path / "failed"
    out.mkdir()
    study = optuna.create_study(
        study_name="g",
        storage=f"sqlite:///{out / 'study.db'}",
        direction="maximize",
        sampler=make_sampler(optuna, "grid", 0, space, 3),
    )
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    report, lines = tune(out, 3)
    assert report.ran_here == report.finished == 2
    assert any(x.startswith("grid sampler: all 3 grid points have been tried (1 of them failed") for x in lines)
    assert len(optuna.load_study(study_name="g", storage=f"sqlite:///{out / 'study.db'}").trials) == 3  # none again
