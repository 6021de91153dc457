"""The shipped contract kit on users' models (issue 28 item 5): ``modalrec check-model`` and ``check_model``.

Each model here lives in its own file in tmp, named by a file spec, as a user's would: a correct one passes
every check (and leaves the caller's torch state as it was); one whose fast ranking path disagrees with its
exact one, one whose loss is NaN, one whose explanation has the wrong shape, and one whose loss raises, fail
with that check's line; a content model that forgets its cold overrides fails the cold rule, and one that
reads features but declares itself ID-only is warned. The command's exit codes and one-line spec errors.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error
from typer.testing import CliRunner

from modalrec.cli import app
from modalrec.testing import CHECK_NAMES, check_model

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}

# A small matrix factorisation (ID only) and, on top of it, the variants the tests break.
MODELS = '''
import torch
from torch import nn

from modalrec.models.base import COLD_CONTENT, Explanation, Recommender
from modalrec.nn.losses import bpr_loss


class TinyMF(Recommender):
    """s(u, j) = e_u · e_j + b_j, trained with BPR."""

    def __init__(self, dataset, config, graphs):
        super().__init__(dataset, config, graphs)
        self.user_emb = nn.Embedding(self.n_users, 16)
        self.item_emb = nn.Embedding(self.n_items, 16)
        self.item_bias = nn.Embedding(self.n_items, 1)
        for table in (self.user_emb, self.item_emb, self.item_bias):
            nn.init.normal_(table.weight, std=0.1)

    def item_table(self):
        return self.item_emb.weight

    def compute_representations(self):
        users = self.user_emb.weight
        items = torch.cat([self.item_table(), self.item_bias.weight], 1)
        return torch.cat([users, users.new_ones(len(users), 1)], 1), items

    def loss(self, batch):
        users, items = self.representations()
        u = users[batch.users]
        return bpr_loss((u * items[batch.pos]).sum(1), (u * items[batch.neg]).sum(1))


class FastPathForgetsTheBias(TinyMF):
    """Its fast full ranking leaves out the item bias that its exact per-pair formula has."""

    def full_scores(self, users):
        u, i = self.representations()
        return u[users, :-1] @ i[:, :-1].T

    def naive_pair_scores(self, users, items):
        u, i = self.representations()
        return (u[users] * i[items]).sum(1)


class PairsDisagree(TinyMF):
    """Its score_pairs is not the ranking's score."""

    def score_pairs(self, users, items):
        return super().score_pairs(users, items) + 1.0


class NaNLoss(TinyMF):
    def loss(self, batch):
        return super().loss(batch) * float("nan")


class LossRaises(TinyMF):
    def loss(self, batch):
        raise RuntimeError("a bug in my loss")


class BadExplanation(TinyMF):
    """Explains with one part but two weight columns."""

    def explain(self, users, items):
        return Explanation("uniform", ["id"], torch.ones(len(users), 2))


class ImgMF(TinyMF):
    """A content model: the item table adds a linear projection of the image features; cold items get the
    warm items' mean ID row, so their scores come from their features."""

    min_modalities = 1
    cold_start = COLD_CONTENT

    def __init__(self, dataset, config, graphs):
        super().__init__(dataset, config, graphs)
        self.register_feature_buffers(dataset, ["image"])
        self.proj = nn.Linear(dataset.features["image"].shape[1], 16)

    def item_table(self):
        return self.item_emb.weight + self.proj(self.feature_buffer("image"))

    def cold_overrides(self):
        return [self.cold_mean(self.item_emb.weight), self.cold_zero(self.item_bias.weight)]


class ImgMFNoOverrides(ImgMF):
    """Declares content cold scoring but lets the cold items' untrained ID rows into their scores."""

    def cold_overrides(self):
        return []


class ImgMFDeclaredUnable(ImgMF):
    """Reads the image features but keeps the default cold_start ("unable")."""

    cold_start = "unable"
'''


@pytest.fixture(scope="module")
def models_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user") / "mymodels.py"
    path.write_text(textwrap.dedent(MODELS))
    return path


def spec(models_file: Path, name: str) -> str:
    return f"{models_file}:{name}"


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def test_a_correct_user_model_passes_every_check(models_file):
    torch.manual_seed(123)
    rng_before, deterministic_before = torch.get_rng_state(), torch.are_deterministic_algorithms_enabled()
    report = check_model(spec(models_file, "TinyMF"))
    # the caller's global torch state is as it was (the trainings seed torch and switch kernels)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.are_deterministic_algorithms_enabled() == deterministic_before
    assert [c.name for c in report.checks] == list(CHECK_NAMES)
    assert report.ok and all(c.status == "PASS" for c in report.checks), str(report)
    assert str(report).splitlines()[0].startswith("PASS loss: ")
    assert 'PASS cold rule: cold_start = "unable"' in str(report)


def test_a_content_model_with_cold_overrides_passes_the_cold_rule(models_file):
    report = check_model(spec(models_file, "ImgMF"))
    assert report.ok and all(c.status == "PASS" for c in report.checks), str(report)
    assert 'cold_start = "content"' in report["cold rule"].figure


@pytest.mark.parametrize(
    ("model", "why"),
    [
        ("FastPathForgetsTheBias", "full_scores differs from the exact per-pair path naive_pair_scores"),
        ("PairsDisagree", "score_pairs differs from full_scores"),
    ],
)
def test_fast_and_exact_paths_that_disagree_fail_the_ranking_paths_line(models_file, model, why):
    result = invoke("check-model", spec(models_file, model))
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == len(CHECK_NAMES), result.stdout
    line = next(x for x in lines if x.startswith("FAIL ranking paths: "))
    assert why in line and " — " in line, line
    assert "Traceback" not in result.output


def test_a_nan_loss_fails_the_loss_line(models_file):
    result = invoke("check-model", spec(models_file, "NaNLoss"), "--epochs", "3")
    assert result.exit_code == 1, result.output
    line = result.stdout.splitlines()[0]
    assert line.startswith("FAIL loss: ") and "NaN/inf at epoch 0" in line, line


def test_an_explanation_of_the_wrong_shape_fails_its_line(models_file):
    report = check_model(spec(models_file, "BadExplanation"))
    line = str(report["explanation"])
    assert line.startswith("FAIL explanation: uniform: weights (8, 2) over id for 8 pairs — "), line
    assert "weights must have shape (pairs, parts) = (8, 1)" in line
    assert [c.name for c in report.checks if not c.ok] == ["explanation"], str(report)


def test_a_training_that_raises_fails_the_loss_line_with_the_users_frame(models_file):
    report = check_model(spec(models_file, "LossRaises"))
    loss = report["loss"]
    assert not loss.ok and "RuntimeError: a bug in my loss (at mymodels.py:" in loss.why, str(report)
    not_run = [c for c in report.checks if c.figure == "not run"]
    assert [c.name for c in not_run] == list(CHECK_NAMES[1:-1])
    assert all("a bug in my loss" in c.why for c in not_run)


def test_a_content_model_whose_cold_scores_use_its_id_rows_fails_the_cold_rule(models_file):
    report = check_model(spec(models_file, "ImgMFNoOverrides"))
    cold = report["cold rule"]
    assert not report.ok and not cold.ok, str(report)
    assert "item_emb" in cold.why and "cold_overrides()" in cold.why
    assert all(c.ok for c in report.checks if c.name != "cold rule"), str(report)


def test_a_model_reading_features_but_declared_unable_is_warned_not_failed(models_file):
    report = check_model(spec(models_file, "ImgMFDeclaredUnable"))
    cold = report["cold rule"]
    assert report.ok, str(report)
    assert cold.status == "WARN" and str(cold).startswith("WARN cold rule: ")
    assert "reads image but" in cold.why and "cold_start = COLD_CONTENT" in cold.why and "cold_overrides()" in cold.why


def test_cli_passes_with_exit_0_and_one_line_per_check(models_file, tmp_path):
    from modalrec.data.synth import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "d", n_users=200, n_items=150, modalities={"image": 16}, seed=2)
    result = invoke("check-model", spec(models_file, "TinyMF"), "--data", data, "--epochs", "8", "--seed", "7")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [x.split(":")[0] for x in lines] == [f"PASS {name}" for name in CHECK_NAMES]
    assert "over 8 epochs" in lines[0] and "seed 7" in lines[CHECK_NAMES.index("same seed")]


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [("nosuch.py:X", "nosuch.py"), ("NoSuchModel", "unknown model 'NoSuchModel'"), ("{file}:Missing", "Missing")],
)
def test_cli_bad_spec_is_one_line_error(models_file, bad, fragment):
    result = invoke("check-model", bad.format(file=models_file))
    assert_one_line_error(result, fragment)
