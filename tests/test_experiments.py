"""Experiments: benchmark tables and resumability, validation-only selection, t-test, ablations, sweeps."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from modalrec.cli import app
from modalrec.config import load_defaults
from modalrec.errors import ModalrecError
from modalrec.evaluation import EvalResult
from modalrec.experiments import trials as trials_mod
from modalrec.experiments.ablate import mario_variants, meaim_variants
from modalrec.experiments.benchmark import run_benchmark
from modalrec.experiments.significance import paired_ttest
from modalrec.experiments.sweep import parse_param
from modalrec.experiments.tables import ResultTable
from modalrec.io import write_npz
from modalrec.reporting.writer import ReportWriter
from modalrec.training import TrainResult

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
METRICS = ("recall@10", "ndcg@10", "precision@10", "recall@20", "ndcg@20", "precision@20")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def fake_trainer(score):
    """A stand-in for train_run: ``score(model, overrides) -> (valid, test)`` sets every metric."""
    calls = []

    def train_run(model_name, data_dir, modalities=None, overrides=None, preset=None, out=None, **kw):
        overrides = dict(overrides or {})
        calls.append((model_name, overrides))
        valid, test = score(model_name, overrides)
        run_dir = Path(out)
        run_dir.mkdir(parents=True)
        users = np.arange(40)
        rng = np.random.default_rng(int(overrides.get("seed", 0)) + len(model_name))
        results = []
        for split, value in (("valid", valid), ("test", test)):
            per_user = {m: np.clip(value + 0.05 * rng.standard_normal(users.size), 0, 1) for m in METRICS}
            write_npz(run_dir / f"{split}_per_user.npz", users=users, **per_user)
            results.append(EvalResult(split, {m: float(v.mean()) for m, v in per_user.items()}, per_user, users))
        return run_dir, TrainResult(0, results[0], results[1])

    return train_run, calls


# ---------------------------------------------------------------------- significance
def test_paired_ttest_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.random(200)
    b = a + 0.02 + 0.1 * rng.standard_normal(200)
    for x, y in ((a, b), (b, a), (np.array([0.1, 0.4, 0.35, 0.8]), np.array([0.0, 0.3, 0.2, 0.9]))):
        ours, ref = paired_ttest(x, y), stats.ttest_rel(x, y)
        assert ours.statistic == pytest.approx(ref.statistic, rel=1e-10)
        assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-8)
        assert ours.df == x.size - 1
    same = paired_ttest(a, a)
    assert math.isnan(same.statistic) and math.isnan(same.pvalue)


# ---------------------------------------------------------------------- tables
def test_table_formats_mark_best_second_and_improvement():
    mean = {
        "A": {"recall@20": 0.30, "ndcg@20": 0.10},
        "B": {"recall@20": 0.20, "ndcg@20": 0.12},
        "C": {"recall@20": 0.25, "ndcg@20": 0.05},
    }
    std = {r: {m: 0.01 for m in v} for r, v in mean.items()}
    t = ResultTable(["A", "B", "C"], ["recall@20", "ndcg@20"], mean, std, {"A": 3, "B": 3, "C": 3}, target="A")
    md = t.to_markdown()
    assert "| A | **0.3000 ± 0.0100** | <u>0.1000 ± 0.0100</u> |" in md
    assert "| B | 0.2000 ± 0.0100 | **0.1200 ± 0.0100** |" in md
    assert "| C | <u>0.2500 ± 0.0100</u> |" in md
    assert "| Improv. % | +20.00% | -16.67% |" in md
    tex = t.to_latex()
    assert "\\textbf{0.3000 $\\pm$ 0.0100}" in tex and "\\underline{0.2500 $\\pm$ 0.0100}" in tex
    assert "+20.00\\%" in tex and "\\toprule" in tex
    rows = list(csv.reader(io.StringIO(t.to_csv())))
    assert rows[0][:3] == ["model", "recall@20", "recall@20_std"]
    assert rows[1][:2] == ["A", "0.300000"] and rows[-1][:2] == ["Improv. %", "20.00"]


def test_report_writer_never_overwrites_a_user_file(tmp_path):
    (tmp_path / "table.md").write_text("my notes")
    w = ReportWriter(tmp_path)
    p1 = w.write_text("table.md", "generated 1")
    assert p1.name == "table-2.md" and (tmp_path / "table.md").read_text() == "my notes"
    p2 = ReportWriter(tmp_path).write_text("table.md", "generated 2")  # ours: replaced in place
    assert p2 == p1 and p2.read_text() == "generated 2"
    p2.write_text("edited by the user")
    p3 = ReportWriter(tmp_path).write_text("table.md", "generated 3")
    assert p3.name == "table-3.md" and p2.read_text() == "edited by the user"


def test_report_writers_of_two_processes_share_the_folder(tmp_path):
    """Two benchmarks writing into one report folder take each other's files for generated ones."""
    a, b = ReportWriter(tmp_path), ReportWriter(tmp_path)
    assert a.write_text("summary.json", "{1}").name == "summary.json"
    assert b.write_text("summary.json", "{2}").name == "summary.json"
    assert a.write_text("summary.json", "{3}").name == "summary.json"
    (tmp_path / "summary.json").write_text("edited by the user")
    assert b.write_text("summary.json", "{4}").name == "summary-2.json"


def test_a_stale_writer_does_not_make_another_writers_file_look_foreign(tmp_path):
    """Writer a's memory of table.md predates b's rewrite; a's next write of another file must not
    record that stale entry, or a third write of table.md would be diverted to table-2.md."""
    a, b = ReportWriter(tmp_path), ReportWriter(tmp_path)
    a.write_text("table.md", "a1")
    a.write_text("summary.json", "a1")
    b.write_text("table.md", "b1")  # b rewrites a generated file: allowed
    a.write_text("summary.json", "a2")  # a records its manifest again
    assert a.write_text("table.md", "a3").name == "table.md"
    assert (tmp_path / "table.md").read_text() == "a3"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["summary.json", "table.md"]


# ---------------------------------------------------------------------- benchmark
def test_benchmark_two_models_writes_tables_and_resumes(syn_dir, tmp_path, monkeypatch):
    out = tmp_path / "bench"
    res = invoke(
        "benchmark", "--models", "BPR,LightGCN", "--data", syn_dir, "--seeds", "1,2", "--epochs", 2, "--out", out
    )
    assert res.exit_code == 0, res.output
    for name in ("table.md", "table.csv", "table.tex", "significance.md", "significance.csv", "summary.json"):
        assert (out / name).is_file(), name
        assert str(out / name) in res.output  # listed at the end
    md = (out / "table.md").read_text()
    assert "| BPR |" in md and "| LightGCN |" in md and "Improv. %" in md and " ± " in md
    assert "4 runs trained, 0 reused" in res.output
    assert len(list((out / "results").rglob("seed-*.json"))) == 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target"] in ("BPR", "LightGCN")
    assert {r["label"] for r in summary["rows"]} == {"BPR", "LightGCN"}

    def boom(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(trials_mod, "train_run", boom)
    report = run_benchmark(["BPR", "LightGCN"], syn_dir, [1, 2], out=out, overrides={"epochs": 2}, log=lambda s: None)
    assert (report.trained, report.reused) == (0, 4)
    assert (out / "table.md").read_text() == md


def test_grid_selects_on_validation_not_test(syn_dir, tmp_path, monkeypatch):
    # valid prefers small reg_weight, test prefers large: the choice must follow valid
    fake, calls = fake_trainer(lambda m, o: (0.9 - 0.1 * o["reg_weight"], 0.1 + 0.1 * o["reg_weight"]))
    monkeypatch.setattr(trials_mod, "train_run", fake)
    report = run_benchmark(["BPR"], syn_dir, [7, 8], grid=True, out=tmp_path / "g", log=lambda s: None)
    (row,) = report.results
    assert row.overrides["reg_weight"] == 0.00001
    best_test = max(row.grid_records, key=lambda r: r["test"]["recall@20"])["grid_setting"]["reg_weight"]
    assert best_test == 2.0  # the setting with the better test metric exists and was not chosen
    space = load_defaults("bpr")[2]
    assert len(calls) == math.prod(len(v) for v in space.values()) + 1  # whole grid on seed 7, chosen on seed 8
    grid_csv = (tmp_path / "g" / "grid.csv").read_text().splitlines()
    header = grid_csv[0].split(",")
    selected = [line.split(",") for line in grid_csv[1:] if line.split(",")[header.index("selected")] == "1"]
    assert len(selected) == 1 and selected[0][header.index("reg_weight")] == "1e-05"


def test_benchmark_rejects_unknown_model_before_training(syn_dir, tmp_path):
    res = invoke("benchmark", "--models", "BPR,Nope", "--data", syn_dir, "--out", tmp_path / "x")
    assert res.exit_code == 1 and "unknown model 'Nope'" in res.stderr
    assert not (tmp_path / "x").exists()


def test_benchmark_modalities_option(syn_dir, tmp_path, monkeypatch):
    res = invoke("benchmark", "--models", "BPR", "--data", syn_dir, "--modalities", "audio", "--out", tmp_path / "m")
    assert res.exit_code == 1 and "modality 'audio' not found" in res.stderr
    assert not (tmp_path / "m").exists()
    seen = []

    def fake(model, data, modalities, overrides, **kw):
        seen.append(modalities)
        raise RuntimeError("stop after the first run")

    monkeypatch.setattr(trials_mod, "train_run", fake)
    # a trial that raises is recorded as failed with its reason; the report still gets written and marks the row
    report = run_benchmark(["MARIO"], syn_dir, [1], out=tmp_path / "m2", modalities=["image"], log=lambda s: None)
    assert seen == [["image"]]
    (row,) = report.results
    assert not row.records and row.failures[0]["failed"] == "RuntimeError: stop after the first run"
    assert "| MARIO (failed: 1 trial: seed 1 [" in (tmp_path / "m2" / "table.md").read_text()
    assert len(list((tmp_path / "m2" / "results").rglob("seed-1.failed.json"))) == 1


# ---------------------------------------------------------------------- ablations
def test_ablation_variants(syn_dataset):
    labels = [lab for lab, _ in mario_variants(syn_dataset, {})]
    assert labels == [
        "full",
        "w/o image",
        "w/o text",
        "fusion mean",
        "fusion max",
        "fusion fc",
        "mu = 0",
        "backbone bprmf",
        "backbone ngcf",
    ]
    assert dict(mario_variants(syn_dataset, {}))["w/o image"] == {"modalities": ["text", "interaction"]}
    meaim = dict(meaim_variants(syn_dataset, {}))
    assert meaim["-CK (no CL, no KL)"] == {"beta_cl": 0.0, "lambda_kl": 0.0}
    assert meaim["CL only"] == {"lambda_kl": 0.0} and meaim["KL only"] == {"beta_cl": 0.0}
    assert meaim["w/o kNN"] == {"use_knn": False}


def test_ablate_command_one_table(syn_dir, tmp_path, monkeypatch):
    fake, calls = fake_trainer(lambda m, o: (0.5, 0.3 if o.get("fusion") == "fc" else 0.5))
    monkeypatch.setattr(trials_mod, "train_run", fake)
    res = invoke("ablate", "MeAIM", "--data", syn_dir, "--out", tmp_path / "abl", "--epochs", 1)
    assert res.exit_code == 0, res.output
    md = (tmp_path / "abl" / "table.md").read_text()
    for label in ("full", "-CK (no CL, no KL)", "CL only", "KL only", "w/o kNN"):
        assert f"| {label} |" in md
    assert all(o["epochs"] == 1 for _, o in calls) and len(calls) == 6
    assert (tmp_path / "abl" / "table.tex").is_file() and (tmp_path / "abl" / "significance.md").is_file()


# ---------------------------------------------------------------------- sweeps
def test_parse_param():
    assert parse_param("mu=0,0.5,1") == ("mu", [0, 0.5, 1])
    assert parse_param("content_layers=[1,2],[2,3]") == ("content_layers", [[1, 2], [2, 3]])
    assert parse_param("use_knn=true,false") == ("use_knn", [True, False])


@pytest.mark.parametrize("two", [False, True])
def test_sweep_writes_table_and_figure(syn_dir, tmp_path, monkeypatch, two):
    fake, calls = fake_trainer(lambda m, o: (o["mu"] / 4 + o.get("lambda_coeff", 0) / 4, 0.2 + o["mu"] / 10))
    monkeypatch.setattr(trials_mod, "train_run", fake)
    args = ["sweep", "MARIO", "--data", syn_dir, "--param", "mu=0,0.5,1", "--out", tmp_path / "sw"]
    if two:
        args += ["--param2", "lambda_coeff=0.7,0.9"]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    png = tmp_path / "sw" / "sweep.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res.output.strip().endswith(str(png))  # figures are listed last
    assert len(calls) == (6 if two else 3)
    md = (tmp_path / "sw" / "sweep.md").read_text()
    assert ("▶ 1 | 0.9" in md) if two else ("▶ 1 |" in md)


# ---------------------------------------------------------------------- benchmark plans
def test_benchmark_plan_rows_with_own_settings_and_grids(syn_dir, tmp_path, monkeypatch):
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "rows:\n"
        "  - {model: BPR, grid: {reg_weight: [0.5, 0.01]}}\n"
        "  - {model: MARIO, label: MARIO (paper), set: {content_norm: none}}\n"
        "  - {model: MARIO, modalities: text}\n"
    )
    # valid prefers the smaller reg_weight; test the larger: the choice must follow valid
    fake, calls = fake_trainer(lambda m, o: (0.5 - o.get("reg_weight", 0), 0.1 + o.get("reg_weight", 0)))
    seen_modalities = []

    def spy(model_name, data_dir, modalities=None, overrides=None, **kw):
        seen_modalities.append((model_name, modalities))
        return fake(model_name, data_dir, modalities, overrides, **kw)

    monkeypatch.setattr(trials_mod, "train_run", spy)
    res = invoke("benchmark", "--plan", plan, "--data", syn_dir, "--seeds", "3", "--out", tmp_path / "p")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    rows = {r["label"]: r for r in summary["rows"]}
    assert set(rows) == {"BPR", "MARIO (paper)", "MARIO"}
    assert rows["BPR"]["overrides"] == {"reg_weight": 0.01} and rows["BPR"]["grid_size"] == 2
    assert rows["MARIO (paper)"]["overrides"] == {"content_norm": "none"}
    assert ("MARIO", ["text"]) in seen_modalities and ("MARIO", None) in seen_modalities
    assert (tmp_path / "p" / "grid.csv").is_file()


@pytest.mark.parametrize(
    "text, message",
    [
        ("rows: []\n", "non-empty list under 'rows:'"),
        ("rows:\n  - {label: x}\n", "row 1: each row is a mapping with at least 'model:'"),
        ("rows:\n  - {model: BPR, colour: red}\n", "row 1: unknown field 'colour'"),
        ("rows:\n  - {model: Nope}\n", "row 1: unknown model 'Nope'"),
        ("rows:\n  - {model: BPR, grid: {reg_weight: 0.1}}\n", "row 1: 'grid' must be 'default' or map"),
        ("rows:\n  - {model: BPR}\n  - {model: BPR}\n", "two rows are labelled 'BPR'"),
        ("rows: [\n", "not valid YAML"),
    ],
)
def test_benchmark_plan_errors_name_the_file_and_row(syn_dir, tmp_path, text, message):
    plan = tmp_path / "plan.yaml"
    plan.write_text(text)
    res = invoke("benchmark", "--plan", plan, "--data", syn_dir, "--out", tmp_path / "x")
    assert res.exit_code == 1 and message in res.stderr and str(plan) in res.stderr, res.stderr
    assert not (tmp_path / "x").exists()


def test_benchmark_needs_models_or_plan(syn_dir, tmp_path):
    res = invoke("benchmark", "--data", syn_dir, "--out", tmp_path / "x")
    assert res.exit_code == 1 and "either --models or --plan" in res.stderr


def test_benchmark_reuse_only_tabulates_finished_rows_and_trains_nothing(syn_dir, tmp_path, monkeypatch):
    fake, calls = fake_trainer(lambda m, o: (0.5, 0.4))
    monkeypatch.setattr(trials_mod, "train_run", fake)
    out = tmp_path / "r"
    assert invoke("benchmark", "--models", "BPR", "--data", syn_dir, "--seeds", "1,2", "--out", out).exit_code == 0
    n = len(calls)
    res = invoke(
        "benchmark", "--models", "BPR,LightGCN", "--data", syn_dir, "--seeds", "1,2", "--out", out, "--reuse-only"
    )
    assert res.exit_code == 0, res.output
    assert len(calls) == n  # nothing trained
    summary = json.loads((out / "summary.json").read_text())
    assert [r["label"] for r in summary["rows"]] == ["BPR"] and summary["complete"] is False
    assert "LightGCN: left out" in res.output
    # a row whose first seed finished is shown with the seeds that did
    res = invoke("benchmark", "--models", "BPR", "--data", syn_dir, "--seeds", "1,2,3", "--out", out, "--reuse-only")
    assert res.exit_code == 0 and "BPR seed 3: not finished" in res.output, res.output
    assert [len(r["runs"]) for r in json.loads((out / "summary.json").read_text())["rows"]] == [2]
    res = invoke("benchmark", "--models", "LightGCN", "--data", syn_dir, "--out", tmp_path / "empty", "--reuse-only")
    assert res.exit_code == 1 and "no row of the benchmark has finished runs" in res.stderr


def test_benchmark_does_not_reuse_a_run_made_under_another_configuration(syn_dir, tmp_path):
    """The setting id hashes only the overrides: a changed default must not hand back the old model's run."""
    import yaml

    out, logs = tmp_path / "drift", []
    report = run_benchmark(["BPR"], syn_dir, [1], out=out, overrides={"epochs": 1}, log=logs.append)
    assert (report.trained, report.reused) == (1, 0)
    record_path = next((out / "results").rglob("seed-1.json"))
    run_dir = Path(json.loads(record_path.read_text())["run_dir"])
    cfg_path = run_dir / "config.yaml"
    stored = yaml.safe_load(cfg_path.read_text())

    # a key added after the run was made, at its compat value (overall.yaml `compat:`): still the same run
    del stored["config"]["optimizer"]
    cfg_path.write_text(yaml.safe_dump(stored, sort_keys=False))
    report = run_benchmark(["BPR"], syn_dir, [1], out=out, overrides={"epochs": 1}, log=logs.append)
    assert (report.trained, report.reused) == (0, 1)

    # the run was made with another reg_weight (as if the default had changed since): trained again
    stored["config"]["reg_weight"] = 0.5
    cfg_path.write_text(yaml.safe_dump(stored, sort_keys=False))
    logs.clear()
    with pytest.raises(ModalrecError, match="no row of the benchmark has finished runs"):
        run_benchmark(["BPR"], syn_dir, [1], out=out, overrides={"epochs": 1}, log=logs.append, reuse_only=True)
    assert any("left out" in line and "reg_weight 0.5 → 0.0001" in line for line in logs), logs  # says why
    logs.clear()
    report = run_benchmark(["BPR"], syn_dir, [1], out=out, overrides={"epochs": 1}, log=logs.append)
    assert (report.trained, report.reused) == (1, 0)
    assert any("another configuration (reg_weight 0.5 → 0.0001)" in line for line in logs), logs
    assert (record_path.parent / "seed-1.superseded-1.json").is_file()  # the old record is kept
    assert run_dir.is_dir() and json.loads(record_path.read_text())["run_dir"] != str(run_dir)


def test_adopted_train_run_is_reused_and_a_mismatched_one_refused(syn_dir, tmp_path):
    """benchmarks/adopt_run.py: a `modalrec train` run becomes a benchmark trial only if it is that exact trial."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("adopt_run", Path(__file__).parents[1] / "benchmarks/adopt_run.py")
    adopt_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(adopt_run)
    run = tmp_path / "run"
    res = invoke("train", "--model", "BPR", "--data", syn_dir, "--epochs", 1, "--seed", 4, "--out", run, "-q")
    assert res.exit_code == 0, res.output
    out = tmp_path / "bench"
    common = ["--data", str(syn_dir), "--out", str(out), "--model", "BPR", "--base", "epochs=1"]
    assert adopt_run.main([*common, "--set", "reg_weight=0.5", str(run)]) == 1  # not the trial: refused
    assert not (out / "results").exists()
    assert adopt_run.main([*common, str(run)]) == 0
    report = run_benchmark(["BPR"], syn_dir, [4], out=out, overrides={"epochs": 1}, log=lambda s: None)
    assert (report.trained, report.reused) == (0, 1)
    record = json.loads(next((out / "results").rglob("seed-4.json")).read_text())
    assert record["adopted"] is True and record["run_dir"] == str(run.resolve())


def test_config_drift_counts_min_epochs_only_when_the_run_stopped_before_it():
    """min_epochs only holds early stopping back: a run that went past the new value is the same run."""
    from modalrec.config import config_drift, resolve_config

    current = resolve_config("mario", overrides={"min_epochs": 100}).to_dict()
    stored = {**current, "min_epochs": 0}
    assert config_drift("mario", stored, current, epochs_run=150) == []
    assert config_drift("mario", stored, current, epochs_run=40) == ["min_epochs 0 → 100"]
    assert config_drift("mario", stored, current) == ["min_epochs 0 → 100"]  # unknown length: a change
    older = {k: v for k, v in stored.items() if k not in ("content_gate", "content_gate_init", "content_gate_speed")}
    assert config_drift("mario", older, {**current, "content_gate": "none"}, epochs_run=150) == []  # compat + only_with
