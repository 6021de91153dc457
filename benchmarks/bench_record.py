"""What every benchmark record states about where it ran: the machine, its load when the script started, and
the versions of what it measured (imported by the scripts in this folder, which run with it on their path)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np
import torch


def machine_record() -> dict:
    """Platform, processor, CPU count and the load average at this moment (None where the OS has none)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


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
