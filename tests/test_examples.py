"""The worked example of docs/extending.md runs, and the page shows only what runs.

``examples/imglightgcn/run.sh`` (a model in its own file → check-model → benchmark against BPR and LightGCN →
cold items → sweep → tune → train → recommend → the Python API → serve) runs once in a subprocess on one
thread; its outputs are checked here. The plugin package ``examples/modalrec-plugin-example`` is installed
into a folder of the test's own (``pip install --target``, nothing downloaded, the venv unchanged) and found
through its entry point by ``modalrec`` in a subprocess with that folder on its path.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modalrec.testing import check_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "imglightgcn"
PLUGIN = ROOT / "examples" / "modalrec-plugin-example"
PLUGIN_PACKAGE = PLUGIN / "src" / "modalrec_imglightgcn"
DOC = ROOT / "docs" / "extending.md"
CHECKS = ("loss", "beats random", "ranking paths", "candidate scores", "same seed", "save/load", "explanation")
# The plugin commands of docs/extending.md, run by test_the_plugin_is_found_through_its_entry_point ("pip install"
# there gets --no-deps --no-build-isolation --no-index --target: nothing downloaded, the venv unchanged).
PLUGIN_COMMANDS = (
    "pip install ./examples/modalrec-plugin-example",
    "modalrec models",
    "modalrec models --details ImgLightGCN",
    'modalrec train --model ImgLightGCN --data "$DATA" --epochs 1 --out "$OUT/plugin-run" -q',
)


def _env(**extra: str) -> dict[str, str]:
    """This venv's ``modalrec`` and ``python`` first on PATH, one thread, plain wide output."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "NO_COLOR": "1", **extra}


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    """The output folder of one run of ``examples/imglightgcn/run.sh``."""
    out = tmp_path_factory.mktemp("example") / "out"
    proc = subprocess.run(
        ["bash", str(EXAMPLE / "run.sh"), str(out)], capture_output=True, text=True, env=_env(), timeout=600
    )
    assert proc.returncode == 0, f"run.sh exited {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    (out / "stdout.txt").write_text(proc.stdout)
    return out


def test_check_model_passes_every_check(example):
    lines = (example / "check-model.txt").read_text().splitlines()
    assert [ln.split(":")[0] for ln in lines] == [f"PASS {name}" for name in (*CHECKS, "cold rule")], lines
    assert 'cold_start = "content"' in lines[-1]


def test_the_benchmark_has_the_three_rows_and_their_t_tests(example):
    bench = example / "benchmark"
    with (bench / "table.csv").open() as f:
        rows = [r["model"] for r in csv.DictReader(f)]
    assert rows[:3] == ["BPR", "LightGCN", "ImgLightGCN"], rows
    with (bench / "significance.csv").open() as f:
        tests = list(csv.DictReader(f))
    target = tests[0]["target"]
    assert target in rows[:3] and {t["other"] for t in tests} == set(rows[:3]) - {target}
    assert all(0.0 <= float(t["p"]) <= 1.0 and t["significant"] in ("0", "1") for t in tests)
    assert "Paired two-sided t-test" in (bench / "significance.md").read_text()
    again = (example / "benchmark-again.txt").read_text()
    assert "0 runs trained, 6 reused" in again  # the model's source is unchanged: nothing retrains


def test_cold_items_are_scored_from_content(example):
    summary = json.loads((example / "cold" / "summary.json").read_text())
    cold_start = {row["label"]: row["cold_start"] for row in summary["rows"]}
    assert cold_start["ImgLightGCN"] == "content" and cold_start["LightGCN"] == "unable"


def test_sweep_and_tune_search_the_models_own_key(example):
    sweep = (example / "sweep" / "sweep.csv").read_text()
    assert "proj_scale" in sweep
    best = yaml.safe_load((example / "tune" / "best_config.yaml").read_text())
    assert {"proj_scale", "n_layers", "reg_weight"} <= set(best)
    trials = (example / "tune" / "trials.csv").read_text().strip().splitlines()
    assert len(trials) == 1 + 3  # a header and the three trials
    assert json.loads((example / "tune" / "best.json").read_text())["finished_trials"] == 3


def test_the_run_records_the_file_spec_and_the_server_answered(example):
    config = yaml.safe_load((example / "run" / "config.yaml").read_text())
    assert config["model_spec"] == f"{EXAMPLE / 'imglightgcn.py'}:ImgLightGCN" and config["model_source_hash"]
    served = json.loads((example / "served.json").read_text())
    recommended = json.loads((example / "recommend.json").read_text())
    assert served["model"] == "ImgLightGCN" and len(served["items"]) == 5
    assert [i["item"] for i in served["items"]] == [i["item"] for i in recommended["items"]]


def test_the_python_api_example_ran(example):
    stdout = (example / "stdout.txt").read_text()
    assert re.search(r"recall@20 on test, \d+ users: mine [\d.]+ vs base [\d.]+.*paired t", stdout), stdout[-3000:]
    assert (example / "api" / "mine" / "model.pt").is_file()


@pytest.fixture
def at_root(monkeypatch) -> None:
    """The working directory is the repository root: the specs of docs/extending.md are relative to it."""
    monkeypatch.chdir(ROOT)


@pytest.mark.usefixtures("at_root")
def test_the_example_model_keeps_the_contract():
    report = check_model("examples/imglightgcn/imglightgcn.py:ImgLightGCN")
    assert report.ok, str(report)


# ================================================================ the plugin package
def test_the_plugin_ships_the_example_model_unchanged():
    """The plugin is the same model: its module and YAML are the example's files, byte for byte."""
    for name in ("imglightgcn.py", "imglightgcn.yaml"):
        assert (PLUGIN_PACKAGE / name).read_bytes() == (EXAMPLE / name).read_bytes(), name


def test_the_plugin_is_found_through_its_entry_point(example, tmp_path):
    source = tmp_path / "plugin"  # built from a copy: the build leaves build/ and *.egg-info beside its sources
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = tmp_path / "site"
    install, *commands = PLUGIN_COMMANDS
    assert install.endswith(" ./examples/modalrec-plugin-example")
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    proc = subprocess.run(
        [*pip, "--disable-pip-version-check", "--target", str(site), str(source)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    env = _env(PYTHONPATH=os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p))
    values = {"$DATA": str(example / "data"), "$OUT": str(tmp_path)}
    out = {}
    for command in commands:
        args = shlex.split(re.sub(r"\$[A-Z]+", lambda m: values[m.group()], command))
        proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
        out[command] = proc.stdout
    listed, details, _ = out.values()
    assert re.search(r"ImgLightGCN\s*│\s*content \+ ID\s*│\s*from content", listed), listed
    assert details.startswith("ImgLightGCN (ImgLightGCN):") and re.search(r"^\s+proj_scale\s+1\.0", details, re.M)
    assert str(site / "modalrec_imglightgcn" / "imglightgcn.yaml") in details  # its config_file, from the package
    config = yaml.safe_load((tmp_path / "plugin-run" / "config.yaml").read_text())
    assert config["model_spec"] == "ImgLightGCN"  # the entry-point name: found again wherever it is installed


# ================================================================ docs/extending.md shows only what runs
def _code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


def _commands(text: str) -> list[str]:
    """Shell lines with their continuations joined and blanks collapsed."""
    return [" ".join(line.split()) for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def test_every_command_on_the_page_is_run_by_the_example_or_this_test():
    script = " ".join(_commands((EXAMPLE / "run.sh").read_text()))
    shown = [c for block in _code_blocks(DOC.read_text(), "bash") for c in _commands(block)]
    assert any(c.startswith("modalrec benchmark") for c in shown)
    unrun = [
        c
        for c in shown
        if c.split()[0] in ("modalrec", "pip")
        if c.split("#")[0].strip() not in script and c not in PLUGIN_COMMANDS
    ]
    assert not unrun, unrun
    assert any(c.startswith("examples/imglightgcn/run.sh") for c in shown)  # run by the fixture above


def test_the_pages_python_is_the_examples():
    text = DOC.read_text()
    blocks = _code_blocks(text, "python")
    model_block, test_block, api_block = blocks  # the model, a pytest of it, the Python API
    api_lines = set((EXAMPLE / "python_api.py").read_text().splitlines())
    assert [ln for ln in api_block.splitlines() if ln not in api_lines] == []
    imports, test_function = test_block.split("\n\n\n", 1)
    this_file = Path(__file__).read_text()
    assert imports in this_file and test_function.strip() in this_file  # the test above, as the page shows it
    model_file = (EXAMPLE / "imglightgcn.py").read_text()
    assert [ln for ln in model_block.splitlines() if ln.strip() and ln not in model_file] == []
    yaml_block = _code_blocks(text, "yaml")[0]
    assert yaml_block.strip() in (EXAMPLE / "imglightgcn.yaml").read_text()
