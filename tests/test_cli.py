"""The command line: models, data validate/split/synth, train, evaluate, recommend — and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import toy_rows
from typer.testing import CliRunner

from modalrec.cli import app
from modalrec.data.dataset import load_dataset

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    err = result.stderr.strip()
    assert err.startswith("error:") and "\n" not in err, err
    for f in fragments:
        assert f in err, (f, err)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "synth"
    res = invoke("data", "synth", out, "--users", 80, "--items", 60, "--modalities", "image:16,text:8", "--seed", 5)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def lightgcn_run(cli_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "lgcn"
    res = invoke(
        "train",
        "--model",
        "LightGCN",
        "--data",
        cli_data,
        "--epochs",
        3,
        "--quiet",
        "--out",
        run,
        "--set",
        "train_batch_size=256",
        "--set",
        "learning_rate=0.01",
    )
    assert res.exit_code == 0, res.output
    assert "run directory" in res.stdout and "recall" in res.stdout
    return run


# ================================================================ models
def test_models_lists_the_registered_models():
    res = invoke("models")
    assert res.exit_code == 0, res.output
    for name in ("BPR", "LightGCN", "NGCF", "MARIO"):
        assert name in res.stdout
    assert "ID only" in res.stdout


def test_module_entry_point_exit_codes(tmp_path):
    env = {**os.environ, **ENV}
    ok = subprocess.run(
        [sys.executable, "-m", "modalrec.cli", "models"], capture_output=True, text=True, env=env, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
    assert "LightGCN" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "modalrec.cli", "data", "validate", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr and "missing" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_the_command_list_and_a_light_import():
    """``python -m modalrec --help`` lists the commands in their order (the package registers them by hand);
    importing the CLI loads no heavy library (each command imports what it calls when it runs)."""
    env = {**os.environ, **ENV}
    res = subprocess.run([sys.executable, "-m", "modalrec", "--help"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    names = (
        "models check-model train evaluate index recommend serve demo benchmark ablate sweep tune data analyze".split()
    )
    listed = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("│ ") and line.split()[1] in names]
    assert listed == names
    heavy = "import sys, modalrec.cli; print([m for m in ('torch', 'numpy', 'optuna') if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", heavy], capture_output=True, text=True, env=env)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


# ================================================================ data
def test_synth_then_validate_prints_the_summary(cli_data):
    res = invoke("data", "validate", cli_data)
    assert res.exit_code == 0, res.output
    out = res.stdout
    ds = load_dataset(cli_data)
    s = ds.summary()
    assert "users 80" in out and "items 60" in out and f"interactions {s['interactions']:,}" in out
    for split, n in s["per_split"].items():
        assert f"{split} {n:,}" in out
    assert "density" in out and f"{100 * s['density']:.4f}%" in out
    assert "modality image: dimension 16" in out and "modality text: dimension 8" in out
    js = invoke("data", "validate", cli_data, "--json", "--modalities", "text")
    assert js.exit_code == 0
    parsed = json.loads(js.stdout)
    assert parsed["modalities"] == {"text": 8} and parsed["users"] == 80


def test_synth_refuses_existing_and_bad_arguments(cli_data, tmp_path):
    before = tree_bytes(cli_data)
    assert_one_line_error(invoke("data", "synth", cli_data), "already exists")
    assert tree_bytes(cli_data) == before
    assert_one_line_error(invoke("data", "synth", tmp_path / "x", "--modalities", "image:0"), "name:dim")
    assert not (tmp_path / "x").exists()
    bad = invoke("data", "synth", tmp_path / "x", "--interactions-per-user", "2")
    assert_one_line_error(bad, "--interactions-per-user")
    assert not (tmp_path / "x").exists()


def test_synth_interactions_per_user_sets_the_mean(tmp_path):
    sizes = {}
    for mean in (6, 20):
        out = tmp_path / f"m{mean}"
        res = invoke("data", "synth", out, "--users", "300", "--items", "400", "--interactions-per-user", str(mean))
        assert res.exit_code == 0, res.output
        sizes[mean] = load_dataset(out).summary()["interactions"] / 300
    assert 5 <= sizes[6] < 8 and 16 < sizes[20] < 24, sizes


@pytest.mark.parametrize(
    ("breakage", "fragments"),
    [
        ("bad_id", ("toy.inter:4", "userID")),
        ("nan_feature", ("image_feat.npy", "NaN")),
        ("no_inter", ("no *.inter",)),
        ("unknown_modality", ("audio",)),
    ],
)
def test_validate_broken_folder_is_a_one_line_error(make_folder, breakage, fragments):
    rows = toy_rows(4, 6)
    feats = {"image": np.ones((6, 2), dtype=np.float32)}
    extra: list[str] = []
    if breakage == "bad_id":
        rows[2] = ("u2", *rows[2][1:])
    if breakage == "nan_feature":
        feats["image"][1, 1] = np.nan
    folder = make_folder(rows, features=feats)
    if breakage == "no_inter":
        (folder / "toy.inter").unlink()
    if breakage == "unknown_modality":
        extra = ["--modalities", "image,audio"]
    assert_one_line_error(invoke("data", "validate", folder, *extra), *fragments)


def test_validate_prints_warnings(make_folder):
    rows = toy_rows(4, 6)
    res = invoke("data", "validate", make_folder(rows + rows[:2]))
    assert res.exit_code == 0
    assert "2 repeated" in res.stderr
    assert "no modality features" in res.stdout


def test_data_split(cli_data, tmp_path):
    before = tree_bytes(cli_data)
    out = tmp_path / "resplit"
    res = invoke("data", "split", cli_data, "--protocol", "mmrec", "--seed", 3, "--out", out)
    assert res.exit_code == 0, res.output
    assert "wrote" in res.stdout and "train" in res.stdout
    assert load_dataset(out).n_users == 80
    assert tree_bytes(cli_data) == before
    again = tree_bytes(out)
    assert_one_line_error(invoke("data", "split", cli_data, "--out", out), "already exists")
    assert tree_bytes(out) == again
    assert_one_line_error(
        invoke("data", "split", cli_data, "--protocol", "nope", "--out", tmp_path / "n"), "unknown split protocol"
    )


# ================================================================ train / evaluate / recommend
def test_train_writes_a_complete_run_directory(lightgcn_run):
    names = {p.name for p in lightgcn_run.iterdir()}
    assert {"config.yaml", "metrics.json", "test_per_user.npz", "model.pt", "train.log"} <= names
    metrics = json.loads((lightgcn_run / "metrics.json").read_text())
    assert {"best_epoch", "valid", "test", "history", "timings"} <= set(metrics)
    assert {"seconds_per_epoch", "ranking_seconds", "peak_memory_mb"} <= set(metrics["timings"])
    assert len(metrics["history"]) == 3 and 0 <= metrics["best_epoch"] < 3
    assert "recall@20" in metrics["test"] and "ndcg@10" in metrics["valid"]
    cfg = yaml.safe_load((lightgcn_run / "config.yaml").read_text())
    assert cfg["model"] == "LightGCN" and cfg["config"]["epochs"] == 3 and cfg["config"]["train_batch_size"] == 256
    with np.load(lightgcn_run / "test_per_user.npz") as z:
        assert z["recall@20"].shape == z["users"].shape
        assert z["recall@20"].mean() == pytest.approx(metrics["test"]["recall@20"], abs=1e-6)
    assert "LightGCN" in (lightgcn_run / "train.log").read_text()


def test_second_train_into_same_out_fails_and_leaves_the_run(lightgcn_run, cli_data):
    before = tree_bytes(lightgcn_run)
    res = invoke("train", "--model", "BPR", "--data", cli_data, "--epochs", 1, "--quiet", "--out", lightgcn_run)
    assert_one_line_error(res, "already exists")
    assert tree_bytes(lightgcn_run) == before


def test_evaluate_reproduces_the_test_metrics(lightgcn_run):
    res = invoke("evaluate", lightgcn_run, "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    saved = json.loads((lightgcn_run / "metrics.json").read_text())["test"]
    assert got["split"] == "test" and set(got["metrics"]) == set(saved)
    for k, v in saved.items():
        assert got["metrics"][k] == pytest.approx(v, abs=1e-6), k
    table = invoke("evaluate", lightgcn_run, "--split", "valid", "--topk", "5,50")
    assert table.exit_code == 0 and "@50" in table.stdout
    assert_one_line_error(invoke("evaluate", lightgcn_run, "--split", "train"), "--split")


def test_recommend_excludes_training_items(lightgcn_run, cli_data):
    res = invoke("recommend", lightgcn_run, "--user", 3, "-k", 5)
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["user"] == 3 and rec["k"] == 5 and len(rec["items"]) == 5
    items = [e["item"] for e in rec["items"]]
    ds = load_dataset(cli_data)
    train_items = set(ds.items[(ds.users == 3) & (ds.labels == 0)].tolist())
    assert train_items and not set(items) & train_items
    assert len(set(items)) == 5
    scores = [e["score"] for e in rec["items"]]
    assert scores == sorted(scores, reverse=True)
    assert [e["rank"] for e in rec["items"]] == [1, 2, 3, 4, 5]
    assert all("title" in e for e in rec["items"])


def test_recommend_explain_on_lightgcn_says_there_is_none(lightgcn_run):
    res = invoke("recommend", lightgcn_run, "--user", 3, "-k", 3, "--explain")
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["explanation"]["kind"] is None
    assert "no per-modality explanation" in rec["explanation"]["note"]
    assert all("weights" not in e for e in rec["items"])


def test_recommend_errors(lightgcn_run, tmp_path):
    assert_one_line_error(invoke("recommend", lightgcn_run, "--user", 10_000), "out of range")
    assert_one_line_error(invoke("recommend", tmp_path / "norun", "--user", 1), "no such run directory")


def test_train_unknown_model_and_misspelt_key(cli_data, tmp_path):
    out = tmp_path / "r1"
    assert_one_line_error(
        invoke("train", "--model", "NoSuchModel", "--data", cli_data, "--out", out),
        "unknown model 'NoSuchModel'",
        "LightGCN",
    )
    assert not out.exists()
    res = invoke("train", "--model", "BPR", "--data", cli_data, "--out", out, "--set", "learning_rat=0.1")
    assert_one_line_error(res, "learning_rat", "did you mean 'learning_rate'")
    assert not out.exists()  # a bad key leaves nothing behind
    res = invoke("train", "--model", "BPR", "--data", cli_data, "--out", out, "--set", "epochs=many")
    assert_one_line_error(res, "epochs")
    assert_one_line_error(invoke("train", "--model", "BPR", "--data", tmp_path / "nodata"), "not a directory")


def test_train_mario_and_explain(cli_data, tmp_path):
    from modalrec.models import MODEL_REGISTRY

    if "mario" not in MODEL_REGISTRY:
        pytest.skip("MARIO is not registered in this checkout")
    run = tmp_path / "mario"
    res = invoke("train", "--model", "MARIO", "--data", cli_data, "--epochs", 2, "--quiet", "--out", run)
    assert res.exit_code == 0, res.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["history"]) == 2
    res = invoke("recommend", run, "--user", 3, "-k", 4, "--explain")
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    parts = rec["explanation"]["parts"]
    # the content modalities, plus MARIO's interaction (ID) modality
    assert {"image", "text"} <= set(parts) and set(parts) <= {"image", "text", "interaction"}
    assert rec["explanation"]["kind"] == "attention"
    assert len(rec["items"]) == 4
    for e in rec["items"]:
        w = e["weights"]
        assert set(w) == set(parts)
        assert all(0.0 <= x <= 1.0 for x in w.values())
        assert sum(w.values()) == pytest.approx(1.0, abs=2e-4)  # values are rounded to 4 decimals
