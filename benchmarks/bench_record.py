"""What every benchmark record states about where it ran: the machine, its load when the script started, and
the versions of what it measured (imported by the scripts in this folder, which run with it on their path)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

# the vector extensions that decide how fast a float32 product can run (AVX-512 doubles AVX2's FMA width)
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """The CPU's model name, its family / model / stepping numbers (a virtual machine may show a generic name:
    the numbers still tell its generation) and which of :data:`SIMD_FLAGS` it has, from ``cpuinfo`` (None where
    unreadable).

    Why: the same ``platform`` string has named hosts whose dense GEMM ran at 190 and at 420 GFLOP/s on two
    threads (issue #30's epoch-limit records), so a figure compared across days needs the CPU it ran on.
    """
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return {"cpu_model": platform.processor() or None, "cpu_id": None, "simd": None}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    numbers = [fields.get(k) for k in ("cpu family", "model", "stepping")]
    return {
        "cpu_model": fields.get("model name"),
        "cpu_id": None if None in numbers else "family {} model {} stepping {}".format(*numbers),
        "simd": [f for f in SIMD_FLAGS if f in flags] if flags else None,
    }


def cpu_line(cpu: dict | None = None) -> str:
    """The CPU as one phrase: its model name and, in brackets, its family / model / stepping numbers (of ``cpu``,
    a :func:`cpu_description`; this machine's when None)."""
    cpu = cpu_description() if cpu is None else cpu
    name = cpu["cpu_model"] or "CPU model unknown"
    return f"{name} ({cpu['cpu_id']})" if cpu["cpu_id"] else name


def machine_record() -> dict:
    """Platform, CPU (model and vector extensions), CPU count and the load average at this moment (None where
    the OS has none)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        **cpu_description(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def machine_summary() -> str:
    """One line for the records that state their machine as text: architecture, CPU, vector extensions, core
    count."""
    cpu = cpu_description()
    extensions = ", ".join(cpu["simd"]) if cpu["simd"] else "extensions unknown"
    return f"{platform.machine()}, {cpu_line(cpu)}, {extensions}, {os.cpu_count()} CPU cores"


def versions_record(**extra: str) -> dict:
    """Python, modalrec, torch and NumPy versions, plus ``extra`` (e.g. ``faiss=faiss.__version__``)."""
    import modalrec

    return {
        "python": platform.python_version(),
        "modalrec": modalrec.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        **extra,
    }


def write_record(out: Path | None, result: dict) -> None:
    """Write ``result`` as indented JSON to ``out`` (its folder made as needed) and say so; nothing when None."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
