"""The load-test client of ``benchmarks/serve_load.py`` against a real ``modalrec serve`` process."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
from conftest import load_benchmark_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"


def load_script():
    return load_benchmark_script("serve_load")


def test_load_client_times_every_request_and_checks_the_answers(server):
    serve_load = load_script()
    port = int(re.search(r":(\d+)$", server).group(1))
    users = np.arange(40) % 100
    latencies, errors, wall = asyncio.run(serve_load.load(port, users, concurrency=4, k=10, explain=True))
    assert errors == 0
    assert latencies.shape == (40,) and (latencies > 0).all() and wall > 0


def test_load_client_counts_wrong_answers_as_errors(server):
    serve_load = load_script()
    port = int(re.search(r":(\d+)$", server).group(1))
    users = np.array([0, 1, 10_000, 2])  # user 10,000 does not exist → 404
    _, errors, _ = asyncio.run(serve_load.load(port, users, concurrency=2, k=10, explain=False))
    assert errors == 1
