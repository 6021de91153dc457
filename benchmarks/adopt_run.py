"""Record finished `modalrec train` runs as trials of a benchmark report folder (no training).

    python benchmarks/adopt_run.py --data DIR --out REPORT_DIR --model MARIO \\
        [--set key=value ...] [--modalities image,text] [--preset NAME] RUN_DIR[:SEED] ...

A benchmark (and benchmarks/reproduce.py) then reuses them like its own finished trials. Each
run is refused unless it is exactly the trial the benchmark would train: same model, same data
content hash and modalities, and the same resolved configuration (``experiments.adopt.adopt_run``). The
seed is read from the run's configuration unless given after a colon.
"""

from __future__ import annotations

import argparse
import sys

from modalrec.config import parse_overrides
from modalrec.errors import ModalrecError
from modalrec.experiments.adopt import adopt_run
from modalrec.experiments.campaign import Experiment
from modalrec.io import read_yaml


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--set", action="append", default=[], help="the row's overrides, key=value (repeatable)")
    ap.add_argument("--base", action="append", default=[], help="the benchmark's --set overrides (repeatable)")
    ap.add_argument("--modalities", default=None)
    ap.add_argument("--preset", default=None)
    ap.add_argument("runs", nargs="+")
    args = ap.parse_args(argv)
    modalities = args.modalities.split(",") if args.modalities else None
    try:
        exp = Experiment(args.data, args.out, [0], parse_overrides(args.base), preset=args.preset, log=print)
        for spec in args.runs:
            path, _, seed = spec.partition(":")
            seed_value = int(seed) if seed else int(read_yaml(f"{path}/config.yaml")["config"]["seed"])
            rec = adopt_run(exp, args.model, parse_overrides(args.set), modalities, seed_value, path)
            print(f"adopted {path} as {rec['model']} seed {rec['seed']} [{rec['setting_id']}]")
    except ModalrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
