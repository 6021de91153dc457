"""Seconds per training epoch (and peak memory) of a model on a dataset-shaped synthetic set.

python benchmarks/train_epoch.py --model LightGCN --shape baby [--epochs 3] [--set n_layers=2]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from modalrec.config import parse_overrides
from modalrec.data.synth import synthetic_dataset
from modalrec.models.base import Batch
from modalrec.runs import prepare_model
from modalrec.training import NegativeSampler, keep_freed_memory_in_process, peak_memory_mb


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--shape", default="baby")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", action="append", default=[], help="config override key=value")
    args = ap.parse_args(argv)
    # what `modalrec train` does at its start (MODALREC_DEFAULT_MALLOC=1 measures without it)
    tuned = keep_freed_memory_in_process()

    ds = synthetic_dataset(args.shape)
    n_train = int((ds.labels == 0).sum())
    print(
        f"dataset {ds.name}: {ds.n_users} users, {ds.n_items} items, {n_train} training interactions, "
        f"modalities {', '.join(f'{m}:{x.shape[1]}' for m, x in ds.features.items())}"
    )
    t0 = time.perf_counter()
    model, config, _ = prepare_model(args.model, ds, parse_overrides(args.set), device=args.device, cache_dir=False)
    print(f"model built in {time.perf_counter() - t0:.1f}s (graphs included); batch size {config.train_batch_size}")
    opt = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    u, i = ds.split("train")
    sampler = NegativeSampler(u, i, ds.n_items, np.random.default_rng(0))
    times = []
    for epoch in range(args.epochs):
        start = time.perf_counter()
        model.train()
        model.pre_epoch(epoch)
        total = 0.0
        for bu, bp, bn in sampler.epoch(config.train_batch_size):
            batch = Batch(*(torch.from_numpy(a).to(args.device) for a in (bu, bp, bn)))
            opt.zero_grad(set_to_none=True)
            loss = model.loss(batch)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        times.append(time.perf_counter() - start)
        n_b = math.ceil(n_train / config.train_batch_size)
        print(f"epoch {epoch}: {times[-1]:.2f}s  mean loss {total / n_b:.4f}")
    print(
        f"{args.model} on {args.shape}: {np.median(times):.2f}s per epoch (median of {len(times)}), "
        f"peak memory {peak_memory_mb(torch.device(args.device)):.0f} MiB, threads {torch.get_num_threads()}, "
        f"freed memory kept in process: {tuned}"
    )


if __name__ == "__main__":
    main()
