"""The large-data mode: an epoch whose cost grows linearly with the data (docs/scale.md#large-data-mode).

Under MMRec's protocol a graph model recomputes the whole propagation (O(E·d·L)) for every mini-batch of a
fixed size B, so an epoch costs (E / B) · O(E·d·L) — quadratic in the number of training interactions E;
BPR's dense Adam step over the (U + I) × d tables makes its epoch (E / B) · O((U + I)·d), quadratic too.
The large-data mode fixes the number of optimiser steps per epoch instead of the batch size:

    B = max(train_batch_size, ⌈E / large_data_steps⌉),

so an epoch is ``large_data_steps`` steps whatever E, each linear in the data; and early stopping
validates on a fixed, seeded sample of ``large_data_valid_users`` valid users (the best epoch is then
validated on all of them, and test always ranks everyone). A model whose step grows faster than the data
for reasons of its own states, in its settings' ``large_data_settings:`` section, what it changes in the
mode (MARIO: learned graphs refreshed once per epoch; MeAIM: sampled contrastive and KL candidates).

``large_data: auto`` (the default) turns it on when the training split has at least ``large_data_from``
interactions — above every dataset of the MMRec papers, so their protocol and reproduced numbers are
untouched; ``always`` / ``never`` force it. The mode is resolved once, into the run's configuration
(``train_batch_size``, ``valid_user_sample``), before the model is built, so what a run stores is what it
used; resolving an already resolved configuration changes nothing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from modalrec.config import ModelRef, large_data_settings_of, load_defaults
from modalrec.errors import ConfigError

if TYPE_CHECKING:
    from modalrec.config import Config
    from modalrec.data.dataset import Dataset

LARGE_DATA_CHOICES = ("auto", "always", "never")
SGD_LR_RULES = ("scale", "keep")


def large_data_active(config: Config | dict[str, Any], n_train: int) -> bool:
    """Whether the large-data mode applies to a run of ``config`` on ``n_train`` training interactions."""
    mode = str(config.get("large_data", "never")).lower()
    if mode not in LARGE_DATA_CHOICES:
        raise ConfigError(
            f"large_data must be one of {', '.join(LARGE_DATA_CHOICES)}; got {config.get('large_data')!r}"
        )
    if mode == "auto":
        return n_train >= int(config.get("large_data_from", 1_000_000))
    return mode == "always"


def sgd_lr_rule(config: Config | dict[str, Any]) -> str | None:
    """``large_data_sgd_lr`` (``scale`` or ``keep``) when the run steps by plain SGD, None under Adam."""
    if str(config.get("optimizer", "adam")).lower() != "sgd":
        return None
    rule = str(config.get("large_data_sgd_lr", "scale")).lower()
    if rule not in SGD_LR_RULES:
        raise ConfigError(f"large_data_sgd_lr must be one of {', '.join(SGD_LR_RULES)}; got {rule!r}")
    return rule


def large_data_settings(config: Config | dict[str, Any], n_train: int) -> dict[str, int | float]:
    """The (``train_batch_size``, ``valid_user_sample``, and for plain SGD ``learning_rate``) the large-data
    mode gives; {} when it is off.

    Plain SGD on the batch-mean loss moves each pair by learning_rate / B, so a batch the mode raises from B to
    B' would shrink every pair's step B'/B times (118× at the 1M target from 1,024): with
    ``large_data_sgd_lr: scale`` (the default) the learning rate is raised by the same factor, the linear
    scaling rule (Goyal et al., 2017). Adam's step does not shrink with the batch, so Adam is left alone.
    """
    if not large_data_active(config, n_train):
        return {}
    steps = int(config.get("large_data_steps", 64))
    if steps < 1:
        raise ConfigError(f"large_data_steps = {steps}: must be ≥ 1")
    batch = int(config["train_batch_size"])
    out: dict[str, int | float] = {"train_batch_size": max(batch, math.ceil(n_train / steps))}
    if sgd_lr_rule(config) == "scale" and out["train_batch_size"] > batch:
        out["learning_rate"] = float(config["learning_rate"]) * out["train_batch_size"] / batch
    if not int(config.get("valid_user_sample", 0)):
        out["valid_user_sample"] = int(config.get("large_data_valid_users", 0))
    return out


def apply_large_data_mode(config: Config, dataset: Dataset, model: ModelRef = None) -> Config:
    """``config`` with the large-data mode's batch size and validation sample filled in when the mode is on,
    and ``model``'s ``large_data_settings:`` (e.g. MARIO's graph refresh per epoch) on every key where the
    configuration keeps the model's default — a value the user set is never replaced.

    Idempotent: a configuration it already resolved (a stored run's) comes back unchanged.
    """
    n_train = int(dataset.split("train")[0].size)
    changes = large_data_settings(config, n_train)
    if changes and model is not None:
        defaults = load_defaults(model)[0]
        for key, value in large_data_settings_of(model).items():
            if config.get(key) == defaults.get(key):
                changes[key] = value
    changes = {k: v for k, v in changes.items() if config.get(k) != v}
    return config.replace(**changes) if changes else config


def describe_large_data(config: Config, n_train: int, n_batches: int) -> str | None:
    """The log line announcing the large-data mode (None when it is off)."""
    if not large_data_active(config, n_train):
        return None
    why = (
        f"{n_train:,} training interactions ≥ large_data_from {int(config.large_data_from):,}"
        if str(config.large_data).lower() == "auto"
        else "large_data: always"
    )
    sgd, rule = "", sgd_lr_rule(config)
    if rule is not None:
        how = "scaled with the batch" if rule == "scale" else "not scaled"
        sgd = f"; plain SGD, learning rate {float(config.learning_rate):g} ({how}, large_data_sgd_lr: {rule})"
    return (
        f"large-data mode ({why}; --set large_data=never for MMRec's protocol): {n_batches} steps per epoch of "
        f"{int(config.train_batch_size):,} pairs{sgd} (docs/scale.md#large-data-mode)"
    )
