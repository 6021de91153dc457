"""The contract checks, one function each: what the kit runs, usable on their own on any trained model."""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modalrec.config import Config
from modalrec.data.dataset import Dataset
from modalrec.graphs import GraphStore
from modalrec.models import Recommender
from modalrec.models.base import COLD_CONTENT, COLD_UNABLE, FEATURE_BUFFER, Explanation
from modalrec.run_files import load_run_file, save_checkpoint
from modalrec.testing.kit import (
    RANDOM_K,
    SAME_SEED_EPOCHS,
    CheckResult,
    ContractKit,
    Training,
    expected_random_recall,
    failure,
)
from modalrec.training import TrainResult

RANDOM_MARGIN = 1.5  # "beats random": test Recall@20 above this many times the random expectation
# ranking paths: the same score computed two ways (float32; a literal per-pair reference sums in another order)
EXACT_TOL = {"rtol": 1e-5, "atol": 1e-5}
NAIVE_TOL = {"rtol": 1e-4, "atol": 1e-4}
EVAL_TOL = {"rtol": 1.3e-6, "atol": 1e-5}  # ranking twice: only the block split may differ (float32's default)
LOAD_TOL = {"rtol": 1e-6, "atol": 1e-6}  # save → load: the same weights, the same computation
FEATURE_EFFECT = 1e-6  # how far a cold item's score must move when its features change
BLOCK = 7  # users per block when the block path is compared with the whole
MAX_USERS = 256  # users scored by the ranking checks (a caller's dataset may be large)
MAX_PAIRS = 256


def _mismatch(a: torch.Tensor, b: torch.Tensor, tol: dict[str, float]) -> tuple[bool, float]:
    """(whether ``a`` and ``b`` agree within ``tol``, their largest absolute difference)."""
    if a.shape != b.shape:
        return False, math.inf
    diff = (a.double() - b.double()).abs()
    largest = float(diff.max()) if diff.numel() else 0.0
    return bool(torch.isclose(a.double(), b.double(), **tol).all()), largest


def _sample(n: int, size: int, seed: int) -> torch.Tensor:
    """``size`` indices below ``n`` drawn with a fixed seed (repeats allowed: the paths must handle them)."""
    return torch.randint(0, n, (size,), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------- the checks
def check_loss(result: TrainResult) -> CheckResult:
    """The per-epoch training loss is finite and falls below the first epoch's."""
    losses = [h["loss"] for h in result.history]
    bad = next((e for e, x in enumerate(losses) if x is None or not math.isfinite(x)), None)
    if bad is not None:
        shown = ", ".join("NaN/inf" if x is None or not math.isfinite(x) else f"{x:.4f}" for x in losses[: bad + 1])
        return CheckResult("loss", False, f"losses {shown}", f"the loss is NaN/inf at epoch {bad} (training stopped)")
    figure = f"{losses[0]:.4f} → {losses[-1]:.4f} over {len(losses)} epochs"
    if len(losses) < 2:
        return CheckResult("loss", False, figure, "one epoch cannot show the loss falling (train 2 or more)")
    if not min(losses[1:]) < losses[0]:
        return CheckResult("loss", False, figure, "the loss never fell below the first epoch's")
    return CheckResult("loss", True, figure)


def check_beats_random(result: TrainResult, dataset: Dataset) -> CheckResult:
    """Test Recall@20 after the training is above :data:`RANDOM_MARGIN` × a random ranking's expectation."""
    key = f"recall@{RANDOM_K}"
    random = expected_random_recall(dataset, RANDOM_K)
    if result.test is None or key not in result.test.metrics:
        return CheckResult("beats random", False, "no test recall", f"the test pass gave no {key}")
    recall = result.test.metrics[key]
    figure = f"test {key} {recall:.4f}, a random ranking {random:.4f}"
    if not recall > RANDOM_MARGIN * random:
        epochs = len(result.history)
        why = f"needs > {RANDOM_MARGIN * random:.4f} after {epochs} epoch{'s' if epochs != 1 else ''}"
        return CheckResult("beats random", False, figure, why)
    return CheckResult("beats random", True, figure)


@torch.no_grad()
def check_ranking_paths(model: Recommender) -> CheckResult:
    """Blocks of users rank as all users at once; ``score_pairs`` and ``naive_pair_scores`` (when the model has
    one) agree with ``full_scores``; train-then-eval mode changes no score."""
    model.eval()
    users = torch.arange(min(model.n_users, MAX_USERS), device=model.device)
    whole = model.full_scores(users)
    if tuple(whole.shape) != (len(users), model.n_items):
        why = f"full_scores of {len(users)} users gave shape {tuple(whole.shape)}, not ({len(users)}, {model.n_items})"
        return CheckResult("ranking paths", False, "wrong shape", why)
    if not torch.isfinite(whole).all():
        return CheckResult("ranking paths", False, "non-finite scores", "full_scores gives NaN/inf")
    pu, pi = _sample(len(users), MAX_PAIRS, 1).to(whole.device), _sample(model.n_items, MAX_PAIRS, 2).to(whole.device)
    paths: list[tuple[str, Callable[[], torch.Tensor], torch.Tensor, dict[str, float], str]] = [
        ("blocks", lambda: torch.cat([model.full_scores(users[i : i + BLOCK]) for i in range(0, len(users), BLOCK)]),
         whole, EXACT_TOL, f"full_scores of {BLOCK}-user blocks differs from one call on all users"),
        ("score_pairs", lambda: model.score_pairs(users[pu], pi), whole[pu, pi], EXACT_TOL,
         "score_pairs differs from full_scores"),
    ]  # fmt: skip
    naive = getattr(model, "naive_pair_scores", None)
    if callable(naive):
        paths.append(
            ("naive_pair_scores", lambda: naive(users[pu], pi), whole[pu, pi], NAIVE_TOL,
             "full_scores differs from the exact per-pair path naive_pair_scores")
        )  # fmt: skip
    figures, problems = [], []
    for label, compute, reference, tol, why in paths:
        agree, largest = _mismatch(compute(), reference, tol)
        figures.append(f"{label} {largest:.1e}")
        if not agree:
            problems.append(f"{why} by up to {largest:.3g} (rtol {tol['rtol']:g}, atol {tol['atol']:g})")
    model.train()
    model.eval()
    agree, largest = _mismatch(model.full_scores(users[:10]), whole[:10], EVAL_TOL)
    figures.append(f"train→eval {largest:.1e}")
    if not agree:
        problems.append("scores change after model.train(); model.eval() (dropout or noise left on when ranking?)")
    figure = "max |Δ| " + ", ".join(figures)
    return CheckResult("ranking paths", not problems, figure, "; ".join(problems))


@torch.no_grad()
def check_candidate_scores(model: Recommender) -> CheckResult:
    """``candidate_scores(users, items)`` equals ``ranking_scores(users)[:, items]`` (what a cold evaluation
    ranks by, when a model scores only the candidate columns)."""
    model.eval()
    users = torch.arange(min(model.n_users, 32), device=model.device)
    items = torch.randperm(model.n_items, generator=torch.Generator().manual_seed(3))[: max(1, model.n_items // 3)]
    items = items.to(model.device)
    agree, largest = _mismatch(model.candidate_scores(users, items), model.ranking_scores(users)[:, items], EXACT_TOL)
    figure = f"max |Δ| {largest:.1e} on {len(users)} users × {len(items)} items"
    why = "" if agree else "candidate_scores differs from the ranking's columns"
    return CheckResult("candidate scores", agree, figure, why)


def trajectory(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A training's per-epoch history without its wall-clock timings (loss and validation metrics)."""
    return [{k: v for k, v in h.items() if k != "train_seconds"} for h in history]


def check_same_seed(kit: ContractKit, main: Training) -> CheckResult:
    """A second training with the same seed, capped at :data:`SAME_SEED_EPOCHS` epochs, repeats the main
    training's first epochs exactly: losses, validation metrics and weights."""
    n = min(SAME_SEED_EPOCHS, kit.epochs)
    again = kit.train(kit.dataset, n)
    first, second = trajectory(main.result.history)[:n], trajectory(again.result.history)
    seed = main.config.seed
    figure = f"2 trainings with seed {seed}: epochs 0–{n - 1}"
    if second != first:
        epoch = next((e for e, (a, b) in enumerate(zip(first, second, strict=False)) if a != b), min(len(first), n))
        why = (
            f"epoch {epoch} differs ({_brief(first, epoch)} vs {_brief(second, epoch)}): training draws from an "
            "unseeded source, or depends on the epoch cap"
        )
        return CheckResult("same seed", False, figure + " differ", why)
    if again.digest != main.digest:
        return CheckResult("same seed", False, figure + ": same metrics", "the weights differ after the same epochs")
    return CheckResult("same seed", True, figure + " identical (loss, valid metrics, weights)")


def _brief(history: list[dict[str, Any]], epoch: int) -> str:
    """An epoch of a history in a few words: its loss and validation recall."""
    if epoch >= len(history):
        return "no such epoch"
    h = history[epoch]
    valid = h.get("valid") or {}
    metric = next(iter(sorted(k for k in valid if k.startswith("recall"))), None)
    loss = "NaN/inf" if h["loss"] is None else f"{h['loss']:.6g}"
    return f"loss {loss}" + (f", valid {metric} {valid[metric]}" if metric else "")


@torch.no_grad()
def check_save_load(main: Training, dataset: Dataset) -> CheckResult:
    """The weights saved as a run's ``model.pt`` load, weights only, into a new model with the same scores."""
    model = main.model
    users = torch.arange(min(model.n_users, MAX_USERS), device=model.device)
    before = model.ranking_scores(users)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        save_checkpoint(path, model, main.config, dataset)
        try:
            saved = load_run_file(path)
        except Exception as exc:
            return CheckResult(
                "save/load", False, "model.pt not readable", f"weights-only loading refused it: {failure(exc)}"
            )
    fresh = type(model)(dataset, Config(saved["config"]), GraphStore(dataset, cache_dir=False)).to(model.device)
    try:
        fresh.load_state_dict(saved["state_dict"])
    except RuntimeError as exc:
        return CheckResult("save/load", False, "weights do not load", f"a new model refuses them: {failure(exc)}")
    fresh.eval()
    agree, largest = _mismatch(fresh.ranking_scores(users), before, LOAD_TOL)
    figure = f"max |Δ| {largest:.1e} over {len(users)} users after save → load"
    why = (
        "" if agree else "the scores depend on something outside state_dict (make it a parameter or persistent buffer)"
    )
    return CheckResult("save/load", agree, figure, why)


@torch.no_grad()
def check_explanation(model: Recommender) -> CheckResult:
    """What :meth:`explain` returns, if anything: an :class:`Explanation` with a (pairs, parts) weight matrix."""
    users, items = _sample(model.n_users, 8, 4).to(model.device), _sample(model.n_items, 8, 5).to(model.device)
    expl = model.explain(users, items)
    if expl is None:
        return CheckResult("explanation", True, "explain gives none (optional)")
    if not isinstance(expl, Explanation):
        return CheckResult("explanation", False, type(expl).__name__, "explain must return an Explanation or None")
    n, parts = len(users), list(expl.parts)
    figure = f"{expl.kind}: weights {tuple(expl.weights.shape)} over {', '.join(map(str, parts))} for {n} pairs"
    problems = []
    if not parts or len(set(parts)) != len(parts) or not all(isinstance(p, str) for p in parts):
        problems.append("parts must be distinct names")
    if tuple(expl.weights.shape) != (n, len(parts)):
        problems.append(f"weights must have shape (pairs, parts) = ({n}, {len(parts)})")
    elif not torch.isfinite(expl.weights).all():
        problems.append("weights hold NaN/inf")
    nested = (expl.extra or {}).get("item_weights")
    if nested is not None:
        item_parts = list((expl.extra or {}).get("item_parts", parts))
        if tuple(nested.shape) != (n, len(parts), len(item_parts)):
            problems.append(f"extra item_weights must have shape ({n}, {len(parts)}, {len(item_parts)})")
    return CheckResult("explanation", not problems, figure, "; ".join(problems))


def per_item_tensors(model: Recommender) -> list[tuple[str, torch.Tensor, int]]:
    """Every stored tensor (parameter or persistent buffer: the model's state, not its copy of the data) with one
    row per item (offset 0) or one per node, the items after the users (offset n_users): (name, tensor, offset).

    Found by their number of rows; when there are as many users as items, a tensor whose name says ``user`` is
    taken for a user table."""
    out = []
    for name, t in model.state_dict(keep_vars=True).items():
        if t.dim() == 0 or not t.is_floating_point():
            continue
        if model.n_users == model.n_items and "user" in name.lower():
            continue
        if t.shape[0] == model.n_items:
            out.append((name, t, 0))
        elif t.shape[0] == model.n_users + model.n_items:
            out.append((name, t, model.n_users))
    return out


def _perturb_cold_rows(model: Recommender, cold: torch.Tensor) -> list[str]:
    """Add noise to the cold items' rows of every per-item tensor; the names of the tensors changed."""
    names = []
    for name, t, offset in per_item_tensors(model):
        rows = cold.to(t.device) + offset
        t.data[rows] += torch.randn_like(t.data[rows])
        names.append(name)
    model.eval()  # drops the cached representations
    return names


def reads_features(model: Recommender) -> list[str]:
    """The modalities a model reads: those it holds a feature buffer of (the precise answer when it registered
    them), else :meth:`used_modalities`."""
    buffers = [m for m in model.modalities if hasattr(model, FEATURE_BUFFER.format(m))]
    return buffers or list(model.used_modalities())


def check_cold_rule(kit: ContractKit) -> CheckResult:
    """The model's declared ``cold_start`` holds on a cold-items split (see :class:`Recommender`)."""
    if kit.cls.cold_start not in (COLD_CONTENT, COLD_UNABLE):
        why = f"cold_start = {kit.cls.cold_start!r}: declare COLD_CONTENT or COLD_UNABLE (modalrec.models.base)"
        return CheckResult("cold rule", False, "unknown rule", why)
    if kit.cls.cold_start == COLD_UNABLE:
        return _check_unable(kit)
    return _check_content(kit)


@torch.no_grad()
def _check_unable(kit: ContractKit) -> CheckResult:
    """An ID-only model's cold items get random scores (not their untrained rows'), whatever their rows hold."""
    ds = kit.cold_dataset
    model, _ = kit.build(ds, 1)
    model.eval()
    users = torch.arange(min(model.n_users, 64), device=model.device)
    cold = torch.from_numpy(ds.cold_items).to(model.device)
    raw, ranked = model.full_scores(users), model.ranking_scores(users)
    warm = torch.ones(model.n_items, dtype=torch.bool, device=model.device)
    warm[cold] = False
    problems = []
    if not torch.equal(raw[:, warm], ranked[:, warm]):
        problems.append("ranking_scores changed warm items' scores")
    if torch.allclose(raw[:, cold], ranked[:, cold]):
        problems.append("cold items keep the scores of their untrained rows (ranking_scores must randomise them)")
    _perturb_cold_rows(model, cold)
    if not torch.equal(model.ranking_scores(users)[:, cold], ranked[:, cold]):
        problems.append("cold scores moved when the cold items' own rows changed")
    figure = f'cold_start = "unable": {len(cold)} cold items scored at random'
    if problems:
        return CheckResult("cold rule", False, figure, "; ".join(problems))
    used = reads_features(model)
    if used:
        why = (
            f'the model reads {", ".join(used)} but declares cold_start = "unable", so it is reported "unable '
            '(random)" on cold items; to score them from their features set cold_start = COLD_CONTENT and return '
            "its per-item tables in cold_overrides() (see Recommender)"
        )
        return CheckResult("cold rule", True, figure, why, warning=True)
    return CheckResult("cold rule", True, figure)


def _check_content(kit: ContractKit) -> CheckResult:
    """A content model's cold scores come from the features: they move with a cold item's features, not with
    anything stored for it (its ID rows, trainable feature copies…). After one epoch on the cold split."""
    ds = kit.cold_dataset
    trained = kit.train(ds, 1)
    model = trained.model
    users = torch.arange(min(model.n_users, MAX_USERS), device=model.device)
    cold = torch.from_numpy(ds.cold_items).to(model.device)
    with torch.no_grad():
        before = model.ranking_scores(users)[:, cold].clone()
        if not torch.isfinite(before).all():
            return CheckResult("cold rule", False, "non-finite cold scores", "cold items get NaN/inf scores")
        agree, gap = _mismatch(model.candidate_scores(users, cold), before, EXACT_TOL)
        changed = _perturb_cold_rows(model, cold)
        after = model.ranking_scores(users)[:, cold]
        rows_agree, rows_moved = _mismatch(after, before, EXACT_TOL)
    # one cold item gets other features, the weights stay
    item = int(ds.cold_items[0])
    rng = np.random.default_rng(7)
    features = {m: x.copy() for m, x in ds.features.items()}
    for x in features.values():
        x[item] = rng.normal(size=x.shape[1]).astype(np.float32) * np.abs(x).mean() * 3
    changed_ds = dataclasses.replace(ds, features=features)
    other = kit.cls(changed_ds, trained.config, GraphStore(changed_ds, cache_dir=False)).to(model.device)
    other.load_state_dict(model.state_dict())
    other.eval()
    with torch.no_grad():
        feature_moved = float((other.ranking_scores(users)[:, item] - after[:, 0]).abs().max())
    figure = (
        f'cold_start = "content": {len(cold)} cold items; scores moved {rows_moved:.1e} when their own rows '
        f"changed ({len(changed)} tensors), {feature_moved:.2g} when an item's features changed"
    )
    problems = []
    if not agree:
        problems.append(f"candidate_scores differs from ranking_scores on the cold items by up to {gap:.3g}")
    if not rows_agree:
        problems.append(
            f"cold scores depend on the cold items' own rows of {', '.join(changed)}: return those tables in "
            "cold_overrides() (e.g. self.cold_mean(self.item_emb.weight)) or override compute_cold_representations"
        )
    if not feature_moved > FEATURE_EFFECT:
        problems.append("a cold item's score ignores its features (a content model must score cold items from them)")
    return CheckResult("cold rule", not problems, figure, "; ".join(problems))
