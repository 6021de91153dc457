"""Resumable training: a run killed (SIGKILL) or interrupted (Ctrl-C, SIGTERM) and resumed ends exactly like an
uninterrupted run with the same seed; damaged or incompatible resume states are refused with one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from signal_runner import install
from typer.testing import CliRunner

from modalrec.cli import app
from modalrec.errors import Interrupted, ModalrecError, RunError
from modalrec.interrupt import graceful_interrupts
from modalrec.run_files import RESUME_FILE
from modalrec.run_resume import read_resume_state, resume_run
from modalrec.runs import train_run
from modalrec.training import TRAINER_KEYS, TrainState

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
# 1,500 training pairs / 256 = 6 batches per epoch, so a mid-epoch stop has batches on both sides
BASE = {"epochs": 4, "train_batch_size": 256, "learning_rate": 0.01, "stopping_step": 10, "checkpoint_every": 1}
MODEL_SETS = {
    "BPR": [],
    "LightGCN": ["n_layers=2"],
    "FREEDOM": ["dropout=0.5"],  # a new randomly pruned user-item graph every epoch
    "MMSSL": ["embedding_size=16", "weight_size=[16, 16]", "head_num=2"],  # the critic has its own Adam
}


def _sets(name: str) -> list[str]:
    out = []
    for k, v in BASE.items():
        out += ["--set", f"{k}={json.dumps(v)}"]
    for s in MODEL_SETS[name]:
        out += ["--set", s]
    return out


def _overrides(name: str) -> dict:
    return {**BASE, **{k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in MODEL_SETS[name])}}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def cli_subprocess(args: list, signal_spec: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``modalrec`` in a fresh process that receives a signal at a chosen point (``tests/signal_runner.py``)."""
    src = Path(__file__).resolve().parents[1] / "src"
    env = {
        **os.environ,
        **ENV,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    runner = Path(__file__).with_name("signal_runner.py")
    return subprocess.run(
        [sys.executable, str(runner), signal_spec, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@contextmanager
def signal_at(spec: str) -> Iterator[None]:
    """Within the block, training in this process sends itself a signal at ``spec`` (``NAME:EPOCH[:BATCH]``,
    :class:`signal_runner.SignalAt`)."""
    with pytest.MonkeyPatch.context() as m:
        install(spec, m.setattr)
        yield


@pytest.fixture(autouse=True)
def _sigint_as_in_a_terminal():
    """Give SIGINT Python's usual handler for each test, then put back whatever it was: the in-process tests
    send this process SIGINT, which a test run started in the background (``pytest ... &``) ignores."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def assert_same_run(a: Path, b: Path) -> None:
    """Bitwise-equal metrics, per-user vectors, losses and weights."""
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    for key in ("best_epoch", "stop_reason", "valid", "test"):
        assert ma[key] == mb[key], key
    strip = [[{k: v for k, v in h.items() if k != "train_seconds"} for h in m["history"]] for m in (ma, mb)]
    assert strip[0] == strip[1]
    for split in ("valid", "test"):
        with np.load(a / f"{split}_per_user.npz") as za, np.load(b / f"{split}_per_user.npz") as zb:
            assert za.files == zb.files
            for k in za.files:
                assert np.array_equal(za[k], zb[k]), (split, k)
    wa = torch.load(a / "model.pt", weights_only=False)["state_dict"]
    wb = torch.load(b / "model.pt", weights_only=False)["state_dict"]
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not (b / RESUME_FILE).exists()  # a finished run drops its resume state


@pytest.fixture(scope="module")
def reference_runs(syn_dir, tmp_path_factory):
    """Uninterrupted runs of each model (in process, one thread — as the subprocesses run)."""
    root = tmp_path_factory.mktemp("reference")
    torch.set_num_threads(1)  # what the subprocesses use; bit-for-bit equality depends on it
    runs = {}
    for name in MODEL_SETS:
        runs[name], _ = train_run(name, syn_dir, overrides=_overrides(name), out=root / name, quiet=True)
    return runs


@pytest.mark.parametrize("name", list(MODEL_SETS))
def test_sigkill_after_an_epoch_then_resume_is_exact(name, syn_dir, reference_runs, tmp_path):
    run = tmp_path / "run"
    killed = cli_subprocess(["train", "--model", name, "--data", syn_dir, "--out", run, "-q", *_sets(name)], "KILL:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (run / "model.pt").exists() and (run / RESUME_FILE).is_file()
    assert read_resume_state(run)["train"]["trainer"]["epoch"] == 2  # epochs 0 and 1 are done
    res = invoke("train", "--resume", run, "-q", "--threads", 1)
    assert res.exit_code == 0, res.output
    assert_same_run(reference_runs[name], run)
    assert "resuming" in (run / "train.log").read_text()


@pytest.mark.parametrize(("name", "sig"), [("FREEDOM", "INT"), ("MMSSL", "TERM")])  # BPR: in process below
def test_interrupt_mid_epoch_saves_a_state_that_resumes_exactly(name, sig, syn_dir, reference_runs, tmp_path):
    run = tmp_path / "run"
    stopped = cli_subprocess(
        ["train", "--model", name, "--data", syn_dir, "--out", run, "-q", *_sets(name)], f"{sig}:2:2"
    )
    assert stopped.returncode == {"INT": 130, "TERM": 143}[sig], stopped.stderr
    lines = stopped.stderr.strip().splitlines()
    assert lines[-1].startswith("interrupted:") and f"--resume {run}" in lines[-1], stopped.stderr
    assert "in epoch 2, after batch 3 of 6" in lines[-1]
    assert "Traceback" not in stopped.stderr
    state = read_resume_state(run)["train"]
    assert (state["trainer"]["epoch"], state["trainer"]["batch"]) == (2, 3)
    assert not (run / "model.pt").exists()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    res = invoke("train", "--resume", run, "-q", "--threads", 1)
    assert res.exit_code == 0, res.output
    assert_same_run(reference_runs[name], run)


@pytest.mark.parametrize(
    ("name", "extra"),
    [("LATTICE", {}), ("MARIO", {"graph_refresh": "epoch"})],  # item graphs built from an earlier batch's weights
)
def test_models_with_cached_graphs_resume_exactly_mid_epoch(name, extra, syn_dir, tmp_path, monkeypatch):
    overrides = {**BASE, "epochs": 3, **extra}
    reference, _ = train_run(name, syn_dir, overrides=overrides, out=tmp_path / "ref", quiet=True, cache_dir=False)
    with signal_at("INT:1:2"), pytest.raises(Interrupted):
        train_run(name, syn_dir, overrides=overrides, out=tmp_path / "run", quiet=True, cache_dir=False)
    assert read_resume_state(tmp_path / "run")["train"]["model_extra"]  # the cached graph travels
    resume_run(tmp_path / "run", quiet=True, cache_dir=False)
    assert_same_run(reference, tmp_path / "run")


@pytest.mark.parametrize(
    ("every", "eval_step", "written"),
    [(1, 1, [1, 2, 3, 4]), (2, 1, [2, 4]), (0, 2, [2, 4]), (0, 1, [1, 2, 3, 4])],  # 0 = at every evaluation
)
def test_checkpoint_every(every, eval_step, written, syn_dataset):
    from modalrec.runs import prepare_model
    from modalrec.training import fit

    overrides = {**BASE, "epochs": 5, "checkpoint_every": every, "eval_step": eval_step, "checkpoint_seconds": 0}
    model, config, _ = prepare_model("BPR", syn_dataset, overrides, cache_dir=False)
    states: list[dict] = []
    fit(model, syn_dataset, config, log=lambda _: None, checkpoint=states.append)
    # the epoch to run next; none after the last epoch (the finished run's files follow at once)
    assert [s["trainer"]["epoch"] for s in states] == written
    assert all(s["trainer"]["batch"] is None for s in states)


def test_the_every_evaluation_schedule_waits_checkpoint_seconds_between_states(syn_dataset):
    from modalrec.runs import prepare_model
    from modalrec.training import fit

    overrides = {**BASE, "epochs": 5, "checkpoint_every": 0, "checkpoint_seconds": 3600}
    model, config, _ = prepare_model("BPR", syn_dataset, overrides, cache_dir=False)
    states: list[dict] = []
    fit(model, syn_dataset, config, log=lambda _: None, checkpoint=states.append)
    assert states == []  # a short run writes none; an explicit checkpoint_every ignores the floor (above)


def test_negative_checkpoint_every_is_a_config_error(syn_dir, tmp_path):
    res = invoke("train", "--model", "BPR", "--data", syn_dir, "--out", tmp_path / "r", "--set", "checkpoint_every=-1")
    assert_one_line_error(res, "checkpoint_every")
    assert not (tmp_path / "r").exists()  # checked before the run directory is claimed


def test_interrupt_in_process_raises_interrupted_with_the_resume_hint(syn_dir, tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with signal_at("INT:0:1"), pytest.raises(Interrupted, match="resume with: modalrec train --resume") as info:
        train_run("BPR", syn_dir, overrides=_overrides("BPR"), out=tmp_path / "run", quiet=True)
    assert info.value.exit_code == 130
    assert {s: signal.getsignal(s) for s in before} == before  # handlers are restored


@pytest.mark.parametrize("ignored", [signal.SIGINT, signal.SIGTERM])
def test_an_ignored_signal_stays_ignored(ignored):
    """A process started with SIGINT ignored (a background job, nohup) keeps it ignored while training, and after;
    the other signal is still handled."""
    other = signal.SIGTERM if ignored == signal.SIGINT else signal.SIGINT
    previous = signal.signal(ignored, signal.SIG_IGN)
    other_before = signal.getsignal(other)
    try:
        with graceful_interrupts() as flag:
            assert signal.getsignal(ignored) is signal.SIG_IGN
            assert signal.getsignal(other) is not other_before  # ours
            os.kill(os.getpid(), ignored)
            assert flag() is None  # ignored: no stop requested
        assert signal.getsignal(ignored) is signal.SIG_IGN
        assert signal.getsignal(other) is other_before
    finally:
        signal.signal(ignored, previous)


def test_resume_state_trainer_keys_are_the_documented_set(killed_run):
    """The ``trainer`` entry of resume.pt keeps its format: exactly these keys, read back by TrainState."""
    trainer = read_resume_state(killed_run)["train"]["trainer"]
    documented = {
        "epoch",
        "batch",
        "epoch_loss",
        "epoch_train_seconds",
        "best_score",
        "best_epoch",
        "best_state",
        "best_valid",
        "bad_evals",
        "history",
        "epoch_seconds",
        "eval_seconds",
    }
    assert set(trainer) == documented == set(TRAINER_KEYS)
    assert list(trainer) == list(TRAINER_KEYS)
    assert TrainState.from_dict(trainer).to_dict().keys() == trainer.keys()
    with pytest.raises(ModalrecError, match="lacks bad_evals and has surprise"):
        TrainState.from_dict({**{k: v for k, v in trainer.items() if k != "bad_evals"}, "surprise": 1})


# ================================================================ bad states
@pytest.fixture
def killed_run(syn_dir, tmp_path) -> Path:
    """A BPR run stopped after epoch 1 with its resume state (Ctrl-C in process: fast)."""
    run = tmp_path / "run"
    with signal_at("INT:1"), pytest.raises(Interrupted):
        train_run("BPR", syn_dir, overrides=_overrides("BPR"), out=run, quiet=True)
    return run


def assert_one_line_error(res, *fragments: str) -> None:
    assert res.exit_code not in (0, None), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    err = res.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in res.output, err
    for f in fragments:
        assert f in err, (f, err)


def _rewrite_state(run: Path, **changes) -> None:
    state = torch.load(run / RESUME_FILE, weights_only=False)
    for key, value in changes.items():
        target = state
        *path, last = key.split("__")
        for p in path:
            target = target[p]
        target[last] = value
    torch.save(state, run / RESUME_FILE)


def test_truncated_resume_state_is_refused(killed_run):
    data = (killed_run / RESUME_FILE).read_bytes()
    (killed_run / RESUME_FILE).write_bytes(data[: len(data) // 2])
    assert_one_line_error(invoke("train", "--resume", killed_run), "corrupt or truncated", RESUME_FILE)


def test_garbage_resume_state_is_refused(killed_run):
    (killed_run / RESUME_FILE).write_bytes(b"not a checkpoint at all")
    assert_one_line_error(invoke("train", "--resume", killed_run), "corrupt or truncated")


def test_changed_code_version_is_refused_unless_forced(killed_run):
    _rewrite_state(killed_run, code="0.0.1+0123456789ab")
    assert_one_line_error(invoke("train", "--resume", killed_run), "0.0.1+0123456789ab", "code changed", "--force")
    assert (killed_run / RESUME_FILE).is_file()  # the refusal leaves the state alone
    # --force continues, with a warning that the result differs from an uninterrupted run (issue 28)
    res = invoke("train", "--resume", killed_run, "--force", "-q")
    assert res.exit_code == 0, res.output
    assert "continuing with changed code" in res.stderr and "differ from an uninterrupted run" in res.stderr


def test_changed_dataset_is_refused(killed_run):
    _rewrite_state(killed_run, dataset__fingerprint="f" * 16)
    assert_one_line_error(invoke("train", "--resume", killed_run, "--force"), "dataset", "changed")


def test_changed_config_is_refused_unless_forced(killed_run):
    assert_one_line_error(invoke("train", "--resume", killed_run, "--epochs", 6), "epochs 4 → 6", "--force")
    assert (killed_run / RESUME_FILE).is_file()  # the refusal leaves the state alone
    res = invoke("train", "--resume", killed_run, "--epochs", 6, "--force", "-q")
    assert res.exit_code == 0, res.output
    metrics = json.loads((killed_run / "metrics.json").read_text())
    assert len(metrics["history"]) == 6
    assert yaml.safe_load((killed_run / "config.yaml").read_text())["config"]["epochs"] == 6
    assert "--force" in (killed_run / "train.log").read_text()


def test_checkpoint_every_is_not_a_config_change(killed_run):
    res = invoke("train", "--resume", killed_run, "--set", "checkpoint_every=2", "-q")
    assert res.exit_code == 0, res.output


def test_gpu_state_on_cpu_is_refused_unless_forced(killed_run):
    _rewrite_state(killed_run, train__device="cuda")
    assert_one_line_error(invoke("train", "--resume", killed_run), "written on cuda", "--device cuda", "--force")
    res = invoke("train", "--resume", killed_run, "--force", "-q")
    assert res.exit_code == 0, res.output


def test_finished_and_missing_runs_are_refused(lightgcn_finished, tmp_path):
    assert_one_line_error(invoke("train", "--resume", lightgcn_finished), "finished", "nothing to resume")
    assert_one_line_error(invoke("train", "--resume", tmp_path / "nope"), "no such run directory")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(invoke("train", "--resume", tmp_path / "empty"), "no resume.pt")


@pytest.fixture
def lightgcn_finished(syn_dir, tmp_path) -> Path:
    run, _ = train_run("BPR", syn_dir, overrides={**BASE, "epochs": 1}, out=tmp_path / "done", quiet=True)
    return run


def test_resume_options_are_checked(killed_run, syn_dir):
    assert_one_line_error(invoke("train", "--resume", killed_run, "--model", "BPR"), "drop --model")
    assert_one_line_error(invoke("train", "--data", syn_dir), "--model and --data")
    assert_one_line_error(invoke("train", "--model", "BPR", "--data", syn_dir, "--force"), "--force")


def test_failed_write_keeps_the_previous_state(syn_dir, tmp_path, monkeypatch):
    """The disk fills up while the second resume state is written: one-line error, the first state loads and resumes."""
    import modalrec.runs as runs_mod

    real_save, calls = torch.save, {"n": 0}

    def failing_save(obj, fh, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("format") == "modalrec-resume":
            calls["n"] += 1
            if calls["n"] == 2:
                fh.write(b"partial")
                raise OSError(28, "No space left on device")
        return real_save(obj, fh, *args, **kwargs)

    monkeypatch.setattr(runs_mod.torch, "save", failing_save)
    run = tmp_path / "run"
    with pytest.raises(RunError, match="No space left on device.*previous resume state \\(after epoch 0\\) is intact"):
        train_run("BPR", syn_dir, overrides=_overrides("BPR"), out=run, quiet=True)
    monkeypatch.setattr(runs_mod.torch, "save", real_save)
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    assert read_resume_state(run)["train"]["trainer"]["epoch"] == 1
    _, result = resume_run(run, quiet=True)
    reference, _ = train_run("BPR", syn_dir, overrides=_overrides("BPR"), out=tmp_path / "ref", quiet=True)
    assert_same_run(reference, run)
    assert result.best_epoch == json.loads((reference / "metrics.json").read_text())["best_epoch"]


# ================================================================ experiments
def test_interrupted_benchmark_resumes_its_trial(syn_dir, tmp_path, monkeypatch):
    """Ctrl-C in a benchmark's trial, then the same command again: the trial continues from its state (not from
    scratch) and its record equals that of a benchmark that was never interrupted."""
    import modalrec.experiments.trials as bench_mod

    args = ["benchmark", "--models", "BPR", "--data", syn_dir, "--seeds", "1", "--epochs", 3, "--threads", 1]
    args += ["--set", "train_batch_size=256"]
    with signal_at("INT:1:2"):
        stopped = invoke(*args, "--out", tmp_path / "bench")
    assert stopped.exit_code == 130, stopped.output
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted: BPR seed 1") and "run the same command again to resume" in last, last

    def no_fresh_training(*a, **k):
        raise AssertionError("the interrupted trial was trained from scratch")

    with monkeypatch.context() as m:
        m.setattr(bench_mod, "train_run", no_fresh_training)
        resumed = invoke(*args, "--out", tmp_path / "bench")
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from" in resumed.output and "1 runs trained" in resumed.output
    clean = invoke(*args, "--out", tmp_path / "clean")
    assert clean.exit_code == 0, clean.output
    (a,) = (tmp_path / "bench" / "results").rglob("seed-1.json")
    (b,) = (tmp_path / "clean" / "results").rglob("seed-1.json")
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert (ra["valid"], ra["test"], ra["best_epoch"]) == (rb["valid"], rb["test"], rb["best_epoch"])
    assert_same_run(Path(rb["run_dir"]), Path(ra["run_dir"]))


def test_benchmark_says_at_once_whether_an_interrupted_trial_resumes(syn_dir, tmp_path, monkeypatch):
    """The log says, when the trial is submitted (before its training, not only in the record written
    when it ends), that it continues its interrupted run — or, after a code change, that it starts over."""
    import modalrec.run_resume as resume_mod

    def interrupted(out: Path) -> tuple[list, Path]:
        args = ["benchmark", "--models", "BPR", "--data", syn_dir, "--seeds", "1", "--epochs", 2, "--threads", 1]
        args += ["--set", "train_batch_size=256", "--out", out]
        with signal_at("INT:1:2"):
            assert invoke(*args).exit_code == 130
        (leftover,) = (out / "runs").iterdir()
        return args, leftover

    def said_before_the_result(output: str, text: str) -> bool:
        lines = output.splitlines()
        said = next(i for i, ln in enumerate(lines) if text in ln)
        return said < next(i for i, ln in enumerate(lines) if "best epoch" in ln)

    args, leftover = interrupted(tmp_path / "a")
    assert resume_mod.resume_refusal(leftover) is None
    resumed = invoke(*args)
    assert resumed.exit_code == 0, resumed.output
    assert said_before_the_result(resumed.output, f"continues its interrupted run {leftover.name}"), resumed.output

    args, leftover = interrupted(tmp_path / "b")
    real = resume_mod.code_version()
    monkeypatch.setattr(resume_mod, "code_version", lambda: real + "-changed")
    assert "the code changed" in resume_mod.resume_refusal(leftover)
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert said_before_the_result(again.output, f"cannot resume {leftover.name}"), again.output
    assert (leftover / RESUME_FILE).is_file(), "the old folder must be kept"
    assert (leftover.parent / f"{leftover.name}-try2" / "metrics.json").is_file()


# ================================================================ progress: elapsed time and an upper-bound ETA
def test_format_duration_and_epoch_clock():
    from modalrec.training import format_duration
    from modalrec.training.progress import EpochClock

    assert [format_duration(s) for s in (0, 59.4, 61, 3599, 3600, 7260)] == [
        "0s",
        "59s",
        "1m01s",
        "59m59s",
        "1h00m",
        "2h01m",
    ]
    clock = EpochClock(max_epochs=10)
    assert clock.left(0) is None and clock.describe(0).startswith("elapsed ")
    clock.add(2.0)
    clock.add(4.0)
    assert clock.left(2) == pytest.approx(3.0 * 8)  # mean epoch time × epochs left to the maximum
    assert clock.left(10) == 0.0
    assert "≤ 24s left" in clock.describe(2)


def test_epoch_lines_show_elapsed_and_eta_and_one_eta_line(syn_dataset):
    from modalrec.runs import prepare_model
    from modalrec.training import fit

    lines: list[str] = []
    model, config, _ = prepare_model("BPR", syn_dataset, {**BASE, "epochs": 3}, cache_dir=False)
    fit(model, syn_dataset, config, log=lines.append)
    epoch_lines = [ln for ln in lines if ln.startswith("epoch ")]
    assert len(epoch_lines) == 3
    assert all("[elapsed " in ln and "left]" in ln for ln in epoch_lines), epoch_lines
    eta = [ln for ln in lines if ln.startswith("ETA:")]
    assert len(eta) == 1 and lines.index(eta[0]) == lines.index(epoch_lines[0]) + 1
    assert "remaining 2 of 3 epochs" in eta[0] and "upper bound" in eta[0] and "early stopping" in eta[0]


def test_rich_progress_bar_runs(syn_dataset):
    from modalrec.runs import prepare_model
    from modalrec.training import fit

    model, config, _ = prepare_model("BPR", syn_dataset, {**BASE, "epochs": 2}, cache_dir=False)
    assert fit(model, syn_dataset, config, log=lambda _: None, progress=True).timings["epochs_run"] == 2


# ================================================================ threads
def test_thread_count_precedence(monkeypatch):
    from modalrec.threads import THREADS_ENV, resolve_threads, usable_cores

    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert usable_cores() == len(os.sched_getaffinity(0))
    assert resolve_threads() == usable_cores()
    assert resolve_threads(default=1) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert resolve_threads() == 3
    monkeypatch.setenv(THREADS_ENV, "5")
    assert resolve_threads() == 5
    assert resolve_threads(2) == 2


def test_threads_option_and_variable(lightgcn_finished, monkeypatch):
    before = torch.get_num_threads()
    try:
        res = invoke("evaluate", lightgcn_finished, "--threads", 2, "--json")
        assert res.exit_code == 0, res.output
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("MODALREC_THREADS", "1")
        assert invoke("evaluate", lightgcn_finished, "--json").exit_code == 0
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("MODALREC_THREADS", "many")
        assert_one_line_error(invoke("evaluate", lightgcn_finished), "MODALREC_THREADS", "'many'")
        monkeypatch.delenv("MODALREC_THREADS")
        assert_one_line_error(invoke("evaluate", lightgcn_finished, "--threads", 0), "--threads 0")
    finally:
        torch.set_num_threads(before)
    for cmd in ("train", "evaluate", "recommend", "serve", "demo", "benchmark", "ablate", "sweep"):
        assert "--threads" in invoke(cmd, "--help").output, cmd


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ({}, None),  # depends on the load: one of the two settings, never both
        ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE None"),
        ({"GOMP_SPINCOUNT": "5"}, "None 5"),
    ],
)
def test_importing_modalrec_sets_how_idle_openmp_threads_wait_unless_the_user_did(preset, expected):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(preset)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), env.get("PYTHONPATH", "")])
    code = "import os, modalrec; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    got = out.stdout.strip()
    if expected is None:
        assert got in ("PASSIVE None", "None 10000"), out.stderr
    else:
        assert got == expected, out.stderr


def test_openmp_waiting_spins_briefly_only_on_an_idle_machine():
    from modalrec.threads import SHORT_SPIN, openmp_waiting_for

    assert openmp_waiting_for(0.2, 2) == {"GOMP_SPINCOUNT": str(SHORT_SPIN)}
    assert openmp_waiting_for(1.6, 2) == {"OMP_WAIT_POLICY": "PASSIVE"}  # the other core is taken
    assert openmp_waiting_for(6.0, 2) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert openmp_waiting_for(6.0, 16) == {"GOMP_SPINCOUNT": str(SHORT_SPIN)}


def test_second_ctrl_c_quits_at_once_and_leaves_the_previous_state(syn_dir, tmp_path, monkeypatch):
    """Ctrl-C, then Ctrl-C again while the resume state is being written: exit 130 at once, no temporary file,
    the previous state (after epoch 0) still loads and resumes."""
    import modalrec.runs as runs_mod

    real_save = torch.save

    def save_then_second_ctrl_c(obj, fh, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("train", {}).get("trainer", {}).get("batch") is not None:
            fh.write(b"partial")
            os.kill(os.getpid(), signal.SIGINT)  # the handler raises KeyboardInterrupt here
        return real_save(obj, fh, *args, **kwargs)

    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(runs_mod.torch, "save", save_then_second_ctrl_c)
    run = tmp_path / "run"
    with signal_at("INT:1:2"):
        res = invoke("train", "--model", "BPR", "--data", syn_dir, "--out", run, "-q", *_sets("BPR"))
    assert res.exit_code == 130, res.output
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted: stopped at once") and "Traceback" not in res.output, res.stderr
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []
    assert read_resume_state(run)["train"]["trainer"]["epoch"] == 1  # the state written after epoch 0
    assert signal.getsignal(signal.SIGINT) is before  # the handler is restored
    monkeypatch.undo()
    assert invoke("train", "--resume", run, "-q").exit_code == 0
