"""Cornac's BPR on our amazon_scientific_mm split, scored by a plain full ranking (issue #13 §1b).

Cornac is not a dependency of modalrec; run this in its own environment:

    python3 -m venv /tmp/cornac && /tmp/cornac/bin/pip install cornac==3.0.1
    /tmp/cornac/bin/python benchmarks/peers/cornac_bpr.py --data ../shared/data/amazon_scientific_mm \
        --out benchmarks/reproduction/peer_cornac_bpr.json

It trains Cornac 3.0.1's BPR (per-sample SGD, learning rate 0.05, λ 0.01, 400 epochs, its own
U(−½, ½)/k start) on the training pairs (repeated pairs dropped, the earliest split's kept, as
modalrec does), for each factor count k and seed, and writes valid Recall@20 (train items
masked) and test Recall@20 (train and valid items masked) per run; ``xavier: true`` rows start
from modalrec's Xavier-normal tables instead, to show what the start does. Only numpy and
cornac are used, so the figures do not depend on modalrec's evaluator.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def read_split(folder: Path) -> dict[int, list[tuple[str, str, float]]]:
    inter = next(folder.glob("*.inter"))
    lines = inter.read_text().splitlines()
    header = lines[0].split("\t")
    col = {name: header.index(name) for name in ("userID", "itemID", "x_label")}
    seen: set[tuple[str, str]] = set()
    split: dict[int, list[tuple[str, str, float]]] = {0: [], 1: [], 2: []}
    for line in lines[1:]:
        f = line.split("\t")
        pair = (f[col["userID"]], f[col["itemID"]])
        if pair in seen:
            continue
        seen.add(pair)
        split[int(f[col["x_label"]])].append((*pair, 1.0))
    return split


def recall_at(scores_of, pairs, masks, uid, iid, k=20) -> float:
    hits = n = 0
    for u, i, _ in pairs:
        if u not in uid:
            continue
        n += 1
        if i not in iid:
            continue
        s = scores_of(uid[u]).copy()
        for mask in masks:
            s[[iid[j] for j in mask.get(u, ()) if j in iid]] = -np.inf
        hits += iid[i] in np.argpartition(-s, k)[:k]
    return hits / max(n, 1)


def per_user_recall_at(U, V, b, targets, masks, uid, iid, k=20, block=1024) -> float:
    """Mean over users of |top-k ∩ targets| / |targets| (modalrec's Recall@k), users scored in blocks by one
    GEMM each: what ``--per-user`` uses where one GEMV per interaction (:func:`recall_at`) would take most of
    an hour (a catalogue of 10⁵ items). Users or targets outside training are skipped, masked items get −inf."""
    users = [u for u in targets if u in uid]
    total = 0.0
    for lo in range(0, len(users), block):
        part = users[lo : lo + block]
        scores = U[[uid[u] for u in part]] @ V.T + b
        for row, u in enumerate(part):
            for mask in masks:
                scores[row, [iid[j] for j in mask.get(u, ()) if j in iid]] = -np.inf
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        for row, u in enumerate(part):
            wanted = {iid[i] for i in targets[u] if i in iid}
            total += len(wanted.intersection(top[row].tolist())) / len(targets[u])
    return total / max(len(users), 1)


def main() -> None:
    import cornac
    from cornac.data import Dataset as CornacDataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--factors", default="64,128,256")
    ap.add_argument("--seeds", default="999,1000,1001")  # the reproduction's seeds
    ap.add_argument("--no-xavier", action="store_true", help="skip the Xavier-start runs at k = 64")
    ap.add_argument("--epochs", type=int, default=400)
    ap.add_argument(
        "--per-user",
        action="store_true",
        help="score test Recall@20 per user in GEMM blocks (modalrec's definition) and skip validation: for "
        "catalogues where one GEMV per interaction is too slow",
    )
    args = ap.parse_args()
    split = read_split(args.data)
    train_items: dict[str, set[str]] = {}
    valid_items: dict[str, set[str]] = {}
    for u, i, _ in split[0]:
        train_items.setdefault(u, set()).add(i)
    for u, i, _ in split[1]:
        valid_items.setdefault(u, set()).add(i)
    runs = []
    for k in (int(x) for x in args.factors.split(",")):
        for xavier in (False, True) if k == 64 and not args.no_xavier else (False,):
            for seed in (int(s) for s in args.seeds.split(",")):
                train = CornacDataset.from_uir(split[0], seed=seed)
                init = None
                if xavier:
                    rng = np.random.default_rng(seed)
                    nu, ni = train.num_users, train.num_items
                    init = {
                        "U": (rng.standard_normal((nu, k)) * np.sqrt(2 / (nu + k))).astype(np.float32),
                        "V": (rng.standard_normal((ni, k)) * np.sqrt(2 / (ni + k))).astype(np.float32),
                        "Bi": np.zeros(ni, np.float32),
                    }
                model = cornac.models.BPR(
                    k=k, max_iter=args.epochs, learning_rate=0.05, lambda_reg=0.01, seed=seed, init_params=init
                )
                t0 = time.perf_counter()
                model.fit(train)
                fit_s = time.perf_counter() - t0
                U, V, b = model.u_factors, model.i_factors, model.i_biases

                def scores_of(u, U=U, V=V, b=b):
                    return V @ U[u] + b

                t0 = time.perf_counter()
                if args.per_user:
                    test_items: dict[str, set[str]] = {}
                    for u, i, _ in split[2]:
                        test_items.setdefault(u, set()).add(i)
                    valid = None
                    test = per_user_recall_at(
                        U, V, b, test_items, [train_items, valid_items], train.uid_map, train.iid_map
                    )
                else:
                    valid = recall_at(scores_of, split[1], [train_items], train.uid_map, train.iid_map)
                    test = recall_at(scores_of, split[2], [train_items, valid_items], train.uid_map, train.iid_map)
                runs.append(
                    {
                        "k": k,
                        "xavier": xavier,
                        "seed": seed,
                        "valid_recall@20": valid,
                        "test_recall@20": test,
                        "fit_seconds": round(fit_s, 2),
                        "eval_seconds": round(time.perf_counter() - t0, 2),
                        "recall": "per user" if args.per_user else "per test interaction",
                    }
                )
                print(json.dumps(runs[-1]), flush=True)
    result = {
        "peer": f"Cornac {cornac.__version__} BPR",
        "settings": {"learning_rate": 0.05, "lambda_reg": 0.01, "epochs": args.epochs},
        "data": str(args.data.name),
        "runs": runs,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
