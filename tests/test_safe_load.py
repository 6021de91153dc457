"""Opening a run someone else wrote runs none of their code: ``model.pt`` and ``resume.pt`` are loaded as tensors
and plain data only; a planted pickle that would run code is refused with one line and nothing is executed."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error
from signal_runner import install
from typer.testing import CliRunner

from modalrec.cli import app
from modalrec.errors import Interrupted, RunError
from modalrec.run_files import RESUME_FILE, RUN_FILE_SAFE_GLOBALS, load_run_file
from modalrec.run_load import load_run
from modalrec.run_resume import read_resume_state, resume_refusal, resume_run
from modalrec.runs import train_run

# 6 batches per epoch on the synthetic set: a stop in epoch 1 after batch 2 leaves a mid-epoch resume state
OVERRIDES = {"epochs": 2, "train_batch_size": 256, "learning_rate": 0.01, "checkpoint_every": 1}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200", "NO_COLOR": "1"})


@pytest.fixture(scope="module")
def written_runs(syn_dir, tmp_path_factory) -> dict[str, Path]:
    """A finished run and a run interrupted mid-epoch, both written by the normal code path."""
    root = tmp_path_factory.mktemp("runs")
    finished, _ = train_run("BPR", syn_dir, overrides=OVERRIDES, out=root / "finished", quiet=True)
    # SIGINT as in a terminal (a test run in the background ignores it), then whatever it was
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.MonkeyPatch.context() as mp, pytest.raises(Interrupted):
            install("INT:1:2", mp.setattr)
            train_run("BPR", syn_dir, overrides=OVERRIDES, out=root / "interrupted", quiet=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    return {"finished": finished, "interrupted": root / "interrupted"}


@pytest.fixture
def runs(written_runs, tmp_path) -> dict[str, Path]:
    """Copies of the written runs this test may change."""
    return {k: Path(shutil.copytree(v, tmp_path / k)) for k, v in written_runs.items()}


def test_runs_written_by_the_normal_code_path_load_and_resume(runs):
    loaded = load_run(runs["finished"])
    assert loaded.model.name == "BPR" and loaded.metrics["best_epoch"] >= 0
    state = read_resume_state(runs["interrupted"])
    # the numpy random state (an array) and the best validation's per-user vectors are what needs the allowlist
    assert isinstance(state["train"]["rng"]["numpy"][1], np.ndarray)
    assert state["train"]["trainer"]["batch"] is not None and state["train"]["rng_epoch_start"] is not None
    best = state["train"]["trainer"]["best_valid"]
    assert all(isinstance(v, np.ndarray) for v in best["per_user"].values()) and isinstance(best["users"], np.ndarray)
    assert resume_refusal(runs["interrupted"]) is None  # the memory-mapped look
    resume_run(runs["interrupted"], quiet=True)
    assert (runs["interrupted"] / "metrics.json").is_file() and not (runs["interrupted"] / RESUME_FILE).exists()


def test_loading_leaves_the_callers_torch_allowlist_as_it_was(runs):
    ours = set(RUN_FILE_SAFE_GLOBALS) - {np.ndarray}
    with torch.serialization.safe_globals([np.ndarray]):  # the caller's own entry, which must stay
        load_run(runs["finished"])
        read_resume_state(runs["interrupted"])
        allowed = set(torch.serialization.get_safe_globals())
    assert np.ndarray in allowed and not allowed & ours


class RunsCode:
    """Unpickling this runs ``call(*args)``: what a crafted checkpoint would do."""

    def __init__(self, call, *args) -> None:
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def _payload(kind: str, marker: Path) -> RunsCode:
    if kind == "exec":
        return RunsCode(exec, f"open({str(marker)!r}, 'w').close()")
    return RunsCode(os.system, f"touch '{marker}'")


def _plant(path: Path, marker: Path, kind: str, torch_format: bool) -> None:
    """Rewrite a run file with the same content plus an object whose unpickling creates ``marker``."""
    state = load_run_file(path)
    state["config"] = {**state["config"], "note": _payload(kind, marker)}
    if torch_format:
        torch.save(state, path)
    else:  # a bare pickle, as pickle.dump writes it
        with path.open("wb") as fh:
            pickle.dump(state, fh)


PLANTS = [("exec", True), ("system", True), ("exec", False)]


@pytest.mark.parametrize(("kind", "torch_format"), PLANTS)
def test_a_planted_model_pt_is_refused_by_load_evaluate_and_recommend(runs, tmp_path, kind, torch_format):
    run, marker = runs["finished"], tmp_path / "pwned"
    _plant(run / "model.pt", marker, kind, torch_format)
    with pytest.raises(RunError) as info:
        load_run(run)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{run / 'model.pt'}: holds objects other than tensors")
    assert "refusing to load it (it could run code)" in message
    assert_one_line_error(invoke("evaluate", run), "model.pt", "refusing to load it")
    assert_one_line_error(invoke("recommend", run, "--user", "0"), "model.pt", "refusing to load it")
    assert not marker.exists()


@pytest.mark.parametrize(("kind", "torch_format"), PLANTS)
def test_a_planted_resume_pt_is_refused_before_resuming(runs, tmp_path, kind, torch_format):
    run, marker = runs["interrupted"], tmp_path / "pwned"
    path = run / RESUME_FILE
    _plant(path, marker, kind, torch_format)
    for read in (read_resume_state, resume_run, lambda r: read_resume_state(r, mmap=True)):
        with pytest.raises(RunError, match="holds objects other than tensors and plain data; refusing|refusing"):
            read(run)
    assert resume_refusal(run).startswith(f"{path}: holds objects other than tensors and plain data")
    assert_one_line_error(invoke("train", "--resume", run), RESUME_FILE, "refusing to load it (it could run code)")
    assert not marker.exists() and path.is_file()  # refused, and left for the user to inspect


def test_the_refusal_names_what_a_torch_file_would_have_called(runs, tmp_path):
    _plant(runs["finished"] / "model.pt", tmp_path / "pwned", "system", torch_format=True)
    with pytest.raises(RunError, match=r"model\.pt: holds objects other than tensors and plain data \(posix\.system\)"):
        load_run(runs["finished"])


def test_an_object_array_is_not_plain_data(runs):
    path = runs["interrupted"] / RESUME_FILE
    state = load_run_file(path)
    state["train"]["rng"]["numpy"] = np.array([1, "two"], dtype=object)
    torch.save(state, path)
    with pytest.raises(RunError, match="holds objects other than tensors and plain data; refusing"):
        read_resume_state(runs["interrupted"])


def test_damaged_files_are_still_called_damaged(runs):
    (runs["finished"] / "model.pt").write_bytes(b"not a checkpoint")
    assert_one_line_error(invoke("evaluate", runs["finished"]), "cannot read checkpoint", "damaged")
    data = (runs["interrupted"] / RESUME_FILE).read_bytes()
    (runs["interrupted"] / RESUME_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(RunError, match="corrupt or truncated resume state"):
        read_resume_state(runs["interrupted"])
