"""Load test of ``modalrec serve``: requests/s and latency of ``k=10`` recommendations.

Trains a cheap model on a Baby-shaped synthetic dataset (19,445 users, 7,050 items, image
4096-d, text 384-d; SYNTHETIC data) into a temporary folder — or serves an existing run
with ``--run`` — starts ``modalrec serve`` on 127.0.0.1 (a free port, in a subprocess),
sends a bounded number of ``GET /users/{u}/recommendations?k=10`` requests for random
users over a fixed number of concurrent connections, and prints requests/s and the
p50/p90/p99 latency. Requests only ever go to 127.0.0.1.

    python benchmarks/serve_load.py [--run RUN] [--model LightGCN] [--epochs 1]
                                    [--requests 2000] [--concurrency 16] [--k 10] [--explain]

The client runs on the same machine as the server, so on a small machine its CPU use
counts against the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

HOST = "127.0.0.1"  # never any other address


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def train_baby_run(root: Path, model: str, epochs: int, shape: str) -> Path:
    """Write a synthetic dataset of the given shape to ``root/data`` and train ``model`` on it."""
    from modalrec.data.dataset import write_dataset
    from modalrec.data.synth import synthetic_dataset
    from modalrec.runs import train_run

    start = time.perf_counter()
    ds = synthetic_dataset(shape)
    data = write_dataset(
        root / "data",
        ds.name,
        ds.users,
        ds.items,
        ds.labels,
        ds.timestamps,
        None,
        ds.features,
        ds.item_titles,
    )
    print(f"dataset {ds.name}: {ds.n_users} users, {ds.n_items} items ({time.perf_counter() - start:.1f}s)", flush=True)
    start = time.perf_counter()
    run, _ = train_run(model, data, overrides={"epochs": epochs}, out=root / "run", quiet=True, cache_dir=False)
    print(f"trained {model} for {epochs} epoch(s) in {time.perf_counter() - start:.1f}s: {run}", flush=True)
    return run


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def start_server(run: Path, port: int, timeout: float = 300.0) -> subprocess.Popen:
    """``modalrec serve RUN`` on 127.0.0.1:port; returns once /health answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "modalrec.cli", "serve", str(run), "--host", HOST, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    start = time.perf_counter()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stdout.read().decode(errors='replace')}")
        try:
            if httpx.get(f"http://{HOST}:{port}/health", timeout=1).status_code == 200:
                print(f"server ready in {time.perf_counter() - start:.1f}s", flush=True)
                return proc
        except httpx.HTTPError:
            pass
        if time.perf_counter() - start > timeout:
            proc.kill()
            raise SystemExit(f"server did not answer /health within {timeout:.0f}s")
        time.sleep(0.25)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 response with a Content-Length (what uvicorn sends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def load(port: int, users: np.ndarray, concurrency: int, k: int, explain: bool) -> tuple[np.ndarray, int, float]:
    """Send one request per entry of ``users`` over ``concurrency`` keep-alive connections.

    A minimal HTTP/1.1 client on raw asyncio streams, like ``wrk``: client and server share
    the machine's cores, and a full-featured client (httpx) spent twice the server's CPU
    per request, which measured the client more than the server. Every response is still
    checked (status 200, k items). Returns (latencies in s, errors, wall s).
    """
    latencies = np.zeros(len(users))
    errors = 0
    next_index = 0
    query = f"k={k}&explain={str(explain).lower()}"

    async def worker() -> None:
        nonlocal next_index, errors
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while next_index < len(users):
                i = next_index
                next_index += 1
                request = f"GET /users/{int(users[i])}/recommendations?{query} HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
                t0 = time.perf_counter()
                writer.write(request.encode())
                status, body = await _read_response(reader)
                latencies[i] = time.perf_counter() - t0
                if status != 200 or len(json.loads(body)["items"]) != k:
                    errors += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return latencies, errors, wall


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, help="Serve this run directory instead of training one.")
    p.add_argument("--model", default="LightGCN", help="Model to train when --run is not given.")
    p.add_argument("--keep", type=Path, help="Train into this new folder (kept) instead of a temporary one.")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--shape", default="baby", help="Synthetic dataset shape (default, baby, sports, clothing).")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--warmup", type=int, default=50, help="Requests sent (and not timed) before the run.")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--explain", action="store_true", help="Ask for explanations too.")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 256:
        raise SystemExit("--requests must be in 1..100000 and --concurrency in 1..256")

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        root = args.keep if args.keep is not None else Path(tmp)
        run = args.run or train_baby_run(root, args.model, args.epochs, args.shape)
        port = free_port()
        proc = start_server(run, port)
        try:
            n_users = httpx.get(f"http://{HOST}:{port}/info", timeout=10).json()["users"]
            rng = np.random.default_rng(args.seed)
            if args.warmup:
                asyncio.run(load(port, rng.integers(0, n_users, args.warmup), args.concurrency, args.k, args.explain))
            users = rng.integers(0, n_users, args.requests)
            cpu0, client0 = process_cpu_seconds(proc.pid), time.process_time()
            lat, errors, wall = asyncio.run(load(port, users, args.concurrency, args.k, args.explain))
            cpu1, client1 = process_cpu_seconds(proc.pid), time.process_time()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    ms = lat * 1000
    print(
        f"{args.requests} requests (k={args.k}, explain={args.explain}) over {args.concurrency} connections "
        f"on {os.cpu_count()} CPU(s): {args.requests / wall:.0f} requests/s; "
        f"latency p50 {np.percentile(ms, 50):.1f} ms, p90 {np.percentile(ms, 90):.1f} ms, "
        f"p99 {np.percentile(ms, 99):.1f} ms, max {ms.max():.1f} ms; "
        f"errors {errors}"
    )
    if cpu0 is not None and cpu1 is not None:
        print(
            f"CPU per request: server {1000 * (cpu1 - cpu0) / args.requests:.2f} ms, "
            f"load client {1000 * (client1 - client0) / args.requests:.2f} ms "
            f"(wall {wall:.1f}s; other processes on the machine share the same cores)"
        )


if __name__ == "__main__":
    main()
