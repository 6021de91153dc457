"""benchmarks/scale.py on a tiny size: every figure measured, growth exponents fitted, and a model predicted
to exceed the memory limit or the time limit is not started (one line says why)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_benchmark_script

from modalrec.threads import SHORT_SPIN

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scale.py"


def test_scale_script_measures_fits_and_refuses_a_size_predicted_too_large(tmp_path):
    out, figure = tmp_path / "scale.json", tmp_path / "scale.png"
    cmd = [sys.executable, str(SCRIPT), "--models", "BPR,LightGCN", "--factors", "0.01,0.02,0.04"]
    cmd += ["--out", str(out), "--figure", str(figure), "--data-cache", str(tmp_path / "data")]
    cmd += ["--memory-limit-gb", "0.0001"]  # anything above the two measured sizes is "too large"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert figure.stat().st_size > 0
    for model in ("BPR", "LightGCN"):
        rows = result["results"][model]
        assert [r["factor"] for r in rows] == [0.01, 0.02, 0.04]
        for r in rows[:2]:
            assert r["epoch_seconds"] > 0 and r["valid_seconds"] > 0 and r["peak_memory_mb"] > 0
        assert rows[1]["train_interactions"] > rows[0]["train_interactions"]
        assert rows[2]["skipped"].startswith("not started: predicted peak memory")
        assert "epoch_seconds" not in rows[2]
        assert isinstance(result["growth_exponents"][model]["epoch"], float)
        # each row names the CPU it ran on: a kept row may come from another host
        assert all(isinstance(r["cpu"], str) and r["cpu"] for r in rows)
    assert "CPU cores" in result["machine"]


def test_scale_script_measures_the_large_data_mode_through_the_trainer(tmp_path):
    out = tmp_path / "scale.json"
    cmd = [sys.executable, str(SCRIPT), "--models", "BPR", "--factors", "0.01", "--out", str(out)]
    cmd += ["--data-cache", str(tmp_path / "data"), "--set", "large_data=always", "--set", "large_data_steps=3"]
    cmd += ["--set", "train_batch_size=64", "--set", "large_data_valid_users=20"]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}  # the user's own setting reaches the row's process
    env.pop("GOMP_SPINCOUNT", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["results"]["BPR"]
    assert row["large_data"] is True and row["steps_per_epoch"] == 3 and row["valid_users"] == 20
    assert row["openmp_waiting"] == "OMP_WAIT_POLICY=PASSIVE"
    assert row["test_seconds"] > 0


def test_a_row_past_its_timeout_is_recorded_and_the_campaign_goes_on(tmp_path):
    out = tmp_path / "scale.json"
    cmd = [sys.executable, str(SCRIPT), "--models", "BPR,LightGCN", "--factors", "0.01", "--out", str(out)]
    cmd += ["--data-cache", str(tmp_path / "data"), "--timeout", "0.2"]  # no row's process starts that fast
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    for model in ("BPR", "LightGCN"):  # the first row's timeout did not end the campaign
        (row,) = results[model]
        assert row["failed"] == "stopped after 0.2 s (--timeout)" and "epoch_seconds" not in row


def test_a_row_predicted_to_outlast_the_timeout_is_not_started(tmp_path):
    out = tmp_path / "scale.json"
    base = [sys.executable, str(SCRIPT), "--models", "BPR", "--out", str(out), "--data-cache", str(tmp_path / "data")]
    proc = subprocess.run([*base, "--factors", "0.01,0.02"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = json.loads(out.read_text())["results"]["BPR"]
    parts = ("build_seconds", "epoch_seconds", "valid_seconds", "test_seconds")
    assert all(r[p] > 0 for r in measured for p in parts)
    # the two measured rows are kept; the third is predicted from them and refused before it starts
    cmd = [*base, "--factors", "0.01,0.02,0.04", "--timeout", "0.001"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]["BPR"]
    assert rows[:2] == measured
    assert (
        rows[2]["skipped"].startswith("not started: predicted") and "above the 0.001 s --timeout" in rows[2]["skipped"]
    )
    assert "epoch_seconds" not in rows[2] and rows[2]["train_interactions"] > measured[1]["train_interactions"]
    # a row not started is decided again by the next run (here a longer --timeout), not kept as if measured
    proc = subprocess.run([*base, "--factors", "0.01,0.02,0.04"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]["BPR"]
    assert rows[:2] == measured and "skipped" not in rows[2] and rows[2]["epoch_seconds"] > 0


def test_the_row_time_prediction_extrapolates_each_part_along_its_own_growth():
    scale = load_benchmark_script("scale")
    small = {"train_interactions": 100, "build_seconds": 1.0, "epoch_seconds": 2.0, "valid_seconds": 1.0}
    large = {"train_interactions": 400, "build_seconds": 1.0, "epoch_seconds": 8.0, "valid_seconds": 4.0}
    small["test_seconds"], large["test_seconds"] = 1.0, 16.0
    # at 1,600: build flat (1), epoch linear (32 × 2 epochs), validation linear (16), test quadratic (256)
    assert scale.predicted_row_seconds([small, large], 1600, 2, False) == pytest.approx(1 + 64 + 16 + 256)
    # a sampled pass predicts the sample's seconds, not the full pass's estimate
    large["test_seconds_all_estimated"] = 160.0
    assert scale.predicted_row_seconds([small, large], 1600, 1, True) == pytest.approx(1 + 32 + 16 + 256)
    assert scale.predicted_row_seconds([large], 1600, 1, False) is None  # one size predicts nothing


def test_scale_script_resumes_from_its_record_and_writes_a_markdown_table(tmp_path):
    out, table = tmp_path / "scale.json", tmp_path / "scale.md"
    cmd = [sys.executable, str(SCRIPT), "--models", "BPR", "--factors", "0.01", "--out", str(out)]
    cmd += ["--data-cache", str(tmp_path / "data")]
    # no setting of the user's: every row's process spins briefly, whatever the load its start finds
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    measured = json.loads(out.read_text())["results"]["BPR"][0]
    assert "load_average_before" in measured
    assert measured["openmp_waiting"] == f"GOMP_SPINCOUNT={SHORT_SPIN}"
    again = subprocess.run([*cmd, "--markdown", str(table)], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "measured before, kept" in again.stdout
    assert json.loads(out.read_text())["results"]["BPR"][0] == measured
    assert "| BPR | ×0.01 |" in table.read_text() and "growth exponent" in table.read_text()
    other = subprocess.run([*cmd, "--epochs", "2"], capture_output=True, text=True, timeout=600)
    assert other.returncode != 0 and "other settings" in other.stderr  # never mixed into one record


def test_scale_script_takes_an_explicit_shape_and_refuses_a_malformed_one(tmp_path):
    out, table = tmp_path / "scale.json", tmp_path / "scale.md"
    cmd = [sys.executable, str(SCRIPT), "--models", "BPR", "--factors", "300x150x6", "--out", str(out)]
    cmd += ["--data-cache", str(tmp_path / "data"), "--markdown", str(table)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["results"]["BPR"]
    assert row["shape"] == "300x150x6" and "factor" not in row
    assert (row["users"], row["items"]) == (300, 150)
    n_all = sum(1 for _ in (tmp_path / "data" / "shape-300x150x6" / "synthetic.inter").open()) - 1  # header
    assert 5.5 * 300 <= n_all <= 6.5 * 300  # the mean interactions per user asked for
    assert "| BPR | 300 × 150, 6 / user | 300 × 150 |" in table.read_text()
    bad = subprocess.run([*cmd[:5], "300x150"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "'300x150' is neither" in bad.stderr


def test_scale_script_samples_the_test_pass_and_remeasures_a_row_whose_model_changed(tmp_path):
    out, table = tmp_path / "scale.json", tmp_path / "scale.md"
    cmd = [sys.executable, str(SCRIPT), "--models", "BPR", "--factors", "0.01", "--out", str(out)]
    cmd += ["--data-cache", str(tmp_path / "data"), "--test-users", "30", "--markdown", str(table)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(out.read_text())
    (row,) = record["results"]["BPR"]
    assert row["test_users"] == 30 and row["test_eligible_users"] > 30
    assert row["test_seconds_all_estimated"] >= row["test_seconds"]
    assert len(row["model_source"]) == 16 and row["modalrec_code"]
    assert record["growth_exponents"]["BPR"]["test"] is None  # a sampled pass is not fitted
    assert f"for 30 users; ≈ {row['test_seconds_all_estimated']:,.0f} for all" in table.read_text()
    row_source, row["model_source"] = row["model_source"], "0" * 16  # as if BPR's file had changed since
    out.write_text(json.dumps(record))
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "the model's code changed since it was measured" in again.stdout
    assert json.loads(out.read_text())["results"]["BPR"][0]["model_source"] == row_source


def test_scale_rows_say_how_their_item_item_graphs_were_built(tmp_path):
    """An approximate graph's neighbour recall reaches the row (``graph_notes``), so a table's figures at a
    size where graphs switch to HNSW say how close they were to exact."""
    out = tmp_path / "scale.json"
    cmd = [sys.executable, str(SCRIPT), "--models", "FREEDOM", "--factors", "0.01", "--out", str(out)]
    cmd += ["--data-cache", str(tmp_path / "data"), "--set", "knn_method=ann"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["results"]["FREEDOM"]
    notes = row["graph_notes"]
    assert notes and all("approximate kNN graph" in n and "neighbour recall@" in n for n in notes)


def test_scale_script_keeps_rows_of_sizes_not_asked_and_remeasures_on_request(tmp_path):
    out = tmp_path / "scale.json"
    base = [sys.executable, str(SCRIPT), "--models", "BPR", "--out", str(out), "--data-cache", str(tmp_path / "data")]
    first = subprocess.run([*base, "--factors", "0.01,0.02"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    small, large = json.loads(out.read_text())["results"]["BPR"]
    again = subprocess.run([*base, "--factors", "0.02", "--remeasure"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "measuring again (--remeasure)" in again.stdout
    rows = json.loads(out.read_text())["results"]["BPR"]
    assert [r["factor"] for r in rows] == [0.01, 0.02]  # the size not asked stays, in order of size
    assert rows[0] == small
    assert rows[1]["load_average_before"] is not None and rows[1] != large  # a new measurement


def test_a_rows_test_pass_continues_in_the_next_run_with_the_saved_weights(tmp_path):
    """--test-budget-s: a row's test pass stops after a chunk and the next run continues it from the saved
    weights (no second training), giving the metric one uninterrupted pass gives; the state is then removed."""
    cache = tmp_path / "data"
    base = [sys.executable, str(SCRIPT), "--models", "BPR", "--factors", "0.01", "--data-cache", str(cache)]
    base += ["--set", "eval_batch_size=64"]
    whole = subprocess.run([*base, "--out", str(tmp_path / "whole.json")], capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    (one_pass,) = json.loads((tmp_path / "whole.json").read_text())["results"]["BPR"]
    out, table = tmp_path / "split.json", tmp_path / "split.md"
    split = [*base, "--out", str(out), "--markdown", str(table), "--test-budget-s", "1e-9", "--test-chunk-blocks", "1"]
    first = subprocess.run(split, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    (row,) = json.loads(out.read_text())["results"]["BPR"]
    part = row["test_partial"]
    assert "test_seconds" not in row and part["processes"] == 1 and 0 < part["users_done"] < part["users"]
    assert part["users_done"] == 64  # one block of eval_batch_size users per run (one chunk past the budget)
    state = cache / "row-state" / "BPR-baby-x0.01"
    assert (state / "trained.pt").is_file() and (state / "test_progress.json").is_file()
    assert f"for {part['users_done']:,} of {part['users']:,} users so far" in table.read_text()
    assert json.loads(out.read_text())["growth_exponents"]["BPR"]["test"] is None
    # a progress file saved before progress was counted in users (ranking blocks done) continues as well
    progress = json.loads((state / "test_progress.json").read_text())
    assert progress.pop("users_done") == 64 and len(progress["codes"]) == 1  # each process's package sources
    (state / "test_progress.json").write_text(json.dumps({**progress, "blocks_done": 1}))
    runs = 1
    while "test_partial" in row:
        again = subprocess.run(split, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-2000:]
        assert "continuing its test pass" in again.stdout
        runs += 1
        trained = row["epoch_seconds"], row["build_seconds"]
        (row,) = json.loads(out.read_text())["results"]["BPR"]
        assert (row["epoch_seconds"], row["build_seconds"]) == trained  # the first run's figures: not trained again
    assert runs >= 2 and row["test_processes"] == runs and row["test_seconds"] > 0
    assert "test_codes" not in row  # every process ran the same sources
    assert row["test_recall@20"] == one_pass["test_recall@20"] > 0  # the trained weights, not a fresh model
    assert not (state / "trained.pt").exists() and not (state / "test_progress.json").exists()
