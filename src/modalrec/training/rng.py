"""Every random state training draws from: seeding it, and capturing/restoring it for a bit-exact resume."""

from __future__ import annotations

import copy
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Reset Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def capture_rng_state(sampler_rng: np.random.Generator, device: torch.device) -> dict[str, Any]:
    """Every random state training draws from: Python, NumPy (global and the sampler's), torch (CPU, CUDA).

    Per-epoch graph samplers and models' dropout/noise draw from torch's global generator, so
    restoring it restores them too.
    """
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "sampler": copy.deepcopy(sampler_rng.bit_generator.state),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], sampler_rng: np.random.Generator, device: torch.device) -> None:
    """Inverse of :func:`capture_rng_state` (the CUDA state only when training on CUDA and it was saved)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    sampler_rng.bit_generator.state = state["sampler"]
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state_all(state["cuda"])
