"""The Python API (``import modalrec as mr``, issue 28 item 6): what a researcher in a notebook calls, and each
problem a user met with the library functions it replaces — a class, a spec or a name where a model is named,
``ks=10``, a re-run notebook cell, a wrong split, errors naming command-line options, no model returned, and
torch's global state left changed."""

from __future__ import annotations

import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error
from scipy import stats
from typer.testing import CliRunner

import modalrec as mr
from modalrec import api
from modalrec.cli import app
from modalrec.errors import ConfigError, ModalrecError, RunError
from modalrec.models import MODEL_REGISTRY, spec
from modalrec.models.base import Recommender
from modalrec.models.bpr import BPR
from modalrec.run_files import load_run_file
from modalrec.training import deterministic_cpu_kernels, seed_everything

TINY = {"epochs": 2, "train_batch_size": 256}
API_FUNCTIONS = ("load_dataset", "train", "load_run", "evaluate", "recommend", "per_user_metrics", "compare")


class NotebookBPR(BPR):
    """A user's model, defined in their own code and never registered (the class is passed itself)."""

    name = "NotebookBPR"


MODEL_FILE = """\
from modalrec.models.bpr import BPR


class FileBPR(BPR):
    name = "FileBPR"
"""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from modalrec.data.synth import write_synthetic_dataset

    return write_synthetic_dataset(
        tmp_path_factory.mktemp("api") / "tiny", n_users=60, n_items=40, modalities={"image": 8, "text": 4}, seed=3
    )


@pytest.fixture(scope="module")
def bpr(tiny_dir, tmp_path_factory) -> mr.TrainedRun:
    """BPR named by its registered name."""
    return mr.train("BPR", tiny_dir, settings=TINY, seed=1, out=tmp_path_factory.mktemp("runs") / "bpr")


@pytest.fixture(scope="module")
def mine(tiny_dir, tmp_path_factory) -> mr.TrainedRun:
    """A user's class passed itself (``train_run(MyClass, …)`` once failed with ``AttributeError: … 'lower'``)."""
    return mr.train(NotebookBPR, tiny_dir, settings=TINY, seed=2, out=tmp_path_factory.mktemp("runs") / "mine")


# ---------------------------------------------------------------- the namespace
def test_the_namespace_lists_the_everyday_functions_with_examples():
    assert set(mr.__all__) >= {*API_FUNCTIONS, "list_models", "check_model", "Recommender", "register", "TrainedRun"}
    for name in mr.__all__:
        assert getattr(mr, name) is not None, name
    assert "train" in dir(mr) and mr.Recommender is Recommender and mr.train is api.train
    for name in API_FUNCTIONS:
        doc = getattr(mr, name).__doc__
        assert doc and "Example::" in doc and ">>> import modalrec as mr" in doc, name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        mr.nothing  # noqa: B018


def test_importing_modalrec_stays_light():
    """The API is loaded on first use: ``import modalrec`` (the CLI's first import) loads no torch."""
    code = "import sys, modalrec; print('torch' in sys.modules, callable(modalrec.train), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True", "True"]


# ---------------------------------------------------------------- train: a class, a spec or a name; the model back
def test_train_takes_a_class_and_returns_the_trained_model(mine):
    assert isinstance(mine.model, NotebookBPR) and not mine.model.training
    assert mine.run_dir.is_dir() and (mine.run_dir / "model.pt").is_file()
    saved = load_run_file(mine.run_dir / "model.pt")["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in mine.model.state_dict().items())  # the best weights
    assert mine.result.test is not None and 0 <= mine.result.test.metrics["recall@20"] <= 1
    assert mine.dataset.n_users == 60 and "NotebookBPR" in repr(mine) and "array" not in repr(mine)
    assert "notebookbpr" not in MODEL_REGISTRY  # passing a class registers nothing


def test_the_returned_model_is_the_run_loaded_again(bpr):
    again = mr.load_run(bpr.run_dir)
    users = torch.arange(10)
    with torch.no_grad():
        assert torch.equal(bpr.model.ranking_scores(users), again.model.ranking_scores(users))
    assert mr.recommend(bpr, user=3, k=5) == mr.recommend(str(bpr.run_dir), user=3, k=5)


def test_train_takes_a_file_spec_and_a_loaded_dataset(tiny_dir, tmp_path):
    (tmp_path / "mymodels.py").write_text(MODEL_FILE)
    data = mr.load_dataset(tiny_dir, "image")  # "image,text" as typed, or a list
    assert data.modalities == ["image"]
    trained = mr.train(f"{tmp_path / 'mymodels.py'}:FileBPR", data, settings={"epochs": 1}, out=tmp_path / "run")
    assert type(trained.model).__name__ == "FileBPR" and trained.dataset is data
    with pytest.raises(ConfigError, match="modalities: applies to a dataset folder"):
        mr.train("BPR", data, modalities=["text"])
    with pytest.raises(ConfigError, match="pass the class .*not an instance"):
        mr.train(trained.model, data)


def test_train_takes_an_in_memory_dataset(tmp_path):
    from modalrec.data.synth import synthetic_dataset

    data = synthetic_dataset(n_users=60, n_items=40, modalities={"image": 8}, seed=4)
    assert data.path is None
    trained = mr.train(NotebookBPR, data, settings={"epochs": 1}, out=tmp_path / "run")
    assert isinstance(trained.model, NotebookBPR) and trained.dataset is data
    assert mr.evaluate(trained, ks=10).metrics["recall@10"] == trained.result.test.metrics["recall@10"]


# ---------------------------------------------------------------- the caller's global torch state
def _global_state() -> dict:
    return {
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "fill": torch.utils.deterministic.fill_uninitialized_memory,
        "threads": torch.get_num_threads(),
        "python": random.getstate(),
        "numpy": repr(np.random.get_state()),
        "torch": torch.get_rng_state().tolist(),
    }


def test_train_leaves_the_callers_torch_state_as_it_was(tiny_dir, tmp_path):
    # Earlier in-process trainings of the suite left deterministic mode on (the trainer sets it process-wide);
    # start from torch's defaults, which training changes both of, and leave the process as it was.
    prior = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
    )
    torch.use_deterministic_algorithms(False)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        random.seed(7), np.random.seed(7), torch.manual_seed(7)
        before = _global_state()
        assert not before["deterministic"] and before["fill"]
        mr.train("BPR", tiny_dir, settings={"epochs": 1}, seed=5, out=tmp_path / "run")
        assert _global_state() == before
        with pytest.raises(RunError):  # a failure after the seeding (the out folder exists) restores it too
            mr.train("BPR", tiny_dir, settings={"epochs": 1}, seed=5, out=tmp_path / "run")
        assert _global_state() == before
    finally:
        torch.use_deterministic_algorithms(prior[0], warn_only=prior[1])
        torch.utils.deterministic.fill_uninitialized_memory = prior[2]


def test_the_global_state_guard_restores_every_setting():
    torch.use_deterministic_algorithms(True)  # strict, not warn-only: another caller's choice
    try:
        before = _global_state()
        with api.caller_global_state():
            deterministic_cpu_kernels(torch.device("cpu"))
            seed_everything(11)
            torch.set_num_threads(2)
        assert _global_state() == before
    finally:
        torch.use_deterministic_algorithms(False)


# ---------------------------------------------------------------- register: a re-run notebook cell
def test_registering_a_redefined_class_replaces_it_with_a_warning(monkeypatch):
    monkeypatch.setattr(spec, "MODEL_REGISTRY", dict(spec.MODEL_REGISTRY))  # what this test registers goes with it

    def cell() -> type[BPR]:
        @mr.register
        class CellBPR(BPR):
            name = "ApiCellBPR"

        return CellBPR

    first = cell()
    with pytest.warns(UserWarning, match="model ApiCellBPR: replaced the registered class"):
        second = cell()  # the same cell run again: no "registered twice"
    assert second is not first and mr.list_models().count(second) == 1 and first not in mr.list_models()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mr.register(second) is second  # the same class again: nothing to say
    with pytest.raises(ConfigError, match="'BPR' is taken"):
        mr.register(type("BPR", (BPR,), {"name": "BPR"}))


# ---------------------------------------------------------------- evaluate: ks as an int or a list
def test_evaluate_takes_one_cutoff_or_several(bpr):
    one = mr.evaluate(bpr, ks=10)
    assert {k.split("@")[1] for k in one.metrics} == {"10"} and "recall@10" in one.metrics
    several = mr.evaluate(bpr.run_dir, "test", ks=[20, 10])
    assert mr.evaluate(bpr, ks=(10, 20)).metrics == several.metrics == mr.evaluate(bpr, ks=np.array([10, 20])).metrics
    assert several.metrics["recall@10"] == one.metrics["recall@10"] == bpr.result.test.metrics["recall@10"]
    assert mr.evaluate(bpr, ks=None).metrics == bpr.result.test.metrics  # the run's own cut-offs
    assert {k.split("@")[1] for k in mr.evaluate(bpr, "valid", ks=np.int64(5)).metrics} == {"5"}


def test_evaluate_errors_name_the_parameter(bpr, caplog):
    for ks, why in (("ten", "not a cut-off"), ([0, 20], "0 is not a positive integer"), (True, "not a cut-off")):
        with pytest.raises(ConfigError, match=f"^ks: .*{why}"):
            mr.evaluate(bpr, ks=ks)
    with pytest.raises(ConfigError, match="split 'tset': use 'valid' or 'test'"):
        mr.evaluate(bpr, "tset")
    with caplog.at_level("WARNING", logger="modalrec"):
        capped = mr.evaluate(bpr, ks=500)
    assert "recall@40" in capped.metrics and "ks: 500 exceeds the 40 items; using 40 instead" in caplog.text
    assert "--" not in caplog.text


# ---------------------------------------------------------------- per-user metrics: a wrong split
def test_a_wrong_split_in_per_user_metrics_is_one_clear_error(bpr, tmp_path):
    pu = mr.per_user_metrics(bpr, "valid")
    assert pu["users"].shape == pu["recall@20"].shape and pu["users"].size > 0
    with pytest.raises(
        RunError, match=rf"{bpr.run_dir}: no per-user metrics for split 'tets' \(this run has: test, valid\)"
    ):
        mr.per_user_metrics(bpr.run_dir, "tets")
    with pytest.raises(RunError, match="no such run directory"):
        mr.per_user_metrics(tmp_path / "nowhere")


# ---------------------------------------------------------------- errors worded for Python, the CLI's as before
def test_library_errors_name_parameters_and_the_cli_keeps_its_options(bpr, tiny_dir):
    with pytest.raises(RunError) as exc:
        mr.train("BPR", tiny_dir, settings=TINY, out=bpr.run_dir)
    assert "already exists" in str(exc.value) and "out folder" in str(exc.value) and "--" not in str(exc.value)
    with pytest.raises(ModalrecError) as exc:
        mr.train("BPR", tiny_dir, settings=TINY, device="gpu")
    assert str(exc.value) == "device 'gpu': use 'cpu' or 'cuda'"
    if not torch.cuda.is_available():
        with pytest.raises(ModalrecError, match=r"^device 'cuda': CUDA is not available"):
            mr.load_run(bpr.run_dir, device="cuda")

    def cli(*args):
        return CliRunner().invoke(app, ["train", "--model", "BPR", "--data", str(tiny_dir), "-q", *args])

    assert_one_line_error(cli("--out", bpr.run_dir), "already exists", "(choose another --out)")
    assert_one_line_error(cli("--device", "gpu"), "--device 'gpu': use cpu or cuda")


# ---------------------------------------------------------------- compare: a paired t-test of two runs
def test_compare_runs_a_paired_ttest_over_the_common_users(bpr, mine):
    result = mr.compare(mine, bpr.run_dir, "Recall@20")
    a, b = mr.per_user_metrics(mine)["recall@20"], mr.per_user_metrics(bpr)["recall@20"]
    assert (result.run_a, result.run_b, result.metric, result.split) == (mine.run_dir, bpr.run_dir, "recall@20", "test")
    assert result.n_users == a.size == b.size and result.mean_a == pytest.approx(a.mean())
    assert result.difference == pytest.approx(a.mean() - b.mean())
    reference = stats.ttest_rel(a, b)
    assert result.t == pytest.approx(reference.statistic) and result.p == pytest.approx(reference.pvalue)
    text = str(result)
    assert text.startswith(f"recall@20 on test, {a.size} users: mine ") and " vs bpr " in text and "p = " in text
    same = mr.compare(bpr, mr.load_run(bpr.run_dir), "ndcg@10", "valid")
    assert same.difference == 0 and np.isnan(same.p) and not same.significant and "not significant" in str(same)


def test_compare_refuses_what_cannot_be_paired(bpr, tmp_path):
    with pytest.raises(RunError, match=r"no per-user 'mrr@20' on test \(it has: .*recall@20"):
        mr.compare(bpr, bpr, "mrr@20")
    from modalrec.data.synth import write_synthetic_dataset

    other = write_synthetic_dataset(tmp_path / "other", n_users=60, n_items=40, modalities={"image": 8}, seed=9)
    elsewhere = mr.train("BPR", other, settings={"epochs": 1}, out=tmp_path / "run")
    with pytest.raises(RunError, match="trained on different data"):
        mr.compare(bpr, elsewhere)
