"""The one trainer: sampling, optimisation, early stopping, best-weight restore, one test pass.

:func:`fit` is the entry point; :class:`Trainer` holds the loop (one method per phase) and its
:class:`TrainState`; :class:`Callback` hooks in (progress, resume states, interrupts, pruning —
:mod:`modalrec.training.callbacks`). The sampler, RNG and process settings live in their own modules.
"""

from modalrec.training.fitting import fit
from modalrec.training.progress import format_duration
from modalrec.training.rng import capture_rng_state, restore_rng_state, seed_everything
from modalrec.training.runtime import deterministic_cpu_kernels, keep_freed_memory_in_process, peak_memory_mb
from modalrec.training.sampler import NegativeSampler
from modalrec.training.state import TRAINER_KEYS, TrainingStopped, TrainResult, TrainState
from modalrec.training.trainer import Callback, Trainer, checkpoint_interval, make_optimizer

__all__ = [
    "TRAINER_KEYS",
    "Callback",
    "NegativeSampler",
    "TrainResult",
    "TrainState",
    "Trainer",
    "TrainingStopped",
    "capture_rng_state",
    "checkpoint_interval",
    "deterministic_cpu_kernels",
    "fit",
    "format_duration",
    "keep_freed_memory_in_process",
    "make_optimizer",
    "peak_memory_mb",
    "restore_rng_state",
    "seed_everything",
]
