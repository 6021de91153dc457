"""Regenerate docs/reproduction.md: the published tables reproduced with `modalrec benchmark`.

    python benchmarks/reproduce.py                       # every part, then the report
    python benchmarks/reproduce.py --parts baby          # one part (the others keep their record)
    python benchmarks/reproduce.py --render-only         # rewrite the report from the committed record alone
    python benchmarks/reproduce.py --summarize           # re-tabulate finished runs into the record, then render
    python benchmarks/reproduce.py --executor ray        # train a row's seeds side by side (one per core)
    python benchmarks/reproduce.py --quick --out /tmp/r  # tiny synthetic end-to-end check (CI)

Each part is one `modalrec benchmark --plan benchmarks/reproduction/<plan>.yaml` call on
one dataset folder (found under ``--data-root``, else ``$MODALREC_DATA`` or the tests'
``$MODALREC_TEST_DATA``, else ``../shared/data`` beside the checkout). Every finished run is stored under
``<out>/<part>/results`` and is never trained again, so an interrupted reproduction resumes
where it stopped. Finished runs are also kept, compactly, in the committed record
``benchmarks/reproduction/record/<part>/`` (each run's result, config, metrics and per-user
vectors; no weights; no machine paths), with the part's table (``summary.json``). A fresh report
folder is filled from the record first (a run recorded under another part with the same setting id
counts too), so no recorded run is trained twice. The report is rendered from the record alone
(``benchmarks/reproduce_render.py``): a plan row without a recorded run shows ``no record``.
Model selection is on validation only (the benchmark's rule); test metrics are read once,
for the report. These are long CPU runs (hours): a generated artefact, not CI.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reproduce_render  # noqa: E402  (beside this script, not a package)

ROOT = Path(__file__).resolve().parents[1]
PLANS = ROOT / "benchmarks" / "reproduction"
SEEDS = "999,1000,1001"
REPORT = ROOT / "docs" / "reproduction.md"


@dataclass
class Part:
    """One benchmark call: a dataset folder, a plan of rows and extra CLI options."""

    name: str
    title: str
    dataset: str  # folder under the data root, or "synthetic"
    plan: str
    options: list[str] = field(default_factory=list)
    targets: tuple[str, ...] = ()  # rows tested against the best other row
    seeds: str | None = None  # instead of --seeds (a cheaper part)
    note: str = ""  # printed under the section title: what the reader would otherwise ask
    claims: dict[str, str] = field(default_factory=dict)  # model -> the seed paper's claim, judged on this part
    versus: tuple[tuple[str, str], ...] = ()  # (row, row): paired tests on valid and test, four metrics

    @property
    def cold(self) -> bool:
        """A cold-items part: rows ranked by test Recall@20 and judged against Popularity and Random."""
        return "cold-items" in self.options

    @property
    def peer(self) -> bool:
        """The part compared with another toolbox (Cornac)."""
        return self.name.endswith("bpr-peer")

    @property
    def seeds_list(self) -> list[int]:
        return [int(s) for s in (self.seeds or SEEDS).split(",")]

    @property
    def dataset_words(self) -> str:
        return f"`{self.dataset}`" + (f" (`{' '.join(self.options)}`)" if self.options else "")

    def command(self) -> str:
        """The part's benchmark command as a user types it (paths relative to the checkout and the data root)."""
        data = (
            "reports/reproduction/data/synthetic" if self.dataset == "synthetic" else f"$MODALREC_DATA/{self.dataset}"
        )
        cmd = ["modalrec", "benchmark", "--plan", f"benchmarks/reproduction/{self.plan}", "--data", data]
        cmd += ["--seeds", self.seeds or SEEDS, "--out", f"reports/reproduction/{self.name}", *self.options]
        return " ".join(shlex.quote(c) if not c.startswith("$") else c for c in cmd)


PARTS = [
    Part(
        "baby",
        "Amazon Baby (MMRec split): ID-only models against the published figures",
        "amazon_baby",
        "baby.yaml",
    ),
    Part(
        "scientific_mm",
        "amazon_scientific_mm (CLIP image + text): all 17 models",
        "amazon_scientific_mm",
        "scientific_mm.yaml",
        ["--modalities", "image,text"],
        targets=("MeAIM",),
        claims={
            "MARIO": "MARIO is above every baseline",
            "MeAIM": "MeAIM is above every baseline",
        },
    ),
    Part(
        "scientific_mm-bpr-peer",
        "amazon_scientific_mm, BPR against the best peer toolbox (train and valid items masked at test)",
        "amazon_scientific_mm",
        "bpr_peer.yaml",
        ["--set", "mask_valid_at_test=true"],
    ),
    Part(
        "mario-scale-scientific_mm",
        "MARIO content scale control: amazon_scientific_mm (image + text)",
        "amazon_scientific_mm",
        "mario_scale.yaml",
        ["--modalities", "image,text"],
        targets=("MARIO (modalrec default)",),
        versus=(("MARIO (modalrec default)", "LightGCN"),),
    ),
    Part(
        "mario-scale-scientific",
        "MARIO content scale control: amazon_scientific (text only)",
        "amazon_scientific",
        "mario_scale.yaml",
        targets=("MARIO (modalrec default)",),
        versus=(("MARIO (modalrec default)", "LightGCN"),),
        seeds="999",
    ),
    Part(
        "mario-scale-synthetic",
        "MARIO content scale control: the built-in synthetic dataset",
        "synthetic",
        "mario_scale.yaml",
        targets=("MARIO (modalrec default)",),
        versus=(("MARIO (modalrec default)", "LightGCN"),),
        seeds="999",
    ),
    Part(
        "cold-items-scientific_mm",
        "Cold-start items: amazon_scientific_mm (image + text), 20 % of the items held out of training",
        "amazon_scientific_mm",
        "cold_items.yaml",
        ["--modalities", "image,text", "--protocol", "cold-items", "--cold-ratio", "0.2"],
    ),
    Part(
        "cold-items-scientific",
        "Cold-start items: amazon_scientific (text only), 20 % of the items held out of training",
        "amazon_scientific",
        "cold_items_text.yaml",
        ["--protocol", "cold-items", "--cold-ratio", "0.2"],
        note="MeAIM is not in this table: it weighs the scores of ID and at least two content modalities "
        "against each other (its `min_modalities` is 2), and this dataset has text only.",
    ),
]


def data_root(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    for var in ("MODALREC_DATA", "MODALREC_TEST_DATA"):  # the tests' setting names the same folder
        if os.environ.get(var):
            return Path(os.environ[var])
    return ROOT.parent / "shared" / "data"


def modalrec_cmd() -> list[str]:
    return [sys.executable, "-m", "modalrec"]


def dataset_folder(part: Part, root: Path, out: Path, quick: bool) -> Path | None:
    """The part's dataset folder (synthetic ones are generated once under ``out/data``)."""
    if part.dataset == "synthetic" or quick:
        folder = out / "data" / ("synthetic-quick" if quick else "synthetic")
        if not folder.exists():
            size = ["--users", "60", "--items", "80"] if quick else []
            subprocess.run([*modalrec_cmd(), "data", "synth", str(folder), *size], check=True)
        return folder
    folder = root / part.dataset
    return folder if folder.is_dir() else None


def run_part(
    part: Part,
    folder: Path,
    out: Path,
    seeds: str,
    quick: bool,
    reuse_only: bool = False,
    executor: list[str] | None = None,
) -> list[str]:
    """Run (or resume) one part; returns the command it ran.

    ``reuse_only`` trains nothing and rewrites the part's table from its finished runs
    (rows with unfinished runs are left out and the summary is marked incomplete); a part
    with nothing finished is said so and leaves no table.
    ``executor``: the benchmark's executor options when it trains (``--executor ray
    --cpus-per-trial N`` runs a row's seeds side by side); they do not change any result.
    """
    cmd = [
        *modalrec_cmd(),
        "benchmark",
        "--plan",
        str(PLANS / part.plan),
        "--data",
        str(folder),
        "--seeds",
        seeds,
        "--out",
        str(out / part.name),
        *part.options,
    ]
    if quick:
        cmd += ["--epochs", "1"]
        cmd = [c for c in cmd if c not in ("--modalities", "image,text")]
    if reuse_only:
        result = subprocess.run([*cmd, "--reuse-only"], capture_output=True, text=True)
        if result.returncode != 0:
            print(f"part {part.name}: nothing finished yet", flush=True)
            (out / part.name / "summary.json").unlink(missing_ok=True)
        return cmd
    print("$ " + shlex.join(cmd + (executor or [])), flush=True)
    code = subprocess.run(cmd + (executor or [])).returncode
    if code != 0:  # the benchmark printed its one-line reason; stop here, keep what finished
        sys.exit(f"part {part.name}: `modalrec benchmark` exited with status {code} (its message is above)")
    return cmd


# ---------------------------------------------------------------------- record
RECORD = PLANS / "record"
RECORD_RUN_DIRS = "files"  # not "runs": .gitignore ignores every runs/ folder
RECORD_RUN_FILES = ("config.yaml", "metrics.json")  # copied as they are
RECORD_NPZ_FILES = ("test_per_user.npz", "valid_per_user.npz")  # re-saved compressed


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _compressed_npz(path: Path) -> bytes:
    import io

    buf = io.BytesIO()
    with np.load(path) as z:
        np.savez_compressed(buf, **{k: z[k] for k in z.files})
    return buf.getvalue()


def _finished_results(folder: Path) -> list[Path]:
    """``results/<model>/<setting>/seed-N.json`` under folder (not failure or superseded records)."""
    return sorted(p for p in (folder / "results").rglob("seed-*.json") if re.fullmatch(r"seed-\d+\.json", p.name))


def portable(text: str, root: Path, out: Path) -> str:
    """``text`` with this machine's folders replaced by names that hold anywhere: the data root by
    ``$MODALREC_DATA``, the report folder by ``reports/reproduction``, the checkout by ``.``."""
    for folder, name in ((out, "reports/reproduction"), (root, "$MODALREC_DATA"), (ROOT, ".")):
        for form in {str(folder), str(folder.resolve())}:
            text = text.replace(form, name)
    return text


def _recorded_elsewhere(record_root: Path, part: str, rel: Path, finished: str | None) -> bool:
    """Whether another part's record holds this very run (same result path and finish time)."""
    for other in sorted(record_root.iterdir()) if record_root.is_dir() else []:
        if other.name != part and (other / rel).is_file():
            if json.loads((other / rel).read_text()).get("finished") == finished:
                return True
    return False


def archive_part(part_out: Path, record: Path, root: Path | None = None) -> int:
    """Copy the part's finished runs into the record (results, configs, metrics, per-user vectors).

    A run already in the record is left as it is, unless the report folder holds a newer run
    of the same (model, setting, seed) — one trained again after a configuration change; nothing
    is removed. A run restored from another part's record stays there only (no copy). The record's
    ``run_dir`` is relative (``files/<name>``) and its config names no folder of this machine, so it
    restores under any report folder. Returns the number of runs added or replaced.
    """
    added = 0
    for result in _finished_results(part_out):
        rel = result.relative_to(part_out)
        rec = json.loads(result.read_text())
        if (record / rel).exists():
            kept = json.loads((record / rel).read_text())
            if kept.get("finished") == rec.get("finished"):
                continue
        elif _recorded_elsewhere(record.parent, record.name, rel, rec.get("finished")):
            continue
        run_dir = Path(rec["run_dir"])
        if not (run_dir / "metrics.json").is_file():  # only finished runs reach results/; be safe anyway
            continue
        for name in RECORD_RUN_FILES:
            if (run_dir / name).is_file():
                text = portable((run_dir / name).read_text(), root or data_root(None), part_out.parent)
                _atomic_write(record / RECORD_RUN_DIRS / run_dir.name / name, text.encode())
        for name in RECORD_NPZ_FILES:
            if (run_dir / name).is_file():
                _atomic_write(record / RECORD_RUN_DIRS / run_dir.name / name, _compressed_npz(run_dir / name))
        # the result last: its presence says the run's files are complete
        _atomic_write(
            record / rel, json.dumps({**rec, "run_dir": f"{RECORD_RUN_DIRS}/{run_dir.name}"}, indent=2).encode()
        )
        added += 1
    return added


def restore_part(record: Path, part_out: Path) -> int:
    """Put the record's runs that the report folder lacks back into it (the benchmark then reuses them):
    the part's own, then those other parts recorded (a run is keyed by model, setting id and seed, and the
    setting id covers the data's fingerprint, so another dataset's run never matches).

    Never overwrites a result or run folder that is already there. Returns the number restored.
    """
    restored = 0
    sources = (
        [record] + sorted(p for p in record.parent.iterdir() if p.is_dir() and p != record)
        if (record.parent.is_dir())
        else [record]
    )
    for source in sources:
        for result in _finished_results(source):
            rel = result.relative_to(source)
            if (part_out / rel).exists():
                continue
            rec = json.loads(result.read_text())
            src = source / rec["run_dir"]
            dst = part_out / "runs" / src.name
            if dst.exists():  # an unfinished (or foreign) run folder of that name: leave it, retrain as usual
                continue
            for f in sorted(src.iterdir()):
                _atomic_write(dst / f.name, f.read_bytes())
            _atomic_write(part_out / rel, json.dumps({**rec, "run_dir": str(dst.resolve())}, indent=2).encode())
            restored += 1
    return restored


def record_summary(part: Part, part_out: Path, record: Path) -> bool:
    """Write the part's table (the benchmark's ``summary.json``) into the record, each run named by its
    recorded folder (``files/<run>`` or ``../<other part>/files/<run>``). False when there is no table."""
    try:
        summary = json.loads((part_out / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    rows = []
    for row in summary["rows"]:
        runs = []
        for run in row["runs"]:
            name = Path(run["run_dir"]).name
            where = next(
                (
                    f"{'' if p == record else '../' + p.name + '/'}{RECORD_RUN_DIRS}/{name}"
                    for p in [record, *sorted(record.parent.iterdir())]
                    if (p / RECORD_RUN_DIRS / name / "metrics.json").is_file()
                ),
                None,
            )
            if where is None:
                sys.exit(f"part {part.name}: run {name} is in the table but not in the record {record}")
            keep = ("seed", "setting_id", "best_epoch", "valid", "test")
            runs.append({**{k: run[k] for k in keep if k in run}, "run": where})
        keep = ("label", "model", "cold_start", "overrides", "modalities", "grid_size", "failed")
        rows.append({**{k: row.get(k) for k in keep}, "runs": runs})
    table = {
        "part": part.name,
        "dataset": summary["dataset"],
        "seeds": summary["seeds"],
        "complete": summary.get("complete", True),
        "base_overrides": summary.get("base_overrides", {}),
        "rows": rows,
    }
    _atomic_write(record / "summary.json", (json.dumps(table, indent=1) + "\n").encode())
    return True


# ---------------------------------------------------------------------- report
INTRO_FILE = PLANS / "intro.md"


def render(report: Path, record: Path, parts: list[Part]) -> None:
    intro = INTRO_FILE.read_text() if INTRO_FILE.exists() else ""
    text = reproduce_render.render(parts, intro, record)
    _atomic_write(report, text.encode())
    print(f"wrote {report}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", help=f"comma-separated subset of: {', '.join(p.name for p in PARTS)}")
    ap.add_argument("--data-root", help="folder holding amazon_baby, amazon_scientific_mm, … ($MODALREC_DATA)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "reproduction"), help="report folder (resumable)")
    ap.add_argument("--report", default=None, help="Markdown to write (default docs/reproduction.md)")
    ap.add_argument("--seeds", default=SEEDS)
    ap.add_argument(
        "--render-only",
        action="store_true",
        help="train nothing, read no data: rewrite the report from the record alone",
    )
    ap.add_argument(
        "--summarize",
        action="store_true",
        help="train nothing: re-tabulate each part's finished runs into the record (needs the data), then render",
    )
    ap.add_argument("--quick", action="store_true", help="every part on a tiny synthetic dataset, 1 epoch, 1 seed")
    ap.add_argument(
        "--record",
        default=None,
        help="folder of the committed record of finished runs (default benchmarks/reproduction/record; "
        "with --quick: <out>/record)",
    )
    ap.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where the benchmark trains: local (one run after another) or ray (a local Ray, "
        "--cpus-per-trial cores per run, so a 2-core machine trains two seeds at once)",
    )
    ap.add_argument("--cpus-per-trial", type=int, default=None, help="cores (torch threads) per run")
    args = ap.parse_args(argv)
    executor = ["--executor", args.executor]
    if args.cpus_per_trial is not None:  # else the benchmark's own default (1 per Ray trial; local: all cores)
        executor += ["--cpus-per-trial" if args.executor == "ray" else "--threads", str(args.cpus_per_trial)]
    out, root = Path(args.out), data_root(args.data_root)
    record = Path(args.record) if args.record else (out / "record" if args.quick else RECORD)
    report = (
        Path(args.report)
        if args.report
        else (out / "reproduction.md" if args.quick else ROOT / "docs" / "reproduction.md")
    )
    seeds = "1" if args.quick else args.seeds
    wanted = set((args.parts or ",".join(p.name for p in PARTS)).split(","))
    unknown = wanted - {p.name for p in PARTS}
    if unknown:
        sys.exit(f"--parts: unknown part {sorted(unknown)[0]!r} (known: {', '.join(p.name for p in PARTS)})")
    out.mkdir(parents=True, exist_ok=True)
    order = (args.parts or ",".join(p.name for p in PARTS)).split(",")
    for part in sorted((p for p in PARTS if p.name in wanted), key=lambda p: order.index(p.name)):
        if args.render_only:
            break
        folder = dataset_folder(part, root, out, args.quick)
        if folder is None:
            print(f"part {part.name}: dataset {root / part.dataset} not found — not run", flush=True)
            continue
        part_seeds = seeds if args.quick else part.seeds or seeds
        restored = restore_part(record / part.name, out / part.name)
        if restored:
            print(f"part {part.name}: {restored} finished run(s) restored from the record", flush=True)
        try:
            run_part(part, folder, out, part_seeds, args.quick, args.summarize, executor)
        finally:  # an interrupted or failed part still records the runs that finished
            added = archive_part(out / part.name, record / part.name, root)
            if added:
                print(f"part {part.name}: {added} finished run(s) added to {record / part.name}", flush=True)
        if record_summary(part, out / part.name, record / part.name):
            print(f"part {part.name}: its table recorded in {record / part.name / 'summary.json'}", flush=True)
    render(report, record, PARTS)


if __name__ == "__main__":
    main()
