"""Where a MeAIM training step's FLOPs go, term by term, in the default and the large-data mode.

    python benchmarks/meaim_loss_flops.py --shape baby --out benchmarks/logs/meaim_loss_flops_baby.json

On the synthetic set of the named shape, one batch of ``train_batch_size`` random (user, positive, negative)
triples: the FLOPs of the dense and sparse–dense products (``epoch_limit.FlopCount``) of the forward of
each part of the loss — the representations (steps 1–4 over all users and items), the pairwise heads
(Eq. 10 on 2B pairs), the contrastive term and the KL term — and of the whole step, forward and backward.
Counting only: nothing is timed, so the machine's load does not matter.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from bench_record import machine_record, versions_record, write_record
from epoch_limit import FlopCount, shape_dataset

from modalrec.config import resolve_config
from modalrec.models import resolve_model
from modalrec.models.base import Batch
from modalrec.runs import prepare_model
from modalrec.training.large_data import apply_large_data_mode


def count_terms(shape: str, factor: float, large: bool) -> dict:
    ds = shape_dataset(shape, factor)
    cls = resolve_model("MeAIM")
    config = apply_large_data_mode(resolve_config(cls, ds.name, {"large_data": "always"} if large else {}), ds, cls)
    model, config, _ = prepare_model(cls, ds, device="cpu", cache_dir=False, config=config)
    model.train()
    size = int(config.train_batch_size)
    g = torch.Generator().manual_seed(0)
    batch = Batch(*(torch.randint(0, n, (size,), generator=g) for n in (ds.n_users, ds.n_items, ds.n_items)))
    terms = {}

    def count(name: str, fn) -> object:
        counter = FlopCount()
        with counter:
            out = fn()
        terms[name] = round(counter.total / 1e9, 3)
        return out

    users, items = count("representations", model.forward_representations)
    pairs_u = [torch.cat([t[batch.users]] * 2) for t in users]
    pairs_i = [torch.cat([t[batch.pos], t[batch.neg]]) for t in items]
    count("pair heads", lambda: model.pair_forward(pairs_u, pairs_i))
    count("contrastive (InfoNCE)", lambda: model.contrastive_loss(users, items, batch))
    count("KL", lambda: model.kl_loss(users, items, batch))
    count("whole step, forward and backward", lambda: model.loss(batch).backward())
    return {
        "large_data": large,
        "batch_size": size,
        "cl_candidates": int(config.cl_candidates),
        "kl_candidates": int(config.kl_candidates),
        "gflop_forward_by_term": {k: v for k, v in terms.items() if not k.startswith("whole")},
        "gflop_whole_step": terms["whole step, forward and backward"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="baby")
    ap.add_argument("--factor", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    ds = shape_dataset(args.shape, args.factor)
    rows = [count_terms(args.shape, args.factor, large) for large in (False, True)]
    for row in rows:
        mode = "large-data mode" if row["large_data"] else "default"
        print(f"{mode}: forward GFLOP by term {row['gflop_forward_by_term']}; whole step {row['gflop_whole_step']}")
    result = {
        "script": "benchmarks/meaim_loss_flops.py",
        "shape": args.shape,
        "factor": args.factor,
        "users": ds.n_users,
        "items": ds.n_items,
        "machine": machine_record(),
        "versions": versions_record(),
        "rows": rows,
    }
    write_record(args.out, result)


if __name__ == "__main__":
    main()
