"""How many CPU threads torch uses: ``--threads N``, else ``$MODALREC_THREADS``, else ``$OMP_NUM_THREADS``,
else the usable cores.

The default counts the cores this process may run on (``os.sched_getaffinity``: a container's or
``taskset``'s CPU set), not the machine's. On a machine shared with other CPU-bound jobs, OpenMP
threads that busy-wait at every parallel region's barrier burn the time slices the other thread
needs and training collapses; importing ``modalrec`` therefore makes waiting threads sleep
(``OMP_WAIT_POLICY=PASSIVE``, unless the environment sets it) — see :func:`prefer_passive_waiting`.
"""

from __future__ import annotations

import os
import sys

from modalrec.errors import ConfigError

THREADS_ENV = "MODALREC_THREADS"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity set), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_threads(threads: int | None = None, default: int | None = None) -> int:
    """``threads`` if given, else ``$MODALREC_THREADS``, else ``$OMP_NUM_THREADS``, else ``default`` or
    :func:`usable_cores`. The thread count can change the last bits of results (reduction order), so a
    run's count is recorded in its resume state."""
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads {threads}: must be at least 1")
        return threads
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ConfigError(f"{THREADS_ENV}={env!r}: must be a positive integer")
        return int(env)
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:  # the standard variable, when set, is the user's choice too
        return int(omp)
    return default if default is not None else usable_cores()


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count (see :func:`resolve_threads`); returns it."""
    import torch

    n = resolve_threads(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def prefer_passive_waiting() -> bool:
    """Make idle OpenMP threads sleep instead of spinning, unless the user chose a policy.

    Called when ``modalrec`` is imported. It only works before torch (and its OpenMP runtime) is
    loaded, since the runtime reads the variable once; returns whether it could still take effect.
    Measured on the shared 2-core machine at a load of ~6 (MARIO, 4 epochs of the demo data): 67.6 s
    with 2 spinning threads, 13.6 s with 2 passive threads, 13.3 s with 1 thread.
    """
    if "torch" in sys.modules:
        return False
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return True
