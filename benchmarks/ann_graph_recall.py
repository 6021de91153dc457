"""Approximate item–item kNN graphs at catalogue sizes: build time and neighbour recall against exact.

    python benchmarks/ann_graph_recall.py --data reports/scale-data/shape-1000000x300000x10 \
        --out benchmarks/logs/ann_graph_recall.json

For each content modality of the dataset folder ``--data`` it builds the top-``--k`` cosine graph the way a
model does past ``knn_method: auto``'s threshold (:func:`modalrec.ann.ann_knn_topk`: FAISS HNSW, built on one
thread) and records the build's seconds and its neighbour recall@k against the exact graph on 1,000 seeded
sampled items (measured inside ``ann_knn_topk``, the figure a run writes in its ``graph_notes``), for:

* the raw features (the fixed graphs of FREEDOM, LATTICE, MARIO, …);
* a stand-in for MARIO's learned graphs: the features through a seeded Xavier-uniform projection to
  ``--projection-dim`` (64) dimensions, MARIO's C_m = F_m W_m at initialisation (a trained W_m is not
  measured here; a run's own rebuilds note their recall in ``metrics.json``).

``--graphs denoised`` (or ``all``) instead (or also) builds DA-MRS's denoised graphs, every modality at once, from
HNSW candidates (:func:`modalrec.graphs.approximate_cross_modal_denoised_knn`, as ``knn_method: ann`` does) and
records the build's seconds and each modality's neighbour recall against the exact denoised rule.

``--exact`` also times the exact blocked build (:func:`modalrec.graphs.knn_topk`) of the same graphs, for a
size where it is affordable. One process, torch's threads as set by ``--threads`` (the HNSW build itself is
single-threaded by design, so that the same data gives the same graph).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from bench_record import machine_record, versions_record, write_record

from modalrec.ann import HNSW_EF_CONSTRUCTION, HNSW_NEIGHBOURS, ann_knn_topk, faiss_module
from modalrec.data.dataset import load_dataset
from modalrec.graphs import approximate_cross_modal_denoised_knn, cross_modal_denoised_knn, knn_topk


def projected(features: torch.Tensor, dim: int, seed: int, block: int = 65536) -> torch.Tensor:
    """``features @ W`` with W (d × dim) Xavier-uniform from ``seed`` (MARIO's C_m at initialisation), in row
    blocks so that a memory-mapped table is read once."""
    gen = torch.Generator().manual_seed(seed)
    d = features.shape[1]
    bound = (6.0 / (d + dim)) ** 0.5
    weight = torch.empty(d, dim).uniform_(-bound, bound, generator=gen)
    out = torch.empty(features.shape[0], dim)
    for lo in range(0, features.shape[0], block):
        out[lo : lo + block] = torch.as_tensor(features[lo : lo + block], dtype=torch.float32) @ weight
    return out


def measure(table: torch.Tensor, k: int, exact: bool) -> dict:
    start = time.perf_counter()
    _, _, info = ann_knn_topk(table, k)
    row = {
        "items": info.items,
        "dim": int(table.shape[1]),
        "ann_seconds": round(time.perf_counter() - start, 2),
        "recall": round(info.recall, 4),
        "sampled_items": info.sampled_rows,
        "ef_search": info.ef_search,
    }
    if exact:
        start = time.perf_counter()
        knn_topk(table, k, stable_ties=False)
        row["exact_seconds"] = round(time.perf_counter() - start, 2)
    return row


def measure_denoised(tables: dict[str, torch.Tensor], k: int, exact: bool) -> dict:
    start = time.perf_counter()
    _, infos = approximate_cross_modal_denoised_knn(list(tables.values()), k)
    row = {
        "modality": "+".join(tables),
        "table": "DA-MRS denoised graphs (raw features, every modality's mean threshold)",
        "items": infos[0].items,
        "dim": "+".join(str(int(t.shape[1])) for t in tables.values()),
        "ann_seconds": round(time.perf_counter() - start, 2),
        "recall": {m: round(info.recall, 4) for m, info in zip(tables, infos, strict=True)},
        "items_computed_exactly": infos[0].exact_rows,  # short of surviving candidates in some modality
        "sampled_items": infos[0].sampled_rows,
        "ef_search": infos[0].ef_search,
    }
    if exact:
        start = time.perf_counter()
        cross_modal_denoised_knn(list(tables.values()), k)
        row["exact_seconds"] = round(time.perf_counter() - start, 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a dataset folder with content features")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--projection-dim", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exact", action="store_true", help="also time the exact blocked build")
    ap.add_argument(
        "--graphs", choices=("plain", "denoised", "all"), default="plain",
        help="plain: each modality's top-k graph (raw and projected); denoised: DA-MRS's; all: both",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    machine = machine_record()  # its load average: before this script's own work
    ds = load_dataset(args.data)
    if not ds.features:
        sys.exit(f"{args.data}: no content features, so no item-item graph to build")
    rows = []
    for modality, features in ds.features.items() if args.graphs != "denoised" else ():
        raw = torch.as_tensor(features[:], dtype=torch.float32)
        for kind, table in (
            ("raw features (fixed graphs)", raw),
            (f"Xavier projection to {args.projection_dim} (MARIO's C_m at init)", None),
        ):
            if table is None:
                table = projected(raw, args.projection_dim, args.seed)
            row = {"modality": modality, "table": kind, **measure(table, args.k, args.exact)}
            print(row, flush=True)
            rows.append(row)
    if args.graphs != "plain":
        tables = {m: torch.as_tensor(f[:], dtype=torch.float32) for m, f in ds.features.items()}
        rows.append(measure_denoised(tables, args.k, args.exact))
        print(rows[-1], flush=True)
    write_record(
        args.out,
        {
            "data": args.data.name,
            "k": args.k,
            "hnsw": {"M": HNSW_NEIGHBOURS, "ef_construction": HNSW_EF_CONSTRUCTION},
            "threads": args.threads,
            "machine": machine,
            "versions": versions_record(faiss=faiss_module().__version__),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
