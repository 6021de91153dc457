"""``modalrec demo``: synthetic default data → BPR, LightGCN, MARIO → comparison and one explained top-10."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from modalrec.data.dataset import load_dataset
from modalrec.data.synth import write_synthetic_dataset
from modalrec.run_load import LoadedRun, recommend
from modalrec.runs import new_run_dir, train_run

DEMO_MODELS = ("BPR", "LightGCN", "MARIO")
# The demo keeps the protocol (early stopping on valid Recall@20, test once on the best
# weights) but caps epochs and patience so all three models finish in about 30 s on an idle
# 2-core machine (several times longer when other jobs share the cores).
DEMO_OVERRIDES = {
    "BPR": {"epochs": 120, "stopping_step": 10, "learning_rate": 0.005, "reg_weight": 0.0},
    "LightGCN": {"epochs": 120, "stopping_step": 10, "learning_rate": 0.005, "reg_weight": 0.0},
    "MARIO": {"epochs": 120, "stopping_step": 10, "learning_rate": 0.005},
}
TABLE_METRICS = ("recall@10", "ndcg@10", "precision@10", "recall@20", "ndcg@20", "precision@20")
LOG_WIDTH = 160  # columns when stdout is not a terminal: the tables stay one line per row in a log file


def demo_console() -> Console:
    """Markup off (titles can hold brackets); wide, not 80 columns, when writing to a file or pipe."""
    console = Console(markup=False, highlight=False)
    if not console.is_terminal:
        console = Console(markup=False, highlight=False, width=LOG_WIDTH)
    return console


def explanation_note(parts: list[str], kind: str | None) -> str:
    """One line saying what the per-modality numbers of the explained top-10 mean."""
    if kind == "attention":
        return (
            f"{' / '.join(parts)}: MARIO's attention weight of each modality for this user and item; each row sums "
            "to 1, and the score is the weighted sum of the user's dot products with the item's per-modality "
            "representations (interaction = the ID/graph embedding), so a larger weight means that modality "
            "counted more for this item."
        )
    return f"{' / '.join(parts)}: the model's per-modality weights ({kind}) for this user and item."


def run_demo(
    out: str | Path | None = None,
    runs_root: str | Path = "runs",
    console: Console | None = None,
    user: int | None = None,
    cache_dir: str | Path | bool | None = None,
) -> dict:
    """Run the demo into a new directory and print its tables; returns what it printed."""
    console = console or demo_console()
    styled = console.is_terminal  # bold on a terminal; plain '*' markers in a log file or pipe
    root = new_run_dir("demo", "synthetic", out, runs_root)
    console.print(Text.assemble(("modalrec demo", "bold" if styled else ""), f" — writing to {root}"))
    data_dir = write_synthetic_dataset(root / "data")
    dataset = load_dataset(data_dir)
    s = dataset.summary()
    console.print(
        f"synthetic default dataset (SYNTHETIC, planted structure): {s['users']} users, {s['items']} items, "
        f"{s['interactions']} interactions, modalities " + ", ".join(f"{m} ({d})" for m, d in s["modalities"].items())
    )
    results = {}
    for name in DEMO_MODELS:
        t0 = time.perf_counter()
        with console.status(f"training {name} …"):
            run_dir, res = train_run(
                name,
                data_dir,
                dataset=dataset,
                overrides=DEMO_OVERRIDES[name],
                out=root / name,
                quiet=True,
                cache_dir=cache_dir,
            )
        secs = time.perf_counter() - t0
        console.print(f"  {name:<9} best epoch {res.best_epoch:3d}, {res.timings['epochs_run']} epochs, {secs:.1f}s")
        results[name] = {"run": str(run_dir), "test": res.test.metrics, "best_epoch": res.best_epoch, "seconds": secs}

    table = Table(
        title="Test metrics (synthetic default data, best-valid epoch)",
        caption=f"R = Recall, N = NDCG, P = Precision; {'bold' if styled else '*'} = best",
    )
    table.add_column("model")
    for m in TABLE_METRICS:
        name, k = m.split("@")
        table.add_column(f"{name[0].upper()}@{k}", justify="right")
    best = {m: max(r["test"][m] for r in results.values()) for m in TABLE_METRICS}
    for name, r in results.items():
        cells = [_cell(r["test"][m], r["test"][m] == best[m], styled) for m in TABLE_METRICS]
        table.add_row(name, *cells)
    console.print(table)

    from modalrec.run_load import load_run

    run: LoadedRun = load_run(results["MARIO"]["run"], cache_dir=cache_dir)
    if user is None:  # a user with a test item, so the list can be checked against it
        user = int(run.dataset.split("test")[0][0])
    rec = recommend(run, user, k=10, explain=True)
    test_items = set(run.dataset.split("test")[1][run.dataset.split("test")[0] == user].tolist())
    parts = rec["explanation"].get("parts") or []
    t2 = Table(title=f"MARIO top-10 for user {user} with per-modality attention (★ = held-out test item)")
    t2.add_column("#", justify="right")
    t2.add_column("item", justify="right")
    t2.add_column("title")
    t2.add_column("score", justify="right")
    for p in parts:
        t2.add_column(p, justify="right")
    for e in rec["items"]:
        star = " ★" if e["item"] in test_items else ""
        t2.add_row(
            str(e["rank"]),
            f"{e['item']}{star}",
            Text(e.get("title", "")),
            f"{e['score']:.3f}",
            *[f"{e['weights'][p]:.2f}" for p in parts],
        )
    console.print(t2)
    if parts:
        console.print(explanation_note(parts, rec["explanation"].get("kind")), soft_wrap=True)
    return {"dir": str(root), "results": results, "recommendation": rec}


def _cell(value: float, best: bool, styled: bool) -> Text:
    """A metric cell: the best value bold on a terminal, marked '*' elsewhere (bold is lost in a log)."""
    if not best:
        return Text(f"{value:.4f} " if not styled else f"{value:.4f}")
    return Text(f"{value:.4f}", style="bold") if styled else Text(f"{value:.4f}*")
