"""The Python API: ``import modalrec as mr`` and the everyday work of a researcher is a function call.

- :func:`load_dataset` — a dataset folder (MMRec layout) as a :class:`~modalrec.data.dataset.Dataset`;
- :func:`train` — a model (its class, a spec like ``"mymodels.py:ImgLightGCN"``, or a registered name) trained with
  early stopping into a new run directory; returns a :class:`TrainedRun` holding the trained model;
- :func:`load_run`, :func:`evaluate`, :func:`recommend`, :func:`per_user_metrics` — a finished run (its folder, a
  :class:`TrainedRun` or a loaded run) re-evaluated, asked for a user's top-k, its per-user metric vectors;
- :func:`compare` — two runs compared with a paired t-test over the users both evaluated (:class:`Comparison`).

The functions take Python values where the command line takes text: ``ks=10`` or ``ks=(10, 20)``, ``out=Path(...)``;
their errors are one-line :class:`~modalrec.errors.ModalrecError` messages naming parameters, not command-line
options. Training changes process-wide torch settings (deterministic kernels, the global RNGs); :func:`train`
puts the caller's back afterwards.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from modalrec.config import Config, topk_list
from modalrec.data.dataset import Dataset
from modalrec.data.dataset import load_dataset as _read_dataset
from modalrec.errors import ConfigError, RunError
from modalrec.evaluation import EvalResult
from modalrec.experiments.significance import ALPHA, align_users, paired_ttest
from modalrec.graphs import GraphStore
from modalrec.models import Recommender, resolve_model
from modalrec.run_files import load_run_file
from modalrec.run_files import per_user_metrics as _per_user_metrics
from modalrec.run_load import LoadedRun, evaluate_run
from modalrec.run_load import load_run as _load_run
from modalrec.run_load import recommend as _recommend
from modalrec.runs import train_run
from modalrec.training import TrainResult

log = logging.getLogger("modalrec")
SPLITS = ("valid", "test")


@dataclass(repr=False)
class TrainedRun:
    """What :func:`train` returns: the run directory, the trained model, the training result and the dataset.

    ``model`` holds the best epoch's weights (those saved in ``run_dir/model.pt``) and is in eval mode;
    ``result.test.metrics`` are its test metrics (``result.valid`` the validation ones). Every function of
    this module that takes a run takes a ``TrainedRun`` too.
    """

    run_dir: Path
    model: Recommender
    result: TrainResult
    dataset: Dataset

    def __repr__(self) -> str:  # the model and the dataset would print pages
        test = self.result.test.metrics if self.result.test is not None else None
        return (
            f"TrainedRun(run_dir={str(self.run_dir)!r}, model={self.model.name}, dataset={self.dataset.name}, "
            f"best_epoch={self.result.best_epoch}, test={test})"
        )


@dataclass(frozen=True)
class Comparison:
    """A paired two-sided t-test of run A against run B on one per-user metric (:func:`compare`).

    ``mean_a``/``mean_b`` are the runs' means over the ``n_users`` users both evaluated; ``difference`` is
    ``mean_a − mean_b``; ``t`` and ``p`` are the test's statistic and p-value (NaN when A and B agree on every
    user).
    """

    run_a: Path
    run_b: Path
    metric: str
    split: str
    mean_a: float
    mean_b: float
    difference: float
    t: float
    p: float
    n_users: int

    @property
    def significant(self) -> bool:
        """Whether p < 0.05 (the significance level of the benchmark's tables)."""
        return not math.isnan(self.p) and self.p < ALPHA

    def __str__(self) -> str:
        verdict = "significant" if self.significant else "not significant"
        return (
            f"{self.metric} on {self.split}, {self.n_users} users: {self.run_a.name} {self.mean_a:.4f} vs "
            f"{self.run_b.name} {self.mean_b:.4f}, difference {self.difference:+.4f}; paired t = {self.t:.3f}, "
            f"p = {self.p:.3g} ({verdict} at {ALPHA})"
        )


RunLike = str | Path | TrainedRun | LoadedRun


def load_dataset(path: str | Path, modalities: Sequence[str] | str | None = None) -> Dataset:
    """Load and check a dataset folder (``<name>.inter`` plus ``<modality>_feat.npy`` files, MMRec's layout).

    ``modalities`` picks the feature files to load (a list, or ``"image,text"``); None loads every one.
    Anything a model could not train on is a one-line :class:`~modalrec.errors.DataError` naming the file.

    Example::

        >>> import modalrec as mr
        >>> data = mr.load_dataset("data/baby", modalities=["image", "text"])
        >>> data.n_users, data.n_items, data.modalities
    """
    if isinstance(modalities, str):
        modalities = [m.strip() for m in modalities.split(",") if m.strip()]
    return _read_dataset(path, None if modalities is None else list(modalities))


def train(
    model: str | type[Recommender],
    data: str | Path | Dataset,
    *,
    settings: Mapping[str, Any] | None = None,
    preset: str | None = None,
    out: str | Path | None = None,
    seed: int | None = None,
    modalities: Sequence[str] | str | None = None,
    quiet: bool = True,
    device: str = "cpu",
) -> TrainedRun:
    """Train ``model`` on ``data`` with early stopping into a new run directory; the trained model with its run.

    ``model`` is a :class:`~modalrec.models.base.Recommender` subclass, a spec (``"path/to/file.py:Class"``,
    ``"package.module:Class"``) or a registered name (``"LightGCN"``); ``data`` a dataset folder or a loaded
    :class:`~modalrec.data.dataset.Dataset`. ``settings`` override the model's configuration (``{"epochs": 50}``),
    ``preset`` names one of its presets, ``seed`` sets ``settings["seed"]``. The run goes to ``out`` (which must not
    exist) or to a new ``runs/<model>-<dataset>-<time>`` folder. ``quiet`` hides the per-epoch lines (warnings are
    still printed).

    Training seeds Python's, NumPy's and torch's global RNGs and turns on torch's deterministic CPU kernels; all of
    that, and torch's thread count, is set back to what the caller had once training ends (or fails).

    Example::

        >>> import modalrec as mr
        >>> trained = mr.train("LightGCN", "data/baby", settings={"epochs": 50}, seed=1)
        >>> trained.result.test.metrics["recall@20"]
        >>> mr.recommend(trained, user=12, k=10)
    """
    if isinstance(model, Recommender):
        raise ConfigError(
            f"model: pass the class ({type(model).__name__}), not an instance: train builds it from the data and "
            "the settings"
        )
    cls = resolve_model(model)
    if isinstance(data, Dataset):
        if modalities is not None:
            raise ConfigError("modalities: applies to a dataset folder; select them with mr.load_dataset(path, ...)")
        dataset = data
    else:
        dataset = load_dataset(data, modalities)
    overrides = dict(settings or {})
    if seed is not None:
        overrides["seed"] = seed
    with caller_global_state():
        run_dir, result = train_run(
            cls, dataset.path, overrides=overrides, preset=preset, out=out, device=device, quiet=quiet, dataset=dataset
        )
        trained = _model_of_run(run_dir, cls, dataset, device)
    return TrainedRun(run_dir, trained, result, dataset)


def _model_of_run(run_dir: Path, cls: type[Recommender], dataset: Dataset, device: str) -> Recommender:
    """The model a run just saved (its best weights), rebuilt on the dataset in memory, in eval mode.

    Built from ``model.pt`` rather than kept from training, so it is exactly what :func:`load_run` gives later,
    without reading the dataset again (or needing it on disk: an in-memory dataset has no folder).
    """
    saved = load_run_file(run_dir / "model.pt")
    model = cls(dataset, Config(saved["config"]), GraphStore(dataset, device=device)).to(device)
    model.load_state_dict(saved["state_dict"])
    return model.eval()


@contextlib.contextmanager
def caller_global_state() -> Iterator[None]:
    """Within the block anything may change torch's global settings; afterwards they are as the caller had them.

    Restored: deterministic mode (and its ``warn_only`` flag), ``torch.utils.deterministic.fill_uninitialized_memory``,
    the Python, NumPy and torch (CPU, and CUDA when available) RNG states and torch's intra-op thread count — what
    training sets process-wide (``modalrec.training.runtime.deterministic_cpu_kernels``, ``seed_everything``).
    """
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    python_rng, numpy_rng, torch_rng = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)
        torch.set_rng_state(torch_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def load_run(run: RunLike, *, device: str = "cpu", data_dir: str | Path | None = None) -> LoadedRun:
    """A finished run's model rebuilt from its directory (the dataset is read again and checked against it).

    ``data_dir`` points to the dataset when it moved since training. The model is the one the run records; opening
    a run runs no code stored in it.

    Example::

        >>> import modalrec as mr
        >>> run = mr.load_run("runs/LightGCN-baby-20250101-120000")
        >>> run.model, run.metrics["test"]["recall@20"]
    """
    if isinstance(run, LoadedRun):
        return run
    if isinstance(run, TrainedRun):
        metrics_path = run.run_dir / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        return LoadedRun(run.run_dir, run.model, run.dataset, run.model.config, metrics)
    return _load_run(run, device, data_dir)


def evaluate(
    run: RunLike,
    split: str = "test",
    ks: int | Sequence[int] | None = (10, 20, 50),
    *,
    mode: str | None = None,
    mask_valid: bool | None = None,
    device: str = "cpu",
) -> EvalResult:
    """Full-ranking metrics of a run on ``split`` (``"valid"`` or ``"test"``) at the cut-offs ``ks``.

    ``ks`` is one cut-off (``10``) or several (``[10, 20]``); None takes the run's own ``topk``. A cut-off above the
    number of items is capped at it, with a logged warning. ``mode`` (``"warm"``, ``"cold"``, ``"all"``: which items
    compete) and ``mask_valid`` default to the run's settings.

    Example::

        >>> import modalrec as mr
        >>> result = mr.evaluate("runs/LightGCN-baby-20250101-120000", "test", ks=20)
        >>> result.metrics["ndcg@20"], result.per_user["ndcg@20"].shape
    """
    if split not in SPLITS:
        raise ConfigError(f"split {split!r}: use 'valid' or 'test'")
    loaded = load_run(run, device=device)
    cutoffs = None if ks is None else topk_list(_as_list(ks), "ks", loaded.dataset.n_items, log.warning)
    return evaluate_run(loaded, split, cutoffs, mask_valid, mode)


def _as_list(ks: int | Sequence[int]) -> list[Any]:
    """``ks`` as the list :func:`~modalrec.config.topk_list` checks: one int, or any sequence (NumPy ints too)."""
    if isinstance(ks, int | np.integer) and not isinstance(ks, bool):
        return [int(ks)]
    if isinstance(ks, str | bool) or not isinstance(ks, Sequence | np.ndarray | range):
        raise ConfigError(f"ks: {ks!r} is not a cut-off or a list of cut-offs (give e.g. 10 or [10, 20])")
    return [int(k) if isinstance(k, np.integer) else k for k in ks]


def recommend(
    run: RunLike, user: int, k: int = 10, explain: bool = False, *, exclude_seen: bool = True, device: str = "cpu"
) -> dict[str, Any]:
    """The top-``k`` items of ``user`` as a JSON-ready dict (``items``: id, score, title …), as ``modalrec recommend``.

    ``explain`` adds each item's per-modality weights where the model has them; ``exclude_seen`` leaves out the
    user's training items. A user without training interactions gets the most popular items (marked ``fallback``).

    Example::

        >>> import modalrec as mr
        >>> top = mr.recommend("runs/MARIO-baby-20250101-120000", user=12, k=5, explain=True)
        >>> [(item["item"], item["score"]) for item in top["items"]]
    """
    return _recommend(load_run(run, device=device), user, k, explain, exclude_seen)


def per_user_metrics(run: RunLike, split: str = "test") -> dict[str, np.ndarray]:
    """A finished run's per-user metrics on ``split``: ``users`` and one vector per metric (``"recall@20"``, …).

    These are the values a paired test compares (see :func:`compare`); a split the run has none for is a one-line
    :class:`~modalrec.errors.RunError` naming the run, the split and the splits it has.

    Example::

        >>> import modalrec as mr
        >>> pu = mr.per_user_metrics("runs/LightGCN-baby-20250101-120000", "test")
        >>> pu["users"][:5], pu["recall@20"][:5]
    """
    return _per_user_metrics(_run_dir(run), split)


def compare(run_a: RunLike, run_b: RunLike, metric: str = "recall@20", split: str = "test") -> Comparison:
    """Paired two-sided t-test of run A against run B on ``metric`` over the users both runs evaluated on ``split``.

    The per-user values come from the runs' ``<split>_per_user.npz`` (what training wrote); the test is
    :func:`modalrec.experiments.significance.paired_ttest`, the one the benchmark's significance tables use. Runs on
    different data cannot be paired: that is a :class:`~modalrec.errors.RunError`.

    Example::

        >>> import modalrec as mr
        >>> mine = mr.train("mymodels.py:ImgLightGCN", "data/baby", seed=1)
        >>> base = mr.train("LightGCN", "data/baby", seed=1)
        >>> print(mr.compare(mine, base, "recall@20"))
        recall@20 on test, 1944 users: ImgLightGCN-… 0.1012 vs LightGCN-… 0.0951, difference +0.0061; …
    """
    dir_a, dir_b = _run_dir(run_a), _run_dir(run_b)
    _check_same_data(dir_a, dir_b)
    metric = metric.lower()
    values = []
    for run_dir in (dir_a, dir_b):
        pu = _per_user_metrics(run_dir, split)
        if metric not in pu:
            has = ", ".join(k for k in pu if k != "users")
            raise RunError(f"{run_dir}: no per-user {metric!r} on {split} (it has: {has})")
        values += [pu["users"], pu[metric]]
    users, a, b = align_users(*values)
    test = paired_ttest(a, b)
    return Comparison(
        run_a=dir_a,
        run_b=dir_b,
        metric=metric,
        split=split,
        mean_a=float(a.mean()) if a.size else math.nan,
        mean_b=float(b.mean()) if b.size else math.nan,
        difference=test.mean_diff,
        t=test.statistic,
        p=test.pvalue,
        n_users=int(users.size),
    )


def _run_dir(run: RunLike) -> Path:
    if isinstance(run, TrainedRun):
        return run.run_dir
    if isinstance(run, LoadedRun):
        return run.path
    return Path(run)


def _check_same_data(dir_a: Path, dir_b: Path) -> None:
    """Refuse two runs whose ``config.yaml`` record datasets of different content (their users do not pair)."""
    prints = []
    for run_dir in (dir_a, dir_b):
        path = run_dir / "config.yaml"
        data = (yaml.safe_load(path.read_text()) or {}).get("data") if path.is_file() else None
        prints.append((data or {}).get("fingerprint"))
    if None not in prints and prints[0] != prints[1]:
        raise RunError(f"{dir_a} and {dir_b} were trained on different data (content hashes differ); cannot pair users")
