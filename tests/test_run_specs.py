"""Runs of a model from the user's own file: the run records the model's spec and source hash, so evaluate,
recommend, serve and resume find the same model again without any flag; a file that is gone or code that changed
since is said in one line; resume refuses changed code unless --force; a benchmark retrains a model whose source
changed and reuses it otherwise; a benchmark's trials of a file model run on Ray workers."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from conftest import assert_one_line_error
from fastapi.testclient import TestClient
from signal_runner import install
from test_model_spec import MODEL_SOURCE  # the user's model: LightGCN + a projection of the image features
from test_resume import cli_subprocess, invoke  # the CLI in a subprocess (signals) and in process
from test_scale import ray_cluster  # noqa: F401 — ray_cluster: the Ray tests' local Ray (2 CPUs), a fixture

from modalrec.errors import Interrupted
from modalrec.experiments.benchmark import run_benchmark
from modalrec.experiments.plans import load_plan
from modalrec.models.spec import model_source_hash, resolve_model
from modalrec.run_files import RESUME_FILE, load_run_file
from modalrec.run_load import load_run
from modalrec.runs import train_run
from modalrec.serve import create_app

# 1 to 3 epochs, two batches an epoch, a resume state after every epoch
TRAIN = {"epochs": 2, "train_batch_size": 256, "learning_rate": 0.01, "stopping_step": 10, "checkpoint_every": 1}
CLASS = "ImgLightGCN"


def _sets(overrides: dict) -> list[str]:
    return [x for k, v in overrides.items() for x in ("--set", f"{k}={json.dumps(v)}")]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """``modalrec data synth --users 60 --items 40`` (image 8-d, text 4-d)."""
    out = tmp_path_factory.mktemp("specdata") / "data"
    res = invoke("data", "synth", out, "--users", 60, "--items", 40, "--modalities", "image:8,text:4")
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture
def model_file(tmp_path, monkeypatch) -> Path:
    """The user's model file in the working directory (named by a relative spec)."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "mymodels.py"
    path.write_text(MODEL_SOURCE)
    return path


@pytest.fixture
def trained(model_file, data_dir) -> Path:
    """A finished run of the file model, trained through the CLI with a relative spec."""
    res = invoke("train", "--model", f"mymodels.py:{CLASS}", "--data", data_dir, "--out", "run", "-q", *_sets(TRAIN))
    assert res.exit_code == 0, res.output
    return model_file.parent / "run"


def _touch(path: Path) -> None:
    """A one-character change of the model's source (a comment: same weights, other code)."""
    path.write_text(path.read_text() + "#")


def _warnings(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("warning:")]


# ================================================================ train → evaluate → recommend → serve
def test_a_run_records_its_models_spec_and_source_hash(trained, model_file):
    config = yaml.safe_load((trained / "config.yaml").read_text())
    cls = resolve_model(f"{model_file}:{CLASS}")
    assert config["model"] == CLASS
    assert config["model_spec"] == f"{model_file.resolve()}:{CLASS}"  # absolute: found again from anywhere
    assert config["model_source_hash"] == model_source_hash(cls)
    ckpt = torch.load(trained / "model.pt", weights_only=True)
    assert (ckpt["model_spec"], ckpt["model_source_hash"]) == (config["model_spec"], config["model_source_hash"])


def test_evaluate_recommend_and_serve_find_the_file_model_without_a_flag(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "..")  # elsewhere: the recorded spec is absolute
    res = invoke("evaluate", trained, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["metrics"] == json.loads((trained / "metrics.json").read_text())["test"]
    assert not _warnings(res.stderr)
    res = invoke("recommend", trained, "--user", 0, "-k", 5, "--explain")
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert body["model"] == CLASS and len(body["items"]) == 5
    with TestClient(create_app(trained)) as client:
        assert client.get("/info").json()["model"] == CLASS
        served = client.get("/users/0/recommendations", params={"k": 5}).json()
    assert [i["item"] for i in served["items"]] == [i["item"] for i in body["items"]]


# ================================================================ the file gone, the code changed
def test_a_missing_model_file_is_one_line_naming_the_spec(trained, model_file):
    model_file.rename(model_file.with_name("moved.py"))
    spec = f"{model_file.resolve()}:{CLASS}"
    for args in (["evaluate", trained], ["recommend", trained, "--user", 0], ["serve", trained, "--port", 8765]):
        assert_one_line_error(invoke(*args), str(trained), spec, "does not exist")


def test_changed_code_whose_weights_still_fit_is_one_warning_line_and_proceeds(trained, model_file):
    before = json.loads((trained / "metrics.json").read_text())["test"]
    _touch(model_file)
    res = invoke("evaluate", trained, "--json")
    assert res.exit_code == 0, res.output
    (line,) = _warnings(res.stderr)
    assert "changed since the run was trained" in line and f"{model_file.resolve()}:{CLASS}" in line, line
    assert json.loads(res.stdout)["metrics"] == before
    res = invoke("recommend", trained, "--user", 0)
    assert res.exit_code == 0 and len(_warnings(res.stderr)) == 1, res.output


def test_changed_code_whose_weights_no_longer_fit_is_one_error_line(trained, model_file):
    model_file.write_text(MODEL_SOURCE.replace("bias=False", "bias=True"))
    for args in (["evaluate", trained], ["recommend", trained, "--user", 0]):
        assert_one_line_error(invoke(*args), "saved weights do not fit", "proj.bias", "code changed")


def test_a_model_moved_elsewhere_is_named_with_model(trained, model_file):
    moved = model_file.rename(model_file.with_name("moved.py"))
    res = invoke("evaluate", trained, "--json", "--model", f"{moved}:{CLASS}")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["metrics"] == json.loads((trained / "metrics.json").read_text())["test"]


@pytest.mark.parametrize("where", ["model.pt", RESUME_FILE])
def test_code_planted_in_a_run_folder_is_never_imported(trained, interrupted, where, tmp_path):
    """A shared run folder whose record names a .py file inside the folder: refused in one line, nothing runs."""
    run = trained if where == "model.pt" else interrupted
    marker = tmp_path / "PWNED"
    (run / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom modalrec.models.lightgcn import LightGCN\n\n\n"
        "class X(LightGCN):\n    pass\n"
    )
    state = load_run_file(run / where)
    state["model_spec"] = f"{run.resolve()}/evil.py:X"
    torch.save(state, run / where)
    commands = (
        [["evaluate", run], ["recommend", run, "--user", 0], ["serve", run, "--port", 8765]]
        if where == "model.pt"
        else [["train", "--resume", run], ["train", "--resume", run, "--force"]]
    )
    for args in commands:
        assert_one_line_error(invoke(*args), "inside its own folder", "never imports code from a run folder")
    assert not marker.exists()


def test_a_bad_spec_is_one_line_and_the_users_traceback_is_behind_verbose(model_file, data_dir):
    train = ["train", "--data", data_dir, "--out", "x", "--epochs", 1, "-q", "--model"]
    assert_one_line_error(invoke(*train, "nofile.py:X"), "'nofile.py:X'", "does not exist")
    assert_one_line_error(invoke(*train, "mymodels.py:Nope"), "'mymodels.py:Nope'", "no class 'Nope'")
    (model_file.parent / "broken.py").write_text("import torch\n\nraise RuntimeError('my own bug')\n")
    assert_one_line_error(invoke(*train, "broken.py:X"), "'broken.py:X'", "RuntimeError: my own bug")
    res = invoke("-v", *train, "broken.py:X")
    assert res.exit_code == 1 and "my own bug" in res.stderr
    assert "Traceback" in res.stderr and 'broken.py", line 3' in res.stderr, res.stderr
    assert not (model_file.parent / "x").exists()


# ================================================================ resume
def _reference(model_file: Path, data_dir: Path, out: Path) -> Path:
    run, _ = train_run(f"{model_file}:{CLASS}", data_dir, overrides={**TRAIN, "epochs": 3}, out=out, quiet=True)
    return run


def _assert_same_run(a: Path, b: Path) -> None:
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    assert (ma["best_epoch"], ma["valid"], ma["test"]) == (mb["best_epoch"], mb["valid"], mb["test"])
    wa, wb = (torch.load(p / "model.pt", weights_only=True)["state_dict"] for p in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_file_model_killed_after_an_epoch_resumes_exactly(model_file, data_dir, tmp_path):
    """SIGKILL after epoch 1 in a separate ``modalrec train``, then ``train --resume`` with no model named."""
    run = tmp_path / "killed"
    args = ["train", "--model", f"{model_file}:{CLASS}", "--data", data_dir, "--out", run, "-q", *_sets(TRAIN)]
    killed = cli_subprocess([*args, "--epochs", 3], "KILL:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (run / RESUME_FILE).is_file()
    res = invoke("train", "--resume", run, "-q")
    assert res.exit_code == 0, res.output
    _assert_same_run(_reference(model_file, data_dir, tmp_path / "ref"), run)


@contextmanager
def _sigint_at(spec: str) -> Iterator[None]:
    """Training in this process sends itself a signal at ``spec`` (``tests/signal_runner.py``), with SIGINT
    handled as in a terminal (a test run in the background ignores it)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.MonkeyPatch.context() as m:
            install(spec, m.setattr)
            yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def interrupted(model_file, data_dir, tmp_path) -> Path:
    """A run of the file model stopped by Ctrl-C after epoch 1, with its resume state."""
    run = tmp_path / "stopped"
    with _sigint_at("INT:1"), pytest.raises(Interrupted):
        train_run(f"{model_file}:{CLASS}", data_dir, overrides={**TRAIN, "epochs": 3}, out=run, quiet=True)
    state = torch.load(run / RESUME_FILE, weights_only=False)
    assert state["model_spec"] == f"{model_file.resolve()}:{CLASS}" and state["model_source_hash"]
    return run


def test_resume_refuses_changed_model_code_unless_forced(interrupted, model_file):
    _touch(model_file)
    assert_one_line_error(invoke("train", "--resume", interrupted), "code changed", CLASS, "--force")
    assert (interrupted / RESUME_FILE).is_file()  # the refusal leaves the state alone
    res = invoke("train", "--resume", interrupted, "--force", "-q")
    assert res.exit_code == 0, res.output
    (line,) = _warnings(res.stderr)
    assert "continuing with changed code" in line and "differ from an uninterrupted run" in line, line
    assert (interrupted / "metrics.json").is_file()
    config = yaml.safe_load((interrupted / "config.yaml").read_text())
    assert config["model_source_hash"] == model_source_hash(resolve_model(f"{model_file}:{CLASS}"))


def test_resume_of_a_model_whose_file_is_gone_is_one_line(interrupted, model_file):
    model_file.unlink()
    assert_one_line_error(
        invoke("train", "--resume", interrupted, "--force"), f"{model_file}:{CLASS}", "does not exist"
    )


# ================================================================ reuse in campaigns
def test_benchmark_retrains_a_model_whose_source_changed_and_reuses_it_otherwise(model_file, data_dir):
    args = ["benchmark", "--models", f"mymodels.py:{CLASS}", "--data", data_dir, "--out", "bench", "--epochs", 1]
    assert invoke(*args).exit_code == 0
    again = invoke(*args)
    assert again.exit_code == 0 and "0 runs trained, 1 reused" in again.output, again.output
    _touch(model_file)
    changed = invoke(*args)
    assert changed.exit_code == 0, changed.output
    assert "model source changed since that run: retrained" in changed.output
    assert "1 runs trained, 0 reused" in changed.output
    summary = json.loads((model_file.parent / "bench" / "summary.json").read_text())
    assert [r["model"] for r in summary["rows"]] == [f"{model_file.resolve()}:{CLASS}"]
    assert len(summary["retrained"]) == 1 and "model source changed" in summary["retrained"][0]
    reuse = invoke(*args, "--reuse-only")
    assert reuse.exit_code == 0 and "0 runs trained, 1 reused" in reuse.output, reuse.output


def test_a_built_in_run_without_a_recorded_hash_is_reused(data_dir, tmp_path):
    """A run made before source hashes were recorded: its source is unknown, and it is reused as before."""
    out = tmp_path / "bench"
    run_benchmark(["BPR"], data_dir, [1], out=out, overrides={"epochs": 1}, log=lambda s: None)
    (record_path,) = (out / "results").rglob("seed-1.json")
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({k: v for k, v in record.items() if k != "model_source_hash"}))
    config_path = Path(record["run_dir"]) / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config_path.write_text(yaml.safe_dump({k: v for k, v in config.items() if k != "model_source_hash"}))
    report = run_benchmark(["BPR"], data_dir, [1], out=out, overrides={"epochs": 1}, log=lambda s: None)
    assert (report.trained, report.reused) == (0, 1)


def test_a_plan_row_names_a_file_model(model_file):
    (model_file.parent / "plan.yaml").write_text(f"rows:\n  - model: mymodels.py:{CLASS}\n    label: mine\n")
    (entry,) = load_plan(model_file.parent / "plan.yaml")
    assert (entry.label, entry.model) == ("mine", f"{model_file.resolve()}:{CLASS}")


def test_tune_starts_a_new_study_when_the_model_source_changed(model_file, data_dir):
    pytest.importorskip("optuna", reason="optuna (the 'scale' extra) is needed for tune")
    from modalrec.experiments.tune import run_tune

    lines: list[str] = []
    options = {"out": model_file.parent / "t", "overrides": {"epochs": 1}, "pruner": "none", "log": lines.append}
    first = run_tune(f"mymodels.py:{CLASS}", data_dir, 1, **options)
    assert (first.ran_here, first.finished) == (1, 1)
    _touch(model_file)
    second = run_tune(f"mymodels.py:{CLASS}", data_dir, 1, **options)
    assert (second.ran_here, second.finished) == (1, 1) and second.study_name != first.study_name
    assert any("model source changed since" in ln for ln in lines), lines


# ================================================================ Ray
@pytest.mark.usefixtures("ray_cluster")
def test_trials_of_a_file_model_run_on_ray_workers(model_file, data_dir):
    """Two trials (seeds) of the file model, 1 epoch, as Ray tasks: each worker imports the file the spec names."""
    from modalrec.experiments.executors import RayExecutor

    out = model_file.parent / "bench"
    report = run_benchmark(
        [f"mymodels.py:{CLASS}"],
        data_dir,
        [1, 2],
        out=out,
        overrides={"epochs": 1},
        log=lambda s: None,
        executor=RayExecutor(),
    )
    fails = [json.loads(p.read_text())["failed"] for p in (out / "results").rglob("*.failed.json")]
    assert (report.trained, report.failed) == (2, 0), fails
    records = [json.loads(p.read_text()) for p in sorted((out / "results").rglob("seed-*.json"))]
    assert {r["model_spec"] for r in records} == {f"{model_file.resolve()}:{CLASS}"}
    loaded = load_run(records[0]["run_dir"])
    assert type(loaded.model) is resolve_model(f"{model_file}:{CLASS}")
