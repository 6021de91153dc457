"""benchmarks/ann_graph_recall.py on the built-in synthetic data: HNSW graphs of each modality, raw and through
MARIO's initial projection, timed, with their recall against exact; a dataset without features is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modalrec.data.synth import write_synthetic_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ann_graph_recall.py"
pytest.importorskip("faiss", reason="the ann_graph_recall script needs FAISS (the scale extra)")


def _record(tmp_path: Path, *options: str) -> dict:
    """The record the script writes for the built-in synthetic set with ``options`` (``--exact`` always)."""
    data = write_synthetic_dataset(tmp_path / "data")
    out = tmp_path / "recall.json"
    cmd = [sys.executable, str(SCRIPT), "--data", str(data), "--exact", *options, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


def test_ann_graph_recall_measures_each_modality_raw_and_projected(tmp_path):
    record = _record(tmp_path, "--projection-dim", "16")
    rows = record["rows"]
    assert [(r["modality"], r["dim"]) for r in rows] == [("image", 256), ("image", 16), ("text", 128), ("text", 16)]
    for r in rows:
        assert r["items"] == 2000 and r["sampled_items"] == 1000
        assert 0.9 <= r["recall"] <= 1.0
        assert r["ann_seconds"] > 0 and r["exact_seconds"] > 0
    assert record["versions"]["faiss"] and record["hnsw"]["M"] > 0


def test_ann_graph_recall_measures_damrs_denoised_graphs(tmp_path):
    (row,) = _record(tmp_path, "--graphs", "denoised")["rows"]
    assert row["modality"] == "image+text" and row["items"] == 2000 and row["sampled_items"] == 1000
    assert set(row["recall"]) == {"image", "text"} and all(0.0 < r <= 1.0 for r in row["recall"].values())
    assert row["ann_seconds"] > 0 and row["exact_seconds"] > 0
    assert 0 <= row["items_computed_exactly"] <= 2000


def test_ann_graph_recall_refuses_a_dataset_without_features(tmp_path):
    data = write_synthetic_dataset(tmp_path / "data")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(data / "synthetic.inter", bare / "bare.inter")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data", str(bare)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "no content features" in proc.stderr
