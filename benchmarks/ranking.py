"""Full-ranking evaluation speed on a Baby-shaped synthetic dataset.

Prints the seconds of one full-ranking evaluation (top-20, training-item masking, all
metrics at 10 and 20) through modalrec's Evaluator, and the ratio to the bare blocked
``topk(U @ Vᵀ)`` on the same arrays (no masking, no metrics).

    python benchmarks/ranking.py [--model BPR] [--shape baby] [--repeats 3] [--block 4096]
                                 [--naive-block 256]

With ``--naive-block N`` and a model that has ``naive_pair_scores`` (MeAIM), it also
times the naive per-pair path on an N-user block against all items versus the model's
fast ``full_scores`` on the same block, and prints the speed-up and the largest
difference between the two.
"""

from __future__ import annotations

import argparse
import sys
import time
import types

import torch

from modalrec.data.synth import synthetic_dataset
from modalrec.evaluation import Evaluator
from modalrec.runs import prepare_model


def bare_topk(user_repr: torch.Tensor, item_repr: torch.Tensor, users: torch.Tensor, k: int, block: int) -> float:
    start = time.perf_counter()
    for lo in range(0, len(users), block):
        torch.topk(user_repr[users[lo : lo + block]] @ item_repr.T, k, dim=1)
    return time.perf_counter() - start


def naive_vs_fast(model, users: torch.Tensor, n_items: int, repeats: int) -> None:
    """Time ``naive_pair_scores`` on a user block × all items against ``full_scores`` on it."""
    device = users.device
    items = torch.arange(n_items, device=device)
    with torch.no_grad():
        fast_times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            fast = model.full_scores(users)
            fast_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        naive = model.naive_pair_scores(users.repeat_interleave(n_items), items.repeat(len(users)))
        naive_s = time.perf_counter() - start
    naive = naive.view(len(users), n_items)
    diff = float((fast - naive).abs().max())
    f = min(fast_times)
    print(
        f"naive per-pair heads on {len(users)} users × {n_items} items: {naive_s:.3f}s; "
        f"fast full_scores on the same block: {f:.4f}s (best of {len(fast_times)}); "
        f"speed-up {naive_s / f:.1f}x; max |fast - naive| {diff:.2e}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="BPR")
    ap.add_argument("--shape", default="baby")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--block", type=int, default=4096)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", action="append", default=[], help="config override key=value")
    ap.add_argument(
        "--naive-block",
        type=int,
        default=0,
        help="also time the naive per-pair path on this many users (models with naive_pair_scores)",
    )
    args = ap.parse_args(argv)
    from modalrec.config import parse_overrides

    t0 = time.perf_counter()
    ds = synthetic_dataset(args.shape)
    print(
        f"dataset {ds.name}: {ds.n_users} users, {ds.n_items} items, {len(ds.users)} interactions "
        f"({time.perf_counter() - t0:.1f}s to generate)"
    )
    model, config, _ = prepare_model(
        args.model,
        ds,
        {"eval_batch_size": args.block, **parse_overrides(args.set)},
        device=args.device,
        cache_dir=False,
    )
    model.eval()
    ev = Evaluator(ds, "test", ks=(10, 20), block_size=args.block, device=args.device)
    users = torch.from_numpy(ev.users).to(args.device)
    with torch.no_grad():
        reps = model.representations()  # computed once, like the evaluator does
    ours, bare = [], []
    for _ in range(args.repeats):
        model.eval()  # clears the cache, so every evaluation recomputes the representations
        ours.append(ev.evaluate(model).seconds)
        if isinstance(reps, tuple) and len(reps) == 2 and all(isinstance(r, torch.Tensor) for r in reps):
            bare.append(bare_topk(reps[0], reps[1], users, 20, args.block))
    best = min(ours)
    print(
        f"{args.model}: full-ranking evaluation of {len(users)} users × {ds.n_items} items "
        f"(top-20, masking, recall/ndcg/precision/map/hit @10,20): {best:.3f}s (best of {args.repeats})"
    )
    if bare:
        b = min(bare)
        print(f"bare blocked topk(U @ V^T): {b:.3f}s   ratio {best / b:.2f}")
    if args.naive_block > 0:
        if hasattr(model, "naive_pair_scores"):
            model.eval()
            naive_vs_fast(model, users[: args.naive_block], ds.n_items, args.repeats)
        else:
            print(f"--naive-block: {args.model} has no naive_pair_scores; skipped")
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}")


if __name__ == "__main__":
    sys.modules.setdefault("benchmarks", types.ModuleType("benchmarks"))
    main()
