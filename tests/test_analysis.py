"""Analyses: modality preservation (blocked, exact, 0 for features), modality correlations, t-SNE — and their files."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from modalrec.analysis.modalities import similarity_correlations
from modalrec.analysis.preservation import model_preservation, normalize_rows, preservation_diffs
from modalrec.cli import app
from modalrec.runs import train_run

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
PNG = b"\x89PNG\r\n\x1a\n"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def brute_preservation(f: np.ndarray, p: np.ndarray) -> np.ndarray:
    fn, pn = normalize_rows(f), normalize_rows(p)
    d = np.abs(fn @ fn.T - pn @ pn.T)
    np.fill_diagonal(d, 0.0)
    return d.sum(axis=1) / (len(f) - 1)


class FeatureModel:
    """A 'model' whose item representation is exactly one modality's features."""

    name = "Identity"

    def __init__(self, x: np.ndarray) -> None:
        self.x = torch.from_numpy(np.asarray(x, dtype=np.float32))

    def item_representation(self) -> torch.Tensor:
        return self.x


def test_preservation_is_zero_when_the_representation_is_the_features(syn_dataset):
    feats = dict(syn_dataset.features)
    degree = np.asarray(syn_dataset.train_matrix.sum(axis=0)).ravel()
    res = model_preservation(FeatureModel(feats["image"]), feats, degree, min_degree=5)
    assert res.mean_all["image"] == 0.0 and res.mean_high["image"] == 0.0
    assert np.all(res.diffs["image"] == 0.0)
    assert res.mean_all["text"] > 0.01  # another modality's structure differs
    assert res.n_high == int((degree > 5).sum())


def test_preservation_blocks_match_the_full_matrix():
    rng = np.random.default_rng(3)
    f, p = rng.standard_normal((37, 5)), rng.standard_normal((37, 9))
    f[4] = 0.0  # a zero vector has cosine 0 with everything
    expected = brute_preservation(f, p)
    for cells in (37, 37 * 4, 37 * 37, 10**6):  # one row per block … everything in one block
        np.testing.assert_allclose(preservation_diffs(f, p, max_cells=cells), expected, atol=1e-6)
    # cosine similarity is scale-invariant: scaled features preserve perfectly
    np.testing.assert_allclose(preservation_diffs(3.0 * p, p), 0.0, atol=1e-6)


def test_similarity_correlations_match_numpy():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((30, 4))
    tables = {"a": base + 0.3 * rng.standard_normal((30, 4)), "b": base, "c": rng.standard_normal((30, 6))}
    got = similarity_correlations(tables, max_cells=30 * 7)
    iu = np.triu_indices(30, k=1)
    sims = {m: (normalize_rows(x) @ normalize_rows(x).T)[iu] for m, x in tables.items()}
    for a, b in itertools.combinations(tables, 2):
        assert got[(a, b)] == pytest.approx(np.corrcoef(sims[a], sims[b])[0, 1], abs=1e-6)
    assert got[("a", "b")] > 0.5


@pytest.fixture(scope="module")
def runs(syn_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis-runs")
    cache = root / "cache"
    out = {}
    for name, model, ov in (
        ("mario", "MARIO", {"epochs": 2}),
        ("meaim", "MeAIM", {"epochs": 1}),
        ("meaim_ck", "MeAIM", {"epochs": 1, "beta_cl": 0.0, "lambda_kl": 0.0}),
    ):
        out[name], _ = train_run(model, syn_dir, overrides=ov, out=root / name, quiet=True, cache_dir=cache)
    return out


def test_analyze_preservation_command(runs):
    res = invoke("analyze", "preservation", runs["mario"], runs["meaim"], "--min-degree", 20)
    assert res.exit_code == 0, res.output
    folder = runs["mario"] / "analysis"
    for name in ("preservation.md", "preservation.csv", "preservation.json"):
        assert (folder / name).is_file()
    png = folder / "preservation_density.png"
    assert png.read_bytes()[:8] == PNG
    assert res.output.strip().endswith(str(png))
    md = (folder / "preservation.md").read_text()
    assert "| MARIO |" in md and "| MeAIM |" in md and "degree > 20" in md


def test_analyze_modalities_command(syn_dir, runs, tmp_path):
    out = tmp_path / "mods"
    res = invoke("analyze", "modalities", syn_dir, "--run", runs["mario"], "--out", out, "--heatmap-items", 25)
    assert res.exit_code == 0, res.output
    rows = (out / "modality_correlations.csv").read_text().splitlines()
    assert rows[0] == "modality_a,modality_b,pearson_r,items" and len(rows) == 1 + 3  # image-text, ×interaction
    assert any(r.startswith("image,interaction (MARIO),") for r in rows)
    assert (out / "modality_similarity.png").read_bytes()[:8] == PNG
    # without a run: the two content modalities only
    res = invoke("analyze", "modalities", syn_dir, "--out", tmp_path / "mods2")
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "mods2" / "modality_correlations.csv").read_text().splitlines()) == 2


def test_analyze_tsne_command(runs, tmp_path):
    out = tmp_path / "tsne"
    res = invoke(
        "analyze",
        "tsne",
        runs["meaim"],
        runs["meaim_ck"],
        "--modality",
        "text",
        "--users",
        40,
        "--items",
        30,
        "--out",
        out,
    )
    assert res.exit_code == 0, res.output
    for kind in ("users", "items"):
        png = out / f"tsne_text_{kind}.png"
        assert png.read_bytes()[:8] == PNG and str(png) in res.output
    with np.load(out / "tsne_points_text.npz") as z:
        assert z["MeAIM (meaim)|users"].shape == (40, 2) and z["MeAIM (meaim_ck)|items"].shape == (30, 2)
        np.testing.assert_array_equal(z["MeAIM (meaim)|item_ids"], z["MeAIM (meaim_ck)|item_ids"])
    bad = invoke("analyze", "tsne", runs["mario"], "--modality", "audio", "--out", tmp_path / "bad")
    assert bad.exit_code == 1 and "no 'audio' representation" in bad.stderr and "interaction" in bad.stderr
