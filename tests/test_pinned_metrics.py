"""Every built-in model's numbers are pinned: the same seed gives bit-identical metrics release after release.

``tests/pinned_metrics.json`` was written by ``python tests/test_pinned_metrics.py --write`` at the commit that
added it, before the trainer / experiments / models refactor (issue 27), and must not be rewritten by a change that
claims to keep behaviour. Each model trains 3 epochs (validated every epoch) on a tiny synthetic set with one torch
thread; the test compares the loss of every epoch, every validation score, the best epoch, the test metrics and a
digest of the per-user test vectors — exactly, as float reprs. A change that alters a model's arithmetic, the
sampler's draws, the RNG order or the evaluation fails here with the first value that differs.

**Pins are per numeric platform.** The same code and seed round differently on CPUs whose kernels differ: on an
AVX-512 Intel host eight models' losses differ from the pins in their last bits (issue #30's session of
2026-12-07; ``MKL_CBWR`` and ``ATEN_CPU_CAPABILITY`` did not bring them back). ``models`` holds the pins of the
platform the file was first written on (not recorded then); ``platforms`` holds, per platform (CPU vendor and
ATen's CPU capability, :func:`numeric_platform`), every model's pins measured there. A platform with its own pins
is compared exactly against them. Any other is compared exactly against ``models``, and where that fails, its
losses within a relative 1e-5, with a warning that names the platform: a host of an unpinned kind still
catches a change of arithmetic, but not one of rounding — pin it (``--write-platform``) to check it exactly.
Only the losses, because the rankings of this tiny set are not stable under rounding: between the two pinned
platforms MMGCN's losses differ by 1.4e-6 relative and its best epoch moved from 2 to 0, with every metric.

Regenerate only for a change that is meant to change numbers, and only the models it changes
(``--write MODEL …``; ``--write-platform MODEL …`` for this platform's pins), and say so in its commit.
Re-pinned since: MARIO (its default ``graph_refresh`` became ``epoch``; its decoders' loss and feature projection
run as fused kernels) and LGMRec (its InfoNCE does: the same sums, rounded in another order). MeAIM's and
DA-MRS's numbers came out bit-identical under the fused kernels.
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

PIN_FILE = Path(__file__).with_name("pinned_metrics.json")
OVERRIDES = {"epochs": 3, "eval_step": 1, "train_batch_size": 256, "seed": 2024}
DATA = {"n_users": 120, "n_items": 90, "modalities": {"image": 16, "text": 8}, "seed": 11}


TOLERANCE = 1e-5  # relative, on an unpinned platform only


def numeric_platform() -> str:
    """The CPU vendor and ATen's CPU capability (e.g. ``GenuineIntel AVX512``): what decides which kernels, and so
    which roundings, a CPU run gets with one thread."""
    vendor = "unknown-vendor"
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("vendor_id"):
                vendor = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return f"{vendor} {torch.backends.cpu.get_cpu_capability()}"


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


KEYS = ("losses", "valid", "best_epoch", "best_valid", "test", "test_per_user")


def _differences(got: dict, expected: dict) -> list[str]:
    return [f"{key} changed: pinned {expected[key]} got {got[key]}" for key in KEYS if got[key] != expected[key]]


def _beyond_rounding(got: dict, expected: dict) -> list[str]:
    """The loss differences larger than rounding (a relative ``TOLERANCE``); the rankings are not compared, see
    the module's docstring."""
    a, b = [float(x) for x in got["losses"]], [float(x) for x in expected["losses"]]
    if len(a) == len(b) and np.allclose(a, b, rtol=TOLERANCE, atol=0.0):
        return []
    return [f"losses: pinned {expected['losses']} got {got['losses']}"]


def test_the_platform_key_names_vendor_and_capability():
    vendor, _, capability = numeric_platform().rpartition(" ")
    assert vendor and capability == torch.backends.cpu.get_cpu_capability()


def test_a_rounding_difference_passes_only_the_tolerant_comparison():
    pinned = {
        "losses": ["0.5", "0.25"],
        "valid": ["0.1"],
        "best_epoch": 1,
        "best_valid": {"r": "0.1"},
        "test": {"r": "0.2"},
        "test_per_user": "abc",
    }
    rounded = {**pinned, "losses": [repr(0.5 * (1 + 1e-7)), "0.25"], "best_epoch": 2, "test": {"r": "0.3"}}
    assert _differences(rounded, pinned) and not _beyond_rounding(rounded, pinned)
    changed = {**pinned, "losses": ["0.5", repr(0.25 * (1 + 1e-4))]}
    assert _beyond_rounding(changed, pinned) == [f"losses: pinned {pinned['losses']} got {changed['losses']}"]
    assert _beyond_rounding({**pinned, "losses": ["0.5"]}, pinned)  # an epoch missing


@pytest.mark.parametrize("model", _models())
def test_same_seed_gives_the_pinned_numbers(model, pin_data, tmp_path):
    pins = _pinned()
    platform = numeric_platform()
    own = pins.get("platforms", {}).get(platform)
    pinned = own if own is not None else pins["models"]
    assert model in pinned, f"{model} has no pinned numbers in {PIN_FILE.name} (platform {platform})"
    expected = pinned[model]
    got = measure(model, pin_data, tmp_path / "run")
    differences = _differences(got, expected)
    if own is not None or not differences:
        assert not differences, f"{model} on {platform}: " + "; ".join(differences)
        return
    beyond = _beyond_rounding(got, expected)
    assert not beyond, f"{model} on the unpinned platform {platform}, beyond rounding: " + "; ".join(beyond)
    warnings.warn(
        f"{model}: {platform} has no pins of its own and rounds differently from the pins in {PIN_FILE.name} "
        f"(within a relative {TOLERANCE}): pin it with --write-platform to check it exactly",
        stacklevel=1,
    )


def _write(models: list[str], platform: str | None) -> None:  # pragma: no cover - run by hand only
    """Pin ``models`` again (every model when empty) in ``models``, or in ``platforms[platform]`` when given; every
    other pin is kept as it is."""
    import tempfile

    from modalrec.data.synth import write_synthetic_dataset

    unknown = sorted(set(models) - set(_models()))
    if unknown:
        sys.exit(f"not a built-in model: {', '.join(unknown)}")
    file = _pinned() if PIN_FILE.exists() else {"models": {}}
    target = file["models"] if platform is None else file.setdefault("platforms", {}).setdefault(platform, {})
    if not models:
        target.clear()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic_dataset(Path(tmp) / "syn", **DATA)
        target.update({m: measure(m, data, Path(tmp) / f"run-{m}") for m in (models or _models())})
    file["torch"] = torch.__version__
    PIN_FILE.write_text(json.dumps(file, indent=1, sort_keys=True) + "\n")
    where = "the base pins" if platform is None else f"the pins of {platform}"
    print(f"wrote {PIN_FILE}: {where} ({', '.join(models) if models else f'all {len(target)} models'})")


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:2] not in (["--write"], ["--write-platform"]):
        sys.exit(
            "usage: python tests/test_pinned_metrics.py --write [MODEL ...]  (no MODEL: every model)\n"
            "       python tests/test_pinned_metrics.py --write-platform [MODEL ...]  (this platform's own pins)"
        )
    _write(sys.argv[2:], numeric_platform() if sys.argv[1] == "--write-platform" else None)
