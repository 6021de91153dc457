"""benchmarks/reproduce.py and its renderer: the report comes from the committed record alone."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "reproduce.py"


def _load(name: str, monkeypatch):
    path = ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # its dataclasses look their module up
    monkeypatch.syspath_prepend(str(path.parent))
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def reproduce(monkeypatch):
    return _load("reproduce", monkeypatch)


def test_committed_report_is_rendered_from_the_record_alone(tmp_path):
    """`--render-only` on a checkout without any data or report folder rewrites docs/reproduction.md
    byte for byte (run from a copy of the benchmarks folder, so nothing of this checkout is written)."""
    env = {**os.environ, "MODALREC_DATA": str(tmp_path / "no-data"), "MODALREC_TEST_DATA": ""}
    out = tmp_path / "report.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--render-only", "--out", str(tmp_path / "r"), "--report", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.read_text() == (ROOT / "docs" / "reproduction.md").read_text(), (
        "docs/reproduction.md differs from what the record renders: run `python benchmarks/reproduce.py "
        "--render-only` and commit the result"
    )
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())  # trained and restored nothing


def test_committed_files_name_no_folder_of_this_machine():
    """Commands and recorded configurations use paths relative to the checkout or $MODALREC_DATA."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of committed files")
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True).stdout.split()
    local = {str(ROOT), str(ROOT.resolve()), str(ROOT.parent / "shared"), str(ROOT.resolve().parent / "shared")}
    offenders = []
    for name in files:
        path = ROOT / name
        if path.suffix not in (".md", ".yaml", ".json", ".py", ".txt", ".toml", ".sh") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        offenders += [f"{name}: {folder}" for folder in local if folder in text]
    assert not offenders, offenders[:10]


def test_reproduction_script_end_to_end_then_rerender_from_the_record(tmp_path):
    """--quick trains every part on a tiny synthetic set (1 epoch) into a record; a fresh report folder
    re-renders the same report from the record alone, and a part whose record is gone says `no record`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    out = tmp_path / "r"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "reproduction.md").read_text()
    for title in ("What is and is not reproduced", "Amazon Baby", "all 17 models", "peer toolbox", "Cold-start"):
        assert title in report, title
    assert "no record" not in report.split("## Amazon Baby")[1]  # every row of every part ran
    for label in ("| BPR |", "| LightGCN |", "| MeAIM |", "| MMSSL |", "| MARIO (paper: raw content rows"):
        assert label in report, label
    assert "MARIO's claim" in report and "MeAIM's claim" in report and "Cornac" in report
    assert "| unable (random) |" in report and "| from content |" in report and "| Popularity |" in report
    assert "disjoint halves" in report  # the cold-start protocol is stated
    assert "torch " in report and "thread" in report  # each row says what it ran with
    for part in ("baby", "scientific_mm", "cold-items-scientific"):
        summary = json.loads((out / "record" / part / "summary.json").read_text())
        assert summary["rows"] and all(
            run["run"].endswith(tuple("0123456789")) for r in summary["rows"] for run in r["runs"]
        )
    assert str(tmp_path) not in "".join(p.read_text() for p in (out / "record").rglob("*.yaml"))

    fresh = tmp_path / "fresh"
    again = tmp_path / "again.md"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--render-only",
        "--out",
        str(fresh),
        "--record",
        str(out / "record"),
    ]
    proc = subprocess.run([*cmd, "--report", str(again)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert again.read_text() == report

    (out / "record" / "baby" / "summary.json").unlink()  # its runs stay: other parts may share them
    proc = subprocess.run([*cmd, "--report", str(again)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    baby = again.read_text().split("## Amazon Baby")[1].split("\n## ")[0]
    assert "| BPR | no record | no record | no record | no record | 0.0379 / 0.0202 |" in baby
    assert (
        again.read_text().split("## amazon_scientific_mm (CLIP")[1] == report.split("## amazon_scientific_mm (CLIP")[1]
    )


def _run(folder: Path, name: str, data: Path, finished: str = "2026-01-01T00:00:00") -> dict:
    run = folder / "runs" / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"data:\n  path: {data / 'amazon_x'}\nconfig:\n  seed: 1\n")
    (run / "metrics.json").write_text("{}")
    np.savez(run / "test_per_user.npz", users=np.arange(3), **{"recall@20": np.ones(3)})
    np.savez(run / "valid_per_user.npz", users=np.arange(3), **{"recall@20": np.ones(3)})
    rec = {"model": "BPR", "seed": 1, "setting_id": "abc", "run_dir": str(run), "finished": finished}
    result = folder / "results" / "BPR" / "abc" / "seed-1.json"
    result.parent.mkdir(parents=True)
    result.write_text(json.dumps(rec))
    return rec


def test_a_run_recorded_by_another_part_is_restored_not_copied_and_named_by_the_table(tmp_path, reproduce):
    """Parts share runs of the same setting id: part B gets part A's recorded run, its record does not
    copy it, and B's table names it as ``../A/files/<run>``; recorded configs name no local folder."""
    record = tmp_path / "record"
    part_a, part_b = tmp_path / "out" / "a", tmp_path / "out" / "b"
    _run(part_a, "BPR-abc-seed1", tmp_path / "datasets")
    assert reproduce.archive_part(part_a, record / "a", tmp_path / "datasets") == 1
    assert "$MODALREC_DATA/amazon_x" in (record / "a" / "files" / "BPR-abc-seed1" / "config.yaml").read_text()
    assert str(tmp_path) not in (record / "a" / "files" / "BPR-abc-seed1" / "config.yaml").read_text()

    (record / "b").mkdir()
    assert reproduce.restore_part(record / "b", part_b) == 1
    assert (part_b / "results" / "BPR" / "abc" / "seed-1.json").is_file()
    assert reproduce.archive_part(part_b, record / "b", tmp_path / "datasets") == 0  # already recorded under part a
    assert not (record / "b" / "files").exists()

    (part_b / "summary.json").write_text(
        json.dumps(
            {
                "dataset": "d",
                "seeds": [1],
                "rows": [
                    {
                        "label": "BPR",
                        "model": "BPR",
                        "runs": [
                            {
                                "seed": 1,
                                "setting_id": "abc",
                                "run_dir": str(part_b / "runs" / "BPR-abc-seed1"),
                                "best_epoch": 3,
                                "valid": {},
                                "test": {},
                            }
                        ],
                    }
                ],
            }
        )
    )
    part = reproduce.Part("b", "B", "d", "plan.yaml")
    assert reproduce.record_summary(part, part_b, record / "b")
    table = json.loads((record / "b" / "summary.json").read_text())
    assert table["rows"][0]["runs"][0]["run"] == "../a/files/BPR-abc-seed1"


def test_part_commands_use_portable_paths(reproduce):
    for part in reproduce.PARTS:
        cmd = part.command()
        assert cmd.startswith("modalrec benchmark --plan benchmarks/reproduction/")
        assert "$MODALREC_DATA/" in cmd or "reports/reproduction/data/synthetic" in cmd
        assert str(ROOT) not in cmd


# ------------------------------------------------------------------------------------- verdicts
def _row(render, label: str, model: str, tests: list[dict], folder: Path | None = None):
    runs = [render.Run(folder or Path("/nonexistent"), i, "x", 1, t, t) for i, t in enumerate(tests)]
    return render.Row(label, model, {}, runs=runs)


def test_baby_verdict_shows_its_threshold_and_refuses_rows_off_protocol(monkeypatch, tmp_path):
    render = _load("reproduce_render", monkeypatch)
    a, b = render.PUBLISHED_BABY_AT10["BPR"]
    good = [{"recall@10": a, "ndcg@10": b}] * 2
    verdict = render.baby_verdict(_row(render, "BPR", "BPR", good))
    assert verdict.startswith("reached") and f"{a * 0.97:.4f}" in verdict
    low = [{"recall@10": a * 0.9, "ndcg@10": b}, {"recall@10": a * 0.9, "ndcg@10": b}]
    assert render.baby_verdict(_row(render, "BPR", "BPR", low)).startswith("**below**")
    close = [{"recall@10": a * 0.97 + 1e-4, "ndcg@10": b}, {"recall@10": a * 0.97 + 3e-3, "ndcg@10": b}]
    assert "within one std of the threshold" in render.baby_verdict(_row(render, "BPR", "BPR", close))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("config:\n  stopping_step: 60\n  train_batch_size: 2048\n")
    off = render.baby_verdict(_row(render, "BPR", "BPR", good, run))
    assert off == "not judged: protocol differs (patience 60)"
    assert render.baby_verdict(_row(render, "NGCF", "NGCF", good)) == "no target (not in Table I)"
    assert render.baby_verdict(render.Row("BPR", "BPR", {})) == render.NO_RECORD


def test_claim_verdict_says_not_reproduced_as_soon_as_one_baseline_is_significantly_above(monkeypatch):
    render = _load("reproduce_render", monkeypatch)
    groups = {"above": ["BPR"], "below": ["FREEDOM"], "neither": [], "missing": ["MMSSL"]}
    text = render.claim_verdict("MARIO", groups)
    assert text.startswith("**Not reproduced**") and "FREEDOM" in text and "1 of the 3 baselines have no record" in text
    assert render.claim_verdict("M", {"above": ["A", "B"], "below": [], "neither": [], "missing": []}).startswith(
        "**Reproduced**"
    )
    assert render.claim_verdict("M", {"above": ["A"], "below": [], "neither": ["B"], "missing": []}).startswith(
        "**Not reproduced**"
    )
    assert render.claim_verdict("M", {"above": ["A"], "below": [], "neither": [], "missing": ["B"]}).startswith(
        "**Not judged yet**"
    )


def test_claim_table_uses_paired_tests_on_valid_and_test(monkeypatch, tmp_path):
    render = _load("reproduce_render", monkeypatch)
    rng = np.random.default_rng(0)

    def recorded(label: str, shift: float) -> object:
        folder = tmp_path / label
        folder.mkdir()
        for split in ("valid", "test"):
            per_user = {m: np.clip(rng.random(400) * 0.3 + shift, 0, 1) for m in render.METRICS}
            np.savez(folder / f"{split}_per_user.npz", users=np.arange(400), **per_user)
        means = {m: 0.0 for m in render.METRICS}
        return render.Row(label, label, {}, runs=[render.Run(folder, 1, "x", 1, means, means)])

    claimant, weak, strong = recorded("M", 0.2), recorded("Weak", 0.0), recorded("Strong", 0.5)
    lines, groups = render.claim_table(claimant, [weak, strong, render.Row("Gone", "Gone", {})])
    assert groups == {"above": ["Weak"], "below": ["Strong"], "neither": [], "missing": ["Gone"]}
    assert len(lines) == 2 + 3 and lines[-1].count("no record") == 8 and "*" in lines[2]
