"""How many CPU threads torch uses: ``--threads N``, else ``$MODALREC_THREADS``, else ``$OMP_NUM_THREADS``,
else the usable cores.

The default counts the cores this process may run on (``os.sched_getaffinity``: a container's or
``taskset``'s CPU set), not the machine's. On a machine shared with other CPU-bound jobs, OpenMP
threads that busy-wait at every parallel region's barrier burn the time slices the other thread
needs and training collapses; on an idle machine, threads that sleep at once pay a wake-up at every one
of the many small parallel regions of a small model's step. Importing ``modalrec`` therefore chooses how
waiting threads wait from the load it finds (unless the environment sets a policy) — see
:func:`choose_openmp_waiting`.
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


SHORT_SPIN = 10_000  # libgomp spin iterations before a waiting thread sleeps: tens of microseconds


def openmp_waiting_for(load: float, cores: int) -> dict[str, str]:
    """The OpenMP waiting setting for a machine at 1-minute ``load`` with ``cores`` usable cores.

    Idle (load below ``cores − 0.5``): a short bounded spin, ``GOMP_SPINCOUNT`` = :data:`SHORT_SPIN` —
    MARIO on the demo data, 20 epochs, idle 2-core machine: 0.18–0.21 s per epoch against 0.33–0.34 s
    with sleeping threads (libgomp's own default spins 300,000 iterations). Busy: ``OMP_WAIT_POLICY=PASSIVE``
    — at a load of ~6, MARIO on the demo data took 67.6 s with 2 spinning threads, 13.6 s with 2 passive
    threads and 13.3 s with 1 thread.
    """
    if load < cores - 0.5:
        return {"GOMP_SPINCOUNT": str(SHORT_SPIN)}
    return {"OMP_WAIT_POLICY": "PASSIVE"}


def choose_openmp_waiting() -> dict[str, str]:
    """Set how idle OpenMP threads wait (:func:`openmp_waiting_for` at this moment's load), unless the user
    set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``.

    Called when ``modalrec`` is imported. It only works before torch (and its OpenMP runtime) is loaded,
    since the runtime reads the variables once; returns what it set ({} when it could not or need not).
    """
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return {}
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average (not Unix): sleeping threads are the safe choice
        load = float("inf")
    chosen = openmp_waiting_for(load, usable_cores())
    os.environ.update(chosen)
    return chosen
