"""The process's C allocator (glibc): keep freed memory for reuse while training, hand it back between phases."""

from __future__ import annotations

import ctypes
import os
import sys

_ALLOCATOR_TUNED = False
_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL | None:
    global _LIBC
    if _LIBC is None and sys.platform.startswith("linux"):
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            return None
    return _LIBC


def keep_freed_memory_in_process() -> bool:
    """Stop glibc from returning large freed blocks to the kernel after every training step.

    By default glibc serves each allocation above 128 KiB-32 MiB with its own ``mmap`` and
    unmaps it on free, so every step re-faults the pages of its (batch × d) and sparse
    temporaries: on the Baby shape this page-fault traffic was up to half of an epoch of
    BM3/FREEDOM on 2 cores (and half of a LightGCN epoch at 311k users × 113k items). With
    ``M_MMAP_MAX = 0`` and a high trim threshold the freed memory stays in the heap and is
    reused; the memory a phase leaves free is handed back at phase boundaries by
    :func:`release_freed_memory`. Linux/glibc only (a no-op elsewhere); set
    ``MODALREC_DEFAULT_MALLOC=1`` to keep the system's behaviour. Returns whether the setting was applied.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if os.environ.get("MODALREC_DEFAULT_MALLOC") == "1":
        return False
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    ok = bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))
    _ALLOCATOR_TUNED = ok
    return ok


def release_freed_memory() -> bool:
    """Hand the heap's free pages back to the kernel (glibc ``malloc_trim(0)``), when
    :func:`keep_freed_memory_in_process` has switched returning them off.

    Why: a heap that never shrinks keeps what one phase freed, and the next phase's large blocks
    (an evaluation's (users × items) score blocks after a training epoch's propagation temporaries)
    rarely fit its holes, so the phases' memory stacked: at 311k users × 113k items LightGCN's peak was
    6.9 GB against 3.5 GB with the system allocator. Called at the boundaries of a large evaluation; the
    next training step re-faults its pages once. Returns whether anything was asked of the allocator.
    """
    if not _ALLOCATOR_TUNED:
        return False
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True
