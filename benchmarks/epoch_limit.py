"""A model's training epoch against the arithmetic it needs: counted FLOPs at this machine's GEMM rate.

    python benchmarks/epoch_limit.py --models LightGCN,MARIO,MeAIM --shape baby \
        --out benchmarks/logs/epoch_limit_baby.json
    python benchmarks/epoch_limit.py --models "MARIO:graph_refresh=epoch" --large ...
    python benchmarks/epoch_limit.py --models "LightGCN;MeAIM:beta_cl=0,lambda_kl=0" --large \
        --modalities image:256,text:128      # the scale table's feature sizes instead of the shape's

For each model (``NAME`` or ``NAME:key=value,key=value`` for a setting), on a synthetic set of the named
shape (``modalrec.data.synth.SHAPES``), through the same model code ``modalrec train`` runs:

* **FLOPs per step**, counted while one training step runs (forward, backward and the model's own
  per-step work, e.g. MARIO's learned graphs with ``graph_refresh: forward``): every dense matrix
  product (``mm``, ``addmm``, ``bmm``, ``baddbmm``: 2·m·n·k) and every sparse–dense product
  (2·nnz·n), split by operator. Element-wise work, ``topk``, sorting and sparse-graph assembly are
  not counted: they are the overhead a limit leaves out. Per-epoch work outside the steps
  (``pre_epoch``, e.g. MARIO's graphs with ``graph_refresh: epoch``) is counted once.
* **The limit**: the epoch's FLOPs (steps × FLOPs per step + per-epoch FLOPs) at the machine's
  dense GEMM rate, measured on a 2048³ float32 product with the same thread count just before and
  just after the model's timed epochs (their mean: this machine's speed drifts by about ±10 % over
  minutes) — the time the arithmetic of the model's equations would take if every FLOP ran as fast as
  a large GEMM.
* **The products alone**: each counted product's signature (operator, operand shapes and strides) run again
  by itself on fresh random operands (sparse ones: the model's own graph), the best of 3, times its calls:
  what the counted products cost at the speed this machine gives each shape, with nothing in between. The
  limit assumes the 2048³ rate for every product; thin products (one side d = 64) run slower, and this
  says how much of an epoch's distance from its limit is theirs (``products_alone_gflops``) and how much is
  everything else (``epoch_over_products_alone``), with the slowest signatures per step.
* **The epoch**: the best of ``--epochs`` timed epochs (after ``--warmup`` steps; the GEMM rate is a
  best of 5 too), with Adam and the process set-up (the allocator keeping freed memory, deterministic
  kernels, the OpenMP waiting policy) as ``modalrec train`` uses them, and its ratio to the limit; plus
  the operators that took the most time in a profiled run of ``--profile-steps`` steps (torch.profiler,
  self CPU time).

``--large`` applies the large-data mode (``large_data: always``: 64 steps per epoch and the
model's ``large_data_settings``) as ``modalrec train`` would. The JSON (``--out``) records the
machine, the versions and the load average at the start: the figures mean something only on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# isort: off
import modalrec  # noqa: F401 - before torch, so the OpenMP waiting policy is the one `modalrec train` gets

# isort: on
import numpy as np
import torch
from bench_record import machine_record, versions_record, write_record
from torch.utils._python_dispatch import TorchDispatchMode

from modalrec.config import parse_overrides, resolve_config
from modalrec.data.synth import SHAPES, synthetic_dataset
from modalrec.models import resolve_model
from modalrec.models.base import Batch
from modalrec.runs import prepare_model
from modalrec.training import NegativeSampler, deterministic_cpu_kernels, keep_freed_memory_in_process
from modalrec.training.large_data import apply_large_data_mode

aten = torch.ops.aten
# every overload (default, out=, in place): the fused loss kernels write into buffers and accumulate in place
DENSE = ("mm", "addmm", "addmm_", "bmm", "baddbmm", "baddbmm_")


def _is_sparse(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.layout != torch.strided


def _nnz(t: torch.Tensor) -> int:
    return int(t._nnz()) if t.layout == torch.sparse_coo else int(t.values().numel())


@dataclass(frozen=True)
class DenseOperand:
    """A dense tensor argument of a counted product, kept as its layout only (not its values or memory)."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype

    def materialise(self) -> torch.Tensor:
        """A random tensor of this shape, strides and dtype (a view when the strides overlap, as an expand's)."""
        extent = 1 + sum((n - 1) * st for n, st in zip(self.shape, self.stride, strict=True) if n > 0)
        return torch.randn(max(extent, 1), dtype=self.dtype).as_strided(self.shape, self.stride)


def _signature_part(value: Any) -> Any:
    """How one argument enters a product's signature: dense tensors by layout, sparse ones by shape and stored
    entries, anything else as it is."""
    if isinstance(value, torch.Tensor):
        if _is_sparse(value):
            return ("sparse", value.layout, tuple(value.shape), _nnz(value))
        return DenseOperand(tuple(value.shape), tuple(value.stride()), value.dtype)
    return tuple(value) if isinstance(value, list) else value


def _replay_argument(value: Any) -> Any:
    return value.materialise() if isinstance(value, DenseOperand) else value


def _kept_argument(value: Any, part: Any) -> Any:
    """What a product's replay keeps of one argument: a sparse operand itself (the model's graph: its structure
    decides the speed), anything else its signature part."""
    return value if isinstance(value, torch.Tensor) and _is_sparse(value) else part


@dataclass
class ProductCalls:
    """The counted products of one signature (operator, operand shapes and strides): how many ran, their FLOPs,
    and the arguments to run one again (dense operands by layout, sparse ones the graph itself)."""

    func: Any
    args: tuple
    kwargs: dict
    calls: int = 0
    flops: float = 0.0
    seconds_alone: float | None = None

    def time_alone(self, repeats: int = 3) -> float:
        """The best of ``repeats`` runs of one such product by itself, on fresh random operands."""
        args = [_replay_argument(a) for a in self.args]
        kwargs = {k: _replay_argument(v) for k, v in self.kwargs.items()}
        self.func(*args, **kwargs)
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            self.func(*args, **kwargs)
            best = min(best, time.perf_counter() - start)
        self.seconds_alone = best
        return best

    def describe(self) -> dict[str, Any]:
        """The signature's operator and operand shapes, its calls, their time alone and their rate."""
        operands = [
            list(a.shape) if isinstance(a, DenseOperand) else f"sparse {list(a.shape)}, {_nnz(a):,} stored"
            for a in [*self.args, *self.kwargs.values()]
            if isinstance(a, DenseOperand) or isinstance(a, torch.Tensor)
        ]
        seconds = (self.seconds_alone or 0.0) * self.calls
        return {
            "op": self.func.overloadpacket.__name__,
            "operands": operands,
            "calls": self.calls,
            "ms_alone": round(seconds * 1e3, 3),
            "gflops_alone": round(self.flops / seconds / 1e9, 1) if seconds > 0 else None,
        }


class FlopCount(TorchDispatchMode):
    """Counts the FLOPs of dense and sparse–dense matrix products run under it, by operator, and keeps one
    replayable call per signature so :meth:`time_products_alone` can time each shape by itself."""

    def __init__(self) -> None:
        super().__init__()
        self.by_op: dict[str, float] = defaultdict(float)
        self.products: dict[tuple, ProductCalls] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        mats = [a for a in args if isinstance(a, torch.Tensor)]
        flops = 0.0
        if any(_is_sparse(a) for a in mats):
            sparse = next(a for a in mats if _is_sparse(a))
            dense = [a for a in mats if not _is_sparse(a) and a.dim() == 2]
            if dense and name in ("mm", "addmm", "_sparse_mm", "_sparse_addmm", "_sparse_csr_mm"):
                flops = 2.0 * _nnz(sparse) * dense[-1].shape[1]
                self.by_op[f"sparse {name}"] += flops
        elif name in DENSE:
            a, b = (args[1], args[2]) if name.startswith(("addmm", "baddbmm")) else (args[0], args[1])
            batch = a.shape[0] if a.dim() == 3 else 1
            flops = 2.0 * batch * a.shape[-2] * a.shape[-1] * b.shape[-1]
            self.by_op[name.rstrip("_")] += flops
        if flops:
            self._remember(func, args, kwargs, flops)
        return out

    def _remember(self, func: Any, args: tuple, kwargs: dict, flops: float) -> None:
        parts = tuple(_signature_part(a) for a in args)
        named = {k: _signature_part(v) for k, v in kwargs.items()}
        key = (func, parts, tuple(sorted(named.items())))
        calls = self.products.get(key)
        if calls is None:
            calls = self.products[key] = ProductCalls(
                func,
                tuple(_kept_argument(a, p) for a, p in zip(args, parts, strict=True)),
                {k: _kept_argument(v, named[k]) for k, v in kwargs.items()},
            )
        calls.calls += 1
        calls.flops += flops

    @property
    def total(self) -> float:
        return float(sum(self.by_op.values()))

    def time_products_alone(self) -> float:
        """Seconds the counted products take when each runs by itself, one after another at the best speed this
        machine gives its own shape: what the counted work would cost with nothing else in between."""
        return sum(p.calls * p.time_alone() for p in self.products.values())


def gemm_rate(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n³ float32 product on ``threads`` threads (the best of ``repeats``)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def parse_model(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``NAME:key=value,key=value`` → (name, overrides)."""
    name, _, sets = spec.partition(":")
    return name.strip(), parse_overrides([s for s in sets.split(",") if s.strip()])


@functools.lru_cache(maxsize=1)
def shape_dataset(shape: str, factor: float, modalities: tuple[tuple[str, int], ...] | None = None):
    """The synthetic set of ``shape`` with its users and items scaled by ``factor`` (1: the shape itself) and,
    when given, the (name, dimension) ``modalities`` instead of the shape's features."""
    overrides: dict[str, Any] = {} if modalities is None else {"modalities": dict(modalities)}
    if factor != 1:
        base = SHAPES[shape]
        overrides["n_users"] = max(20, round(base["n_users"] * factor))
        overrides["n_items"] = max(20, round(base["n_items"] * factor))
    return synthetic_dataset(shape, **overrides)


def parse_modalities(text: str | None) -> tuple[tuple[str, int], ...] | None:
    """``image:256,text:128`` → (("image", 256), ("text", 128)); None keeps the shape's own features."""
    if not text:
        return None
    parsed = []
    for part in text.split(","):
        name, _, dim = part.partition(":")
        if not name.strip() or not dim.strip().isdigit() or int(dim) < 1:
            sys.exit(f"--modalities: NAME:DIMENSION pairs separated by commas, e.g. image:256,text:128; got {part!r}")
        parsed.append((name.strip(), int(dim)))
    return tuple(parsed)


def measure(spec: str, shape: str, large: bool, args: argparse.Namespace) -> dict[str, Any]:
    name, overrides = parse_model(spec)
    ds = shape_dataset(shape, args.factor, args.modality_dims)
    cls = resolve_model(name)
    if large:
        overrides = {**overrides, "large_data": "always"}
    config = apply_large_data_mode(resolve_config(cls, ds.name, overrides), ds, cls)
    model, config, _ = prepare_model(cls, ds, device="cpu", cache_dir=False, config=config)
    opt = torch.optim.Adam(model.parameters(), lr=float(config.learning_rate), weight_decay=float(config.weight_decay))
    u, i = ds.split("train")
    batch_size = int(config.train_batch_size)
    steps = math.ceil(len(u) / batch_size)

    def batches(seed: int):
        sampler = NegativeSampler(u, i, ds.n_items, np.random.default_rng(seed))
        for bu, bp, bn in sampler.epoch(batch_size):
            yield Batch(*(torch.from_numpy(a) for a in (bu, bp, bn)))

    def step(batch: Batch) -> None:
        opt.zero_grad(set_to_none=True)
        model.loss(batch).backward()
        opt.step()

    model.train()
    per_epoch = FlopCount()
    with per_epoch:
        model.pre_epoch(0)
    per_step = FlopCount()
    first = next(batches(0))
    with per_step:
        step(first)
    warm = batches(1)
    for _ in range(args.warmup):
        step(next(warm))
    # this machine's speed drifts by ±10 % over minutes: the GEMM rate is measured beside each model's epochs
    # (before and after, the mean of the two) and the epoch is the best of --epochs, as the rate is a best of 5
    rate_before = gemm_rate(args.threads)
    epoch_times = []
    for e in range(args.epochs):
        start = time.perf_counter()
        model.pre_epoch(1 + e)
        for batch in batches(2 + e):
            step(batch)
        epoch_times.append(time.perf_counter() - start)
    epoch_seconds = min(epoch_times)
    rate = (rate_before + gemm_rate(args.threads)) / 2
    # the same products, each shape by itself at the best speed this machine gives it, nothing in between
    alone = steps * per_step.time_products_alone() + per_epoch.time_products_alone()
    slowest = sorted(per_step.products.values(), key=lambda p: p.calls * (p.seconds_alone or 0.0), reverse=True)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for n, batch in enumerate(batches(3)):
            if n >= args.profile_steps:
                break
            step(batch)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_self = sum(e.self_cpu_time_total for e in events) or 1.0
    flops = steps * per_step.total + per_epoch.total
    limit = flops / rate
    row = {
        "model": name,
        "overrides": {k: v for k, v in overrides.items() if k != "large_data"},
        "large_data": large,
        "shape": shape,
        "modalities": {m: int(x.shape[1]) for m, x in ds.features.items()},
        "factor": args.factor,
        "users": ds.n_users,
        "items": ds.n_items,
        "train_interactions": int(len(u)),
        "batch_size": batch_size,
        "steps": steps,
        "gflop_per_step": round(per_step.total / 1e9, 3),
        "gflop_per_step_by_op": {k: round(v / 1e9, 3) for k, v in sorted(per_step.by_op.items())},
        "gflop_per_epoch_outside_steps": round(per_epoch.total / 1e9, 3),
        "gflop_per_epoch": round(flops / 1e9, 2),
        "limit_seconds": round(limit, 3),
        "gemm_gflops_beside": round(rate / 1e9, 1),
        "epoch_seconds": round(epoch_seconds, 3),
        "epoch_seconds_all": [round(t, 3) for t in epoch_times],
        "epoch_over_limit": round(epoch_seconds / limit, 2) if limit > 0 else None,
        "products_alone_seconds": round(alone, 5),
        "products_alone_gflops": round(flops / alone / 1e9, 1) if alone > 0 else None,
        "epoch_over_products_alone": round(epoch_seconds / alone, 2) if alone > 0 else None,
        "slowest_products_per_step": [p.describe() for p in slowest[: args.top_ops]],
        "profile_steps": args.profile_steps,
        "top_ops_self_cpu_share": {e.key: round(e.self_cpu_time_total / total_self, 3) for e in events[: args.top_ops]},
    }
    print(
        f"{spec}{' (large-data mode)' if large else ''} on {shape}: {steps} steps of {batch_size}, "
        f"{row['gflop_per_epoch']:.1f} GFLOP/epoch → limit {limit:.2f} s; epoch {epoch_seconds:.2f} s "
        f"({row['epoch_over_limit']}× the limit); its products alone {alone:.2f} s "
        f"({row['products_alone_gflops']} GFLOP/s)",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="LightGCN,MARIO,MeAIM", help="NAME or NAME:key=value,… separated by ';'")
    ap.add_argument("--shape", default="baby", help=f"One of {', '.join(SHAPES)}.")
    ap.add_argument("--factor", type=float, default=1.0, help="Scale the shape's users and items (tests: 0.05).")
    ap.add_argument(
        "--modalities",
        default=None,
        help="NAME:DIM,… features instead of the shape's (the scale table's sets: image:256,text:128).",
    )
    ap.add_argument("--large", action="store_true", help="Apply the large-data mode (large_data: always).")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--warmup", type=int, default=2, help="Steps run before the timed epochs.")
    ap.add_argument("--epochs", type=int, default=1, help="Timed epochs per model; the best counts.")
    ap.add_argument("--profile-steps", type=int, default=3)
    ap.add_argument("--top-ops", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.shape not in SHAPES or args.factor <= 0:
        sys.exit(f"--shape: one of {', '.join(SHAPES)}; --factor > 0")
    args.modality_dims = parse_modalities(args.modalities)
    specs = [s for s in (args.models.split(";") if ";" in args.models else args.models.split(",")) if s.strip()]
    if not specs:
        sys.exit("--models: give at least one model")
    machine = machine_record()  # the load average before this script's own work
    # the process set-up of `modalrec train` (Trainer): without it every step re-faults its freed temporaries,
    # which made a MARIO step about a fifth longer (measured by hand; records before this line was added)
    tuned = keep_freed_memory_in_process()
    deterministic_cpu_kernels(torch.device("cpu"))
    args.rate = gemm_rate(args.threads)
    print(
        f"dense GEMM rate: {args.rate / 1e9:.1f} GFLOP/s on {args.threads} thread(s); "
        f"load average {machine['load_average']}"
    )
    rows = [measure(spec, args.shape, args.large, args) for spec in specs]
    result = {
        "script": "benchmarks/epoch_limit.py",
        "command": " ".join(["benchmarks/epoch_limit.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine,
        "versions": versions_record(),
        "threads": args.threads,
        "freed_memory_kept_in_process": tuned,
        "openmp_waiting": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")},
        "gemm_gflops": round(args.rate / 1e9, 1),
        "rows": rows,
    }
    write_record(args.out, result)


if __name__ == "__main__":
    main()
