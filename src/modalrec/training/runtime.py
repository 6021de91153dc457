"""Process-wide settings training relies on (allocator, deterministic kernels) and its peak memory."""

from __future__ import annotations

import resource
import sys

import torch

from modalrec.allocator import keep_freed_memory_in_process, release_freed_memory

__all__ = [
    "deterministic_cpu_kernels",
    "keep_freed_memory_in_process",
    "peak_memory_mb",
    "release_freed_memory",
]


def deterministic_cpu_kernels(device: torch.device) -> None:
    """Make torch's CPU kernels bit-reproducible across runs, whatever the thread timing.

    With several intra-op threads, the CPU kernel of ``index_put_(..., accumulate=True)``
    (the backward of every ``table[index]`` gather) adds rows with atomic float adds, so the
    summation order, hence the last bits of a gradient, follow the thread timing: two runs
    of one seed drifted apart after a few epochs. torch's deterministic mode switches such
    kernels to their serial versions; filling new uninitialised memory with NaN (part of
    that mode) is turned off as it costs time and changes no result. CPU only: on CUDA the
    mode would demand a cuBLAS workspace setting and is not promised there. Process-wide.

    The switch is set on torch's core directly unless the compiler stack is already loaded:
    ``torch.use_deterministic_algorithms`` also sets ``torch._inductor.config.deterministic``,
    and importing that module (dynamo, inductor) cost 1.6 s of every run's start-up for
    eager kernels that never read it. A model that compiles itself imports inductor first,
    and then gets the full call.
    """
    if device.type != "cpu":
        return
    set_core_flag = getattr(torch._C, "_set_deterministic_algorithms", None)
    if "torch._inductor.config" in sys.modules or set_core_flag is None:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        set_core_flag(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False


def peak_memory_mb(device: torch.device) -> float:
    """Peak resident memory of the process (CPU) or peak allocated GPU memory, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20
