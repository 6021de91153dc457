"""Issue 15: what a new user hits in the first hour (validation, leftovers, silent answers, claims)."""

from __future__ import annotations

import functools
import json
import re
import socket

import pytest
import yaml
from conftest import TEST_DATA_VARIABLE, assert_one_line_error, require_shared, toy_rows
from typer.testing import CliRunner

from modalrec.cli import app
from modalrec.config import load_defaults, resolve_config, topk_list
from modalrec.data.dataset import load_dataset
from modalrec.errors import ConfigError, ModalrecError
from modalrec.models import list_models
from modalrec.run_load import load_run, recommend
from modalrec.runs import train_run

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
TINY = {"epochs": 1, "train_batch_size": 256}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


@pytest.fixture(scope="module")
def bpr_run(syn_dir, tmp_path_factory):
    run, _ = train_run("BPR", syn_dir, overrides=TINY, out=tmp_path_factory.mktemp("i15") / "bpr", quiet=True)
    return run


@pytest.fixture
def cold_user_folder(make_folder):
    """Toy data (users 0-3 trained) plus user 4, who has only valid/test rows."""
    rows = toy_rows() + [(4, 0, 1, 900, 1), (4, 1, 1, 901, 2)]
    return make_folder(rows)


# ---------------------------------------------------------------- item 1: K lists
def test_topk_list_checks_and_caps():
    notes: list[str] = []
    assert topk_list("20, 10,5000", "--topk", n_items=1585, note=notes.append) == [10, 20, 1585]
    assert notes == ["--topk: 5000 exceeds the 1,585 items; using 1585 instead"]
    with pytest.raises(ConfigError, match=r"--topk: 'ten' is not an integer"):
        topk_list("ten", "--topk")
    with pytest.raises(ConfigError, match=r"--topk: 0 is not a positive integer"):
        topk_list("0,20", "--topk")
    with pytest.raises(ConfigError, match=r"topk: -5 is not a positive integer"):
        resolve_config("bpr", overrides={"topk": [-5, 20]})
    with pytest.raises(ConfigError, match=r"topk: 'ten' is not an integer"):
        resolve_config("bpr", overrides={"topk": ["ten"]})


def test_evaluate_topk_errors_and_cap(bpr_run):
    assert_one_line_error(invoke("evaluate", bpr_run, "--topk", "ten"), "--topk", "'ten'")
    assert_one_line_error(invoke("evaluate", bpr_run, "--topk", "0,20"), "--topk: 0 is not a positive integer")
    res = invoke("evaluate", bpr_run, "--topk", "10,5000", "--json")
    assert res.exit_code == 0, res.output
    assert "5000 exceeds the 100 items; using 100" in res.stderr
    metrics = yaml.safe_load(res.stdout)["metrics"]
    assert "recall@100" in metrics and "recall@5000" not in metrics
    assert metrics["recall@100"] == pytest.approx(1.0)  # every test item is in a full-length list


def test_train_says_when_topk_exceeds_the_number_of_items(syn_dir, tmp_path, capsys):
    # kept as asked (valid_metric may name it: tiny data with the default recall@20), but said once
    run, result = train_run("BPR", syn_dir, overrides={**TINY, "topk": [20, 500]}, out=tmp_path / "r", quiet=True)
    assert "recall@500" in result.test.metrics
    assert "topk: 500 exceeds the 100 items" in (run / "train.log").read_text()
    assert "topk: 500 exceeds" in capsys.readouterr().err  # shown although quiet


def test_serve_caps_k_with_a_note(bpr_run):
    from modalrec.serve import Engine

    engine = Engine.from_run_dir(bpr_run)
    answer = engine.recommend(0, k=500)
    assert "exceeds the 100 items" in answer["note"]
    assert len(answer["items"]) <= 100
    assert "note" not in engine.recommend(0, k=5)


def test_recommend_caps_k_with_a_note_like_serve(bpr_run):
    # one implementation: the library and the command line answer a too-long list as the server does
    from modalrec.serve import Engine

    served = Engine.from_run_dir(bpr_run).recommend(0, k=500)
    library = recommend(load_run(bpr_run), 0, k=500)
    assert library["note"] == served["note"] and "exceeds the 100 items" in library["note"]
    assert {e["item"] for e in library["items"]} == {e["item"] for e in served["items"]}  # every rankable item
    res = invoke("recommend", bpr_run, "--user", 0, "-k", 500)
    assert res.exit_code == 0, res.output
    answer = json.loads(res.stdout)
    assert answer["k"] == 500 and "exceeds the 100 items" in answer["note"] and len(answer["items"]) <= 100
    assert_one_line_error(invoke("recommend", bpr_run, "--user", 0, "-k", 0), "k must be at least 1")


# ---------------------------------------------------------------- item 2: nothing left behind
def test_model_setting_rejected_before_the_folder_is_claimed(syn_dir, tmp_path):
    out = tmp_path / "run"
    res = invoke("train", "--model", "MARIO", "--data", syn_dir, "--set", "fusion=attn", "--out", out, "-q")
    assert_one_line_error(res, "fusion", "attn")
    assert not out.exists()
    res = invoke("train", "--model", "BPR", "--data", syn_dir, "--epochs", 1, "--out", out, "-q")
    assert res.exit_code == 0, res.output


def test_failure_after_claiming_removes_the_folder(syn_dir, tmp_path, monkeypatch):
    import modalrec.runs

    def refuse(*_args, **_kwargs):
        raise ModalrecError("cannot sample negatives")

    monkeypatch.setattr(modalrec.runs, "fit", refuse)
    with pytest.raises(ModalrecError, match="cannot sample"):
        train_run("BPR", syn_dir, overrides=TINY, out=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- item 3: users without training
def test_validate_counts_users_without_training_interactions(cold_user_folder):
    summary = load_dataset(cold_user_folder).summary()
    assert summary["users"] == 5 and summary["users_without_training_interactions"] == 1
    res = invoke("data", "validate", cold_user_folder)
    assert res.exit_code == 0, res.output
    assert "users 4 (+1 without training interactions)" in res.stdout
    assert "users without a training interaction: 1" in res.stdout


def test_recommend_and_serve_mark_a_popularity_fallback(cold_user_folder, tmp_path):
    from modalrec.serve import Engine

    run_dir, _ = train_run("BPR", cold_user_folder, overrides={"epochs": 1}, out=tmp_path / "run", quiet=True)
    run = load_run(run_dir)
    degree = run.dataset.train_matrix.sum(axis=0).A1
    cold = recommend(run, 4, k=3, explain=True)
    assert (
        cold["fallback"]["method"] == "popularity"
        and "user 4 has no training interaction" in (cold["fallback"]["reason"])
    )
    assert [e["score"] for e in cold["items"]] == sorted(degree, reverse=True)[:3]
    assert cold["explanation"]["kind"] is None
    assert "fallback" not in recommend(run, 0, k=3)
    served = Engine.from_run_dir(run_dir).recommend(4, k=3)
    assert served["fallback"]["method"] == "popularity"
    assert [e["item"] for e in served["items"]] == [e["item"] for e in cold["items"]]
    res = invoke("recommend", run_dir, "--user", 4, "-k", 3)
    assert res.exit_code == 0 and "no training interaction" in res.stderr and '"fallback"' in res.stdout


# ---------------------------------------------------------------- item 4: brackets survive Rich
def test_brackets_in_messages_and_names_are_printed(tmp_path, make_folder):
    res = invoke("data", "validate", tmp_path / "data[prepare]")
    assert_one_line_error(res, "data[prepare]")
    folder = make_folder(toy_rows(), name="toy[v2]")
    res = invoke("data", "validate", folder)
    assert res.exit_code == 0 and "toy[v2] — OK" in res.stdout


def test_install_hint_keeps_its_extra(tmp_path, monkeypatch):
    import modalrec.data.encode as encode

    def missing(*_args, **_kwargs):
        raise ModalrecError("text features need extra packages: run `pip install 'modalrec[prepare]'`")

    monkeypatch.setattr(encode, "load_text_encoder", missing)
    reviews = tmp_path / "r.csv"
    reviews.write_text("user,item\n1,2\n")
    meta = tmp_path / "m.csv"
    meta.write_text("item,title\n2,x\n")
    res = invoke("data", "prepare", "--reviews", reviews, "--meta", meta, "--out", tmp_path / "o")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.stderr.strip().splitlines()[-1].endswith("run `pip install 'modalrec[prepare]'`")


# ---------------------------------------------------------------- item 5: where the real data is
def test_require_shared_names_the_folder_and_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(TEST_DATA_VARIABLE, str(tmp_path))
    with pytest.raises(pytest.skip.Exception) as skip:
        require_shared("amazon_nowhere")
    message = str(skip.value)
    assert str(tmp_path / "amazon_nowhere") in message and TEST_DATA_VARIABLE in message
    (tmp_path / "amazon_here").mkdir()
    assert require_shared("amazon_here") == tmp_path / "amazon_here"


# ---------------------------------------------------------------- item 8: serve, ranges, start line, quiet
def test_serve_on_a_busy_port_fails_before_announcing(bpr_run, capsys):
    from modalrec.serve import serve

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(ModalrecError, match=rf"cannot listen on 127\.0\.0\.1:{port}: .*choose another --port"):
            serve(bpr_run, "127.0.0.1", port)
    assert "serving" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("model", "key", "value", "expected"),
    [
        ("LightGCN", "n_layers", -1, "n_layers = -1 must be >= 0"),
        ("BPR", "embedding_size", 0, "embedding_size = 0 must be a positive integer"),
        ("BPR", "train_batch_size", -8, "train_batch_size = -8 must be a positive integer"),
        ("BPR", "epochs", 0, "epochs = 0 must be a positive integer"),
        ("BPR", "learning_rate", 0.0, "learning_rate = 0.0 must be > 0"),
        ("MARIO", "knn_k", 0, "knn_k = 0 must be a positive integer"),
        ("MARIO", "ngcf_mess_dropout", 1.0, "ngcf_mess_dropout = 1.0 must be in [0, 1)"),
        ("MARIO", "lambda_coeff", 1.5, "lambda_coeff = 1.5 must be in [0, 1]"),
        ("BPR", "reg_weight", -0.1, "reg_weight = -0.1 must be >= 0"),
        ("BPR", "learning_rate_scheduler", [0.9, 0], "learning_rate_scheduler = [0.9, 0] must be [gamma, T]"),
    ],
)
def test_numeric_settings_are_range_checked(model, key, value, expected):
    from modalrec.models import get_model_class

    with pytest.raises(ConfigError, match="override: " + re.escape(expected)):
        resolve_config(get_model_class(model), overrides={key: value})


def test_every_shipped_default_preset_and_grid_value_is_in_range():
    for cls in list_models():
        _, presets, space = load_defaults(cls)
        resolve_config(cls)
        for name in presets:
            resolve_config(cls, preset=name)
        for key, values in space.items():
            for v in values:
                resolve_config(cls, overrides={key: v})


def test_start_line_names_the_modalities_the_model_uses(syn_dir, tmp_path):
    res = invoke("train", "--model", "BPR", "--data", syn_dir, "--epochs", 1, "--out", tmp_path / "b")
    assert res.exit_code == 0, res.output
    assert "modalities none (ID only)" in res.stdout and "image" not in res.stdout.split("parameters")[0]
    mario, _ = train_run(
        "MARIO", syn_dir, overrides={**TINY, "modalities": ["text", "interaction"]}, out=tmp_path / "m", quiet=True
    )
    assert "modalities text," in (mario / "train.log").read_text()


def test_quiet_hides_progress_not_warnings(make_folder, tmp_path):
    rows = toy_rows() + [toy_rows()[0]]  # one repeated (user, item) pair
    res = invoke("train", "--model", "BPR", "--data", make_folder(rows), "--epochs", 1, "-q", "--out", tmp_path / "r")
    assert res.exit_code == 0, res.output
    assert "repeated (user, item) pairs" in res.stderr
    assert "epoch" not in res.stdout.split("test metrics")[0]


# ---------------------------------------------------------------- item 9: the demo in a log file
def test_demo_output_reads_well_in_a_log(tmp_path, monkeypatch, capsys):
    import modalrec.demo as demo
    from modalrec.data.synth import write_synthetic_dataset

    small = functools.partial(write_synthetic_dataset, n_users=120, n_items=90, modalities={"image": 16, "text": 8})
    monkeypatch.setattr(demo, "write_synthetic_dataset", small)
    monkeypatch.setattr(demo, "DEMO_OVERRIDES", {m: {"epochs": 2, "train_batch_size": 512} for m in demo.DEMO_MODELS})
    out = demo.run_demo(tmp_path / "demo", cache_dir=False)
    text = capsys.readouterr().out
    rows = {
        line.split()[1]: line
        for line in text.splitlines()
        if line.startswith("│ ") and line.split()[1] in out["results"]
    }
    assert set(rows) == set(demo.DEMO_MODELS)
    for line in rows.values():  # one line per model, with all six values
        assert sum(1 for cell in line.split("│") if cell.strip().rstrip("*").replace(".", "").isdigit()) == 6
    assert "* = best" in text and text.count("*") >= 6 and "[bold]" not in text
    assert "attention weight of each modality" in text and "each row sums to 1" in text


# ---------------------------------------------------------------- item 11: presets said and recorded
@pytest.fixture
def baby_folder(tmp_path):
    from conftest import write_folder

    return write_folder(tmp_path / "baby", toy_rows(), name="baby")


def _train_lightgcn(folder, out, *extra):
    return invoke("train", "--model", "LightGCN", "--data", folder, "--epochs", 1, *extra, "--out", out)


def test_a_preset_named_like_the_dataset_is_only_mentioned(baby_folder, tmp_path):
    res = invoke("train", "--model", "LightGCN", "--data", baby_folder, "--epochs", 1, "--out", tmp_path / "a")
    assert res.exit_code == 0, res.output
    assert "preset: none (model defaults and your overrides); this model has a preset 'baby'" in res.stdout
    assert "name it with --preset baby to use it" in res.stdout and "n_layers=3" not in res.stdout
    saved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    defaults, _, _ = load_defaults("lightgcn")
    assert saved["preset"] == {"name": None, "overrides": {}}
    assert saved["config"]["n_layers"] == defaults["n_layers"] != 3


def test_a_named_preset_is_printed_and_recorded(baby_folder, tmp_path):
    res = _train_lightgcn(baby_folder, tmp_path / "b", "--preset", "baby")
    assert res.exit_code == 0, res.output
    assert "preset 'baby' (asked for) sets" in res.stdout and "n_layers=3" in res.stdout
    saved = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert saved["preset"]["name"] == "baby" and set(saved["preset"]) == {"name", "overrides"}
    assert saved["preset"]["overrides"]["n_layers"] == 3 and saved["config"]["n_layers"] == 3


def test_preset_none_applies_none(baby_folder, tmp_path):
    res = _train_lightgcn(baby_folder, tmp_path / "n", "--preset", "none")
    assert res.exit_code == 0, res.output
    assert "preset: none" in res.stdout and "this model has a preset" not in res.stdout
    saved = yaml.safe_load((tmp_path / "n" / "config.yaml").read_text())
    defaults, _, _ = load_defaults("lightgcn")
    assert saved["preset"] == {"name": None, "overrides": {}}
    assert saved["config"]["n_layers"] == defaults["n_layers"]


def test_benchmark_logs_the_preset_of_each_model(baby_folder, tmp_path):
    from modalrec.experiments.benchmark import run_benchmark

    lines: list[str] = []
    run_benchmark(
        ["LightGCN", "BPR"], baby_folder, [1], out=tmp_path / "rep", overrides={"epochs": 1}, log=lines.append
    )
    hint = "preset: none (model defaults and your overrides); this model has a preset 'baby'"
    assert any(line.startswith(f"LightGCN: {hint}") for line in lines)
    assert any(line.startswith(f"BPR: {hint}") for line in lines)
