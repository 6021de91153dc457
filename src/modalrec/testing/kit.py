"""The contract kit's parts: the report, the data, and the trainings its checks share (see :mod:`modalrec.testing`)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modalrec.config import Config
from modalrec.data.dataset import Dataset, clean_interactions
from modalrec.data.split import split_cold_items
from modalrec.data.synth import synthetic_dataset
from modalrec.errors import ModalrecError
from modalrec.models import Recommender
from modalrec.runs import prepare_model
from modalrec.training import Callback, Trainer, TrainResult, fit

# The built-in check data: large enough that a random top-20 is clearly beaten, small enough to train in seconds.
CHECK_DATA = {"n_users": 300, "n_items": 250, "modalities": {"image": 32, "text": 16}, "seed": 5}
# Settings of the kit's trainings, on top of the model's defaults (and its ``tiny`` preset when it has one).
CHECK_SETTINGS = {"learning_rate": 0.01, "train_batch_size": 256, "topk": [10, 20]}
DEFAULT_EPOCHS = 10
SAME_SEED_EPOCHS = 2
COLD_RATIO, COLD_SEED = 0.2, 3
RANDOM_K = 20
# the checks, in the order of the report; all but the last use the main training
CHECK_NAMES = (
    "loss",
    "beats random",
    "ranking paths",
    "candidate scores",
    "same seed",
    "save/load",
    "explanation",
    "cold rule",
)


@dataclass(frozen=True)
class CheckResult:
    """One check: its ``name``, whether it passed, its ``figure`` (what was measured) and, unless it passed
    cleanly, ``why``. A ``warning`` passes but says what to look at."""

    name: str
    ok: bool
    figure: str
    why: str = ""
    warning: bool = False

    @property
    def status(self) -> str:
        return "FAIL" if not self.ok else "WARN" if self.warning else "PASS"

    def __str__(self) -> str:
        return f"{self.status} {self.name}: {self.figure}" + (f" — {self.why}" if self.why else "")


@dataclass
class ModelCheckReport:
    """The checks of one model; ``ok`` when none failed; ``str`` gives one line per check."""

    model: str
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def __getitem__(self, name: str) -> CheckResult:
        """The check called ``name`` (one of :data:`CHECK_NAMES`)."""
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(f"no check {name!r} (the checks: {', '.join(CHECK_NAMES)})")

    def __str__(self) -> str:
        return "\n".join(str(c) for c in self.checks)


# ---------------------------------------------------------------------- data
@functools.lru_cache(maxsize=1)
def check_dataset() -> Dataset:
    """The kit's default data: :data:`CHECK_DATA` from the built-in synthetic generator (treat as read-only)."""
    return synthetic_dataset("default", **CHECK_DATA)


def expected_random_recall(dataset: Dataset, k: int = RANDOM_K) -> float:
    """E[Recall@k] of a uniformly random ranking on ``dataset``'s test split.

    Each test user ranks its n_items − |train_u| unmasked items (valid items stay rankable), so each of its test
    items lands in the top k with probability k / (n_items − |train_u|); averaged over the users.
    """
    test_users = np.unique(dataset.split("test")[0])
    n_train = np.diff(dataset.train_matrix.indptr)[test_users]
    return float(np.mean(np.minimum(1.0, k / (dataset.n_items - n_train))))


def cold_items_split(dataset: Dataset, ratio: float = COLD_RATIO, seed: int = COLD_SEED) -> Dataset:
    """``dataset`` re-split in memory by the cold-items protocol (:func:`~modalrec.data.split.split_cold_items`):
    a ``ratio`` of the items lose every training interaction and are held out by item for valid and test."""
    labels, cold, cold_labels = split_cold_items(dataset.items, dataset.n_items, ratio, seed, source=dataset.name)
    keep, _ = clean_interactions(dataset.users, dataset.items, labels, dataset.timestamps)
    return dataclasses.replace(
        dataset,
        name=f"{dataset.name}-cold",
        users=dataset.users[keep],
        items=dataset.items[keep],
        labels=labels[keep],
        timestamps=None if dataset.timestamps is None else dataset.timestamps[keep],
        path=None,
        warnings=[],
        cold_items=cold,
        cold_labels=cold_labels,
    )


# ---------------------------------------------------------------------- trainings shared by the checks
def weights_digest(model: torch.nn.Module) -> str:
    """A hash of every tensor in ``model``'s state dict (bit-level equality of two models' weights)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _DigestAt(Callback):
    """Remembers the weights' digest at the end of one epoch (before the best weights are restored)."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.digest = epoch, None

    def on_epoch_end(self, trainer: Trainer, epoch: int, line: str) -> None:
        if epoch == self.epoch:
            self.digest = weights_digest(trainer.model)


@dataclass
class Training:
    """A model trained by the kit, its configuration and result, and its weights' digest (:meth:`ContractKit.train`)."""

    model: Recommender
    config: Config
    result: TrainResult
    digest: str | None


def _quiet(_line: str) -> None:
    pass


class ContractKit:
    """The trainings the checks share: the model's settings with :data:`CHECK_SETTINGS`, a fixed seed."""

    def __init__(
        self,
        cls: type[Recommender],
        dataset: Dataset,
        epochs: int,
        seed: int | None,
        settings: dict[str, Any] | None,
        preset: str | None,
    ) -> None:
        self.cls, self.dataset, self.epochs = cls, dataset, epochs
        self.settings = {**CHECK_SETTINGS, **(settings or {}), **({"seed": seed} if seed is not None else {})}
        self.preset = preset
        self.main: Training | None = None
        self.main_error: str | None = None

    def build(self, dataset: Dataset, epochs: int) -> tuple[Recommender, Config]:
        """A new (seeded) model on ``dataset`` with the kit's settings and ``epochs`` (no early stop before)."""
        overrides = {**self.settings, "epochs": epochs, "stopping_step": epochs}
        model, config, _ = prepare_model(self.cls, dataset, overrides, preset=self.preset, cache_dir=False)
        return model, config

    def train(self, dataset: Dataset, epochs: int) -> Training:
        """A seeded training of ``epochs`` epochs on ``dataset``; the weights' digest is taken after epoch
        min(:data:`SAME_SEED_EPOCHS`, ``epochs``) − 1, what a same-seed training compares."""
        model, config = self.build(dataset, epochs)
        digest = _DigestAt(min(SAME_SEED_EPOCHS, epochs) - 1)
        result = fit(model, dataset, config, log=_quiet, callbacks=[digest])
        model.eval()
        return Training(model, config, result, digest.digest)

    def train_main(self) -> None:
        """The main training: ``epochs`` epochs; a failure is kept for the checks that need it."""
        try:
            self.main = self.train(self.dataset, self.epochs)
        except ModalrecError:
            raise  # a setting or dataset the model refuses: one line, before any check
        except Exception as exc:
            self.main_error = failure(exc)

    @functools.cached_property
    def cold_dataset(self) -> Dataset:
        return self.dataset if self.dataset.has_cold_items else cold_items_split(self.dataset)


def failure(exc: BaseException) -> str:
    """``Type: message (at file:line)`` of an exception raised inside a check (its innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0] if message else ''}{where}"
