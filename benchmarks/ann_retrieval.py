"""ANN retrieval at catalogue sizes: index build time and memory, recall@10, single-query latency exact vs ANN.

    python benchmarks/ann_retrieval.py --items 100000,1000000 --out benchmarks/logs/ann_retrieval.json

For each number of items and each of ``--clusters`` (200 and 0) it generates (seeded) an item table of
``--dim`` (64) dimensions — C Gaussian centres, each item a centre plus noise (C = 0: no clusters, every item
N(0, I)), its norm then scaled by e^N(0, σ) (``--norm-spread`` σ = 0.25; trained item tables have unequal
norms, and the spread is what makes maximum inner product search hard) — and ``--queries`` (1,000) query
(user) vectors drawn the same way. For each index kind of ``--kinds`` (ivf, hnsw) it then measures what
``modalrec index --kind …`` and ``--ann`` do, through the same code (:mod:`modalrec.ann`,
:class:`modalrec.run_index.ItemIndex`):

* the index build (one thread; IVF: √I cells from k-means, inner product; HNSW over the MIPS→L2 rows, M 32,
  efConstruction 80): seconds, ``index.ntotal``, the serialised bytes (what ``item_index.faiss`` holds) and
  the growth of the process's resident memory during the build;
* the search effort chosen by ``modalrec index``'s rule (the smallest nprobe of 1·2^i or efSearch of
  128·2^i reaching recall@10 0.95, or ``--effort``) and the recall@10 against exact ranking on the queries
  at each effort tried;
* the latency of one request, p50 and p99 over ``--latency-queries`` queries, torch and FAISS on one
  thread (a server request): exact = one GEMV over every item + top-10; ANN = the search for max(100, 10·k)
  candidates + their exact re-rank + top-10 (``ItemIndex.retrieve``).

The JSON (``--out``) records the machine and the versions. The figures mean something only on an otherwise
idle machine; the output says how loaded it was (load average) when it started.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_record import machine_record, versions_record, write_record

from modalrec.ann import (
    HNSW_EF_CONSTRUCTION,
    HNSW_NEIGHBOURS,
    INDEX_KINDS,
    IVF_TRAIN_PER_LIST,
    RETRIEVAL_NEEDS,
    build_mips_index,
    effort_name,
    exact_kth_scores,
    faiss_module,
    index_to_bytes,
    mips_recall,
    search_effort_range,
    search_mips,
    tune_search_effort,
)
from modalrec.run_index import ItemIndex

K = 10


def clustered_table(
    n_items: int, n_queries: int, dim: int, clusters: int, spread: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(items, queries) float32: cluster centres N(0, I), members centre + N(0, 0.5² I) (``clusters`` 0: every row
    N(0, I), no clusters), item norms × e^N(0, spread)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(clusters, 1), dim)).astype(np.float32)

    def draw(n: int) -> np.ndarray:
        if clusters == 0:
            return rng.standard_normal((n, dim))
        return centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, dim))

    items = np.empty((n_items, dim), dtype=np.float32)
    for lo in range(0, n_items, 100_000):  # in blocks: the float64 temporaries stay small at 1M items
        n = min(100_000, n_items - lo)
        items[lo : lo + n] = draw(n) * rng.lognormal(0.0, spread, (n, 1))
    return items, draw(n_queries).astype(np.float32)


def rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def measure(n_items: int, clusters: int, kind: str, args: argparse.Namespace) -> dict:
    """Every figure for one table and one index kind."""
    items, queries = clustered_table(n_items, args.queries, args.dim, clusters, args.norm_spread, args.seed)
    before = rss_bytes()
    start = time.perf_counter()
    index = build_mips_index(items, kind=kind)
    build_seconds = time.perf_counter() - start
    rss_growth = rss_bytes() - before
    size = len(index_to_bytes(index))
    start = time.perf_counter()
    kth = exact_kth_scores(queries, items, K)
    exact_recall_seconds = time.perf_counter() - start

    def recall_at(ef: int) -> float:
        return mips_recall(queries, items, search_mips(index, queries, max(100, 10 * K), ef), K, kth)

    if args.effort is None:
        first, last = search_effort_range(index)
        ef, tried = tune_search_effort(recall_at, start=first, limit=last)
    else:
        ef, tried = args.effort, {args.effort: recall_at(args.effort)}
    table, users = torch.from_numpy(items), torch.from_numpy(queries)
    idx = ItemIndex(index, users, table, np.ones(n_items, dtype=bool), {}, ef)
    n_lat = min(args.latency_queries, args.queries)
    exact_s, ann_s = [], []
    faiss = faiss_module(*RETRIEVAL_NEEDS)
    threads = (torch.get_num_threads(), faiss.omp_get_max_threads())
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        for q in range(n_lat):
            t0 = time.perf_counter()
            torch.topk(table @ users[q], K)
            t1 = time.perf_counter()
            idx.retrieve(q, K)
            t2 = time.perf_counter()
            exact_s.append(t1 - t0)
            ann_s.append(t2 - t1)
    finally:
        torch.set_num_threads(threads[0])
        faiss.omp_set_num_threads(threads[1])
    row = {
        "items": n_items,
        "clusters": clusters,
        "kind": kind,
        **({"nlist": int(index.nlist)} if kind == "ivf" else {}),
        "dim": args.dim,
        "build_seconds": round(build_seconds, 2),
        "ntotal": int(index.ntotal),
        "index_bytes": size,
        "build_rss_growth_bytes": rss_growth,
        "search_effort": {"name": effort_name(kind), "value": ef},
        "recall_at_10": round(tried[ef], 4),
        "recall_by_effort": {str(e): round(r, 4) for e, r in tried.items()},
        "recall_queries": args.queries,
        "exact_kth_seconds": round(exact_recall_seconds, 2),
        "latency_queries": n_lat,
        "exact_latency": percentiles(exact_s),
        "ann_latency": percentiles(ann_s),
    }
    row["speedup_p50"] = round(row["exact_latency"]["p50_ms"] / max(row["ann_latency"]["p50_ms"], 1e-9), 2)
    print(
        f"{n_items:>9,} items, {clusters} clusters, {kind}: build {build_seconds:.1f} s, {size / 2**20:.0f} MiB, "
        f"{row['search_effort']['name']} {ef}, "
        f"recall@10 {tried[ef]:.3f}; p50 exact {row['exact_latency']['p50_ms']:.2f} ms vs "
        f"ANN {row['ann_latency']['p50_ms']:.2f} ms",
        flush=True,
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", default="100000,1000000", help="Comma-separated item counts.")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=1000, help="Seeded query sample for the recall.")
    ap.add_argument("--latency-queries", type=int, default=1000, help="Single queries timed (of the sample).")
    ap.add_argument("--clusters", default="200,0", help="Comma-separated cluster counts (0: no clusters).")
    ap.add_argument("--kinds", default="ivf,hnsw", help=f"Comma-separated index kinds ({', '.join(INDEX_KINDS)}).")
    ap.add_argument("--norm-spread", type=float, default=0.25, help="σ of the log item norms.")
    ap.add_argument("--effort", type=int, default=None, help="Fixed nprobe/efSearch (default: modalrec index's rule).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write.")
    args = ap.parse_args()
    try:
        sizes = [int(x) for x in args.items.split(",") if x.strip()]
        clusters = [int(x) for x in args.clusters.split(",") if x.strip()]
    except ValueError:
        sys.exit(f"--items {args.items!r} / --clusters {args.clusters!r}: give counts like 100000,1000000")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or set(kinds) - set(INDEX_KINDS) or min(clusters, default=-1) < 0:
        sys.exit(f"--kinds: some of {', '.join(INDEX_KINDS)}; --clusters: counts ≥ 0")
    if not sizes or min(sizes) < 1 or args.queries < 1 or args.dim < 1:
        sys.exit("--items, --queries and --dim must be positive")
    faiss = faiss_module(*RETRIEVAL_NEEDS)
    result = {
        "script": "benchmarks/ann_retrieval.py",
        "command": " ".join(sys.argv),
        "machine": machine_record(),
        "versions": versions_record(faiss=faiss.__version__),
        "settings": {
            "hnsw": {"M": HNSW_NEIGHBOURS, "ef_construction": HNSW_EF_CONSTRUCTION, "build_threads": 1},
            "ivf": {"nlist": "round(sqrt(items))", "train_rows_per_list": IVF_TRAIN_PER_LIST, "build_threads": 1},
            "k": K,
            "candidates": "max(100, 10*k), re-ranked exactly",
            "norm_spread": args.norm_spread,
            "seed": args.seed,
        },
        "results": [measure(n, c, kind, args) for n in sizes for c in clusters for kind in kinds],
    }
    write_record(args.out, result)


if __name__ == "__main__":
    main()
