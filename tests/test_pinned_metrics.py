"""Every built-in model's numbers are pinned: the same seed gives bit-identical metrics release after release.

``tests/pinned_metrics.json`` was written by ``python tests/test_pinned_metrics.py --write`` at the commit that
added it, before the trainer / experiments / models refactor (issue 27), and must not be rewritten by a change that
claims to keep behaviour. Each model trains 3 epochs (validated every epoch) on a tiny synthetic set with one torch
thread; the test compares the loss of every epoch, every validation score, the best epoch, the test metrics and a
digest of the per-user test vectors — exactly, as float reprs. A change that alters a model's arithmetic, the
sampler's draws, the RNG order or the evaluation fails here with the first value that differs.

Regenerate only for a change that is meant to change numbers, and only the models it changes
(``--write MODEL …``), and say so in its commit. Re-pinned since: MARIO (its default ``graph_refresh`` became
``epoch``; its decoders' loss and feature projection run as fused kernels) and LGMRec (its InfoNCE does: the same
sums, rounded in another order). MeAIM's and DA-MRS's numbers came out bit-identical under the fused kernels.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

PIN_FILE = Path(__file__).with_name("pinned_metrics.json")
OVERRIDES = {"epochs": 3, "eval_step": 1, "train_batch_size": 256, "seed": 2024}
DATA = {"n_users": 120, "n_items": 90, "modalities": {"image": 16, "text": 8}, "seed": 11}


def _models() -> list[str]:
    from modalrec.models import list_models

    return [c.name for c in list_models()]


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        h.update(key.encode())
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()[:16]


def measure(model: str, data_dir: Path, out: Path) -> dict:
    """Train ``model`` as pinned and return what is compared (floats as ``repr`` strings: exact)."""
    from modalrec.run_files import per_user_metrics
    from modalrec.runs import train_run

    torch.set_num_threads(1)
    run, result = train_run(model, data_dir, overrides=dict(OVERRIDES), out=out, quiet=True, cache_dir=False)
    return {
        "best_epoch": result.best_epoch,
        "losses": [repr(h["loss"]) for h in result.history],
        "valid": [repr(h["valid"][OVERRIDES.get("valid_metric", "recall@20")]) for h in result.history if "valid" in h],
        "best_valid": {k: repr(v) for k, v in sorted(result.valid.metrics.items())},
        "test": {k: repr(v) for k, v in sorted(result.test.metrics.items())},
        "test_per_user": _digest(per_user_metrics(run, "test")),
    }


@pytest.fixture(scope="module")
def pin_data(tmp_path_factory) -> Path:
    from modalrec.data.synth import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("pin") / "syn", **DATA)


def _pinned() -> dict:
    return json.loads(PIN_FILE.read_text())


def test_every_registered_built_in_model_is_pinned():
    assert sorted(_pinned()["models"]) == sorted(_models())


@pytest.mark.parametrize("model", _models())
def test_same_seed_gives_the_pinned_numbers(model, pin_data, tmp_path):
    pinned = _pinned()["models"]
    assert model in pinned, f"{model} has no pinned numbers in {PIN_FILE.name}"
    expected = pinned[model]
    got = measure(model, pin_data, tmp_path / "run")
    for key in ("losses", "valid", "best_epoch", "best_valid", "test", "test_per_user"):
        assert got[key] == expected[key], f"{model}: {key} changed: pinned {expected[key]} got {got[key]}"


def _write(models: list[str]) -> None:  # pragma: no cover - run by hand only
    """Pin ``models`` again (every model when empty); the other models' pins are kept as they are."""
    import tempfile

    from modalrec.data.synth import write_synthetic_dataset

    unknown = sorted(set(models) - set(_models()))
    if unknown:
        sys.exit(f"not a built-in model: {', '.join(unknown)}")
    pins = _pinned()["models"] if models and PIN_FILE.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic_dataset(Path(tmp) / "syn", **DATA)
        pins.update({m: measure(m, data, Path(tmp) / f"run-{m}") for m in (models or _models())})
    PIN_FILE.write_text(json.dumps({"torch": torch.__version__, "models": pins}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {PIN_FILE} ({', '.join(models) if models else f'all {len(pins)} models'})")


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:2] != ["--write"]:
        sys.exit("usage: python tests/test_pinned_metrics.py --write [MODEL ...]  (no MODEL: every model)")
    _write(sys.argv[2:])
