"""Shared fixtures: tiny synthetic datasets (folders and in-memory), model and batch factories for the model
tests, hand-made dataset folders, the shared real data, a live server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
import torch

if TYPE_CHECKING:
    from modalrec.data.dataset import Dataset
    from modalrec.models.base import Batch, Recommender

# The test models are tiny; one intra-op thread avoids oversubscription when the (2-core) machine is
# shared with other processes, where two threads per process made training 50x slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread_again():
    """Tests of ``--threads`` change torch's thread count in this process; set it back after each test,
    so that later in-process runs (e.g. the reference runs of the resume tests, compared bit for bit
    with one-thread subprocesses) do not depend on the test order."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


# The shared real data: $MODALREC_TEST_DATA, else ``shared/data`` beside the checkout (the folder
# that holds the repository also holds ``shared/data``). See the README's Tests section.
TEST_DATA_VARIABLE = "MODALREC_TEST_DATA"
DEFAULT_SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data_root() -> Path:
    """Where the tests look for the real datasets (read when a test asks, so the variable can change)."""
    value = os.environ.get(TEST_DATA_VARIABLE)
    return Path(value).expanduser() if value else DEFAULT_SHARED_DATA


SYN_USERS, SYN_ITEMS = 150, 100
SYN_MODALITIES = {"image": 24, "text": 12}

HEADER = ("userID", "itemID", "rating", "timestamp", "x_label")


@pytest.fixture(scope="session", autouse=True)
def _no_user_cache(tmp_path_factory):
    """Anything that falls back to the default graph cache (the CLI has no cache option) writes into tmp,
    never into ~/.cache. Session-scoped so that module- and session-scoped fixtures are covered too."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MODALREC_CACHE", str(tmp_path_factory.getbasetemp() / "graph-cache-default"))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def syn_dir(tmp_path_factory) -> Path:
    """A small synthetic dataset folder (150 users, 100 items, image 24-d, text 12-d), written once."""
    from modalrec.data.synth import write_synthetic_dataset

    return write_synthetic_dataset(
        tmp_path_factory.mktemp("data") / "syn",
        n_users=SYN_USERS,
        n_items=SYN_ITEMS,
        modalities=dict(SYN_MODALITIES),
        seed=1,
    )


@pytest.fixture(scope="session")
def syn_dataset(syn_dir):
    """The loaded synthetic dataset (treat as read-only)."""
    from modalrec.data.dataset import load_dataset

    return load_dataset(syn_dir)


def assert_one_line_error(result, *fragments: str) -> None:
    """A CLI result that failed with exit code 1 and one ``error:`` line holding every fragment."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    err = result.stderr.strip()
    assert err.startswith("error:") and "\n" not in err, err
    for f in fragments:
        assert f in err, (f, err)


def inter_text(rows: Iterable[Sequence], header: Sequence[str] = HEADER) -> str:
    """Tab-separated .inter file text from a header and rows."""
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


def write_folder(
    path: Path,
    rows: Iterable[Sequence] | None = None,
    header: Sequence[str] = HEADER,
    features: dict[str, np.ndarray] | None = None,
    name: str = "toy",
    text: str | None = None,
    titles: str | None = None,
) -> Path:
    """Write a hand-made dataset folder: ``<name>.inter`` from rows (or raw ``text``), features, titles."""
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{name}.inter").write_text(text if text is not None else inter_text(rows or [], header))
    for m, x in (features or {}).items():
        np.save(path / f"{m}_feat.npy", x)
    if titles is not None:
        (path / "item_text.tsv").write_text(titles)
    return path


def toy_rows(n_users: int = 4, n_items: int = 6) -> list[tuple]:
    """A valid little interaction table: every user has 3 train items, 1 valid, 1 test; all items occur."""
    rows = []
    for u in range(n_users):
        its = [(u + j) % n_items for j in range(5)]
        for j, it in enumerate(its):
            label = 0 if j < 3 else (1 if j == 3 else 2)
            rows.append((u, it, 1, 100 * u + j, label))
    return rows


@pytest.fixture
def make_folder(tmp_path) -> Callable[..., Path]:
    """``make_folder(rows, header=..., features=..., name=..., text=..., titles=...)`` → a new folder in tmp."""
    counter = iter(range(10_000))

    def make(rows=None, **kwargs) -> Path:
        return write_folder(tmp_path / f"ds{next(counter)}", rows, **kwargs)

    return make


def require_shared(folder: str) -> Path:
    """The shared real-data folder, or skip the test with a reason naming what is missing and the variable."""
    root = shared_data_root()
    path = root / folder
    if not path.is_dir():
        source = (
            f"${TEST_DATA_VARIABLE}"
            if os.environ.get(TEST_DATA_VARIABLE)
            else f"the default (${TEST_DATA_VARIABLE} unset)"
        )
        pytest.skip(
            f"real dataset {folder!r} not found at {path} ({source}); set {TEST_DATA_VARIABLE} to the folder "
            f"that holds {folder}/"
        )
    return path


# ---------------------------------------------------------------- small in-memory datasets and models
# The model tests build tiny in-memory datasets of a few shapes. Each shape is generated once per session
# (generation is the slow part) and shared by every test that asks for it, so tests treat them as read-only.


@pytest.fixture(scope="session")
def synthetic() -> Callable[..., Dataset]:
    """``synthetic(n_users, n_items, modalities, seed, name="syn")`` → an in-memory synthetic :class:`Dataset`.

    Generated by :func:`~modalrec.data.synth.generate_synthetic` without cleaning, once per argument set.
    """
    from modalrec.data.dataset import Dataset
    from modalrec.data.synth import generate_synthetic

    made: dict[tuple, Dataset] = {}

    def make(n_users: int, n_items: int, modalities: dict[str, int], seed: int, name: str = "syn") -> Dataset:
        key = (n_users, n_items, tuple(modalities.items()), seed, name)
        if key not in made:
            g = generate_synthetic(n_users=n_users, n_items=n_items, modalities=dict(modalities), seed=seed)
            made[key] = Dataset(
                name=name,
                n_users=g["n_users"],
                n_items=g["n_items"],
                users=g["users"],
                items=g["items"],
                labels=g["labels"],
                timestamps=g["timestamps"],
                features=g["features"],
            )
        return made[key]

    return make


@pytest.fixture(scope="session")
def small2(synthetic) -> Dataset:
    """60 users × 40 items with image (20-d) and text (12-d) features."""
    return synthetic(60, 40, {"image": 20, "text": 12}, seed=7)


@pytest.fixture(scope="session")
def small3(synthetic) -> Dataset:
    """60 users × 40 items with image (20-d), text (12-d) and audio (6-d) features."""
    return synthetic(60, 40, {"image": 20, "text": 12, "audio": 6}, seed=7)


@pytest.fixture(scope="session")
def mid3(synthetic) -> Dataset:
    """80 users × 50 items with image (16-d), text (8-d) and audio (4-d) features."""
    return synthetic(80, 50, {"image": 16, "text": 8, "audio": 4}, seed=7, name="syn_c")


@pytest.fixture(scope="session")
def mid3_as2(mid3) -> Dataset:
    """:func:`mid3` restricted to its image and text features (same interactions)."""
    return mid3.select_modalities(["image", "text"])


@pytest.fixture(scope="session")
def build() -> Callable[..., Recommender]:
    """``build(name, dataset, seed=0, graphs=None, **overrides)`` → the registered model ``name``.

    Its config is the model's defaults plus ``overrides`` (no preset); torch is seeded with ``seed`` first,
    so the initial weights are reproducible; graphs come from ``graphs`` or an uncached :class:`GraphStore`.
    """
    from modalrec.config import resolve_config
    from modalrec.graphs import GraphStore
    from modalrec.models import build_model, get_model_class

    def make(name: str, dataset: Dataset, seed: int = 0, graphs: GraphStore | None = None, **overrides) -> Recommender:
        torch.manual_seed(seed)
        config = resolve_config(get_model_class(name), overrides=overrides)
        if graphs is None:
            graphs = GraphStore(dataset, cache_dir=False)
        return build_model(name, dataset, config, graphs)

    return make


@pytest.fixture(scope="session")
def fixed_batch() -> Callable[..., Batch]:
    """``fixed_batch(dataset, n=64, seed=0, unseen_negatives=True)`` → a seeded training batch.

    ``n`` distinct training pairs (user, positive item), each with a uniformly drawn negative item that,
    with ``unseen_negatives``, is redrawn until the user has no training interaction with it.
    """
    from modalrec.models.base import Batch

    def make(dataset: Dataset, n: int = 64, seed: int = 0, unseen_negatives: bool = True) -> Batch:
        rng = np.random.default_rng(seed)
        u, i = dataset.split("train")
        pick = rng.choice(u.size, size=n, replace=False)
        neg = rng.integers(0, dataset.n_items, size=n)
        if unseen_negatives:
            seen = dataset.train_matrix
            for k in range(n):
                while seen[u[pick[k]], neg[k]]:
                    neg[k] = rng.integers(0, dataset.n_items)
        return Batch(*(torch.as_tensor(a, dtype=torch.long) for a in (u[pick], i[pick], neg)))

    return make


# ---------------------------------------------------------------- a live server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """(base URL) A MARIO run served by ``python -m modalrec.cli serve`` on a free local port."""
    from modalrec.data.synth import write_synthetic_dataset
    from modalrec.runs import train_run

    root = tmp_path_factory.mktemp("served")
    data = write_synthetic_dataset(root / "data", n_users=100, n_items=80, modalities={"image": 16, "text": 8}, seed=4)
    run, _ = train_run(
        "MARIO",
        data,
        overrides={"epochs": 2, "train_batch_size": 256, "learning_rate": 0.01},
        out=root / "run",
        quiet=True,
        cache_dir=False,
    )
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modalrec.cli", "serve", str(run), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited: {proc.stdout.read().decode(errors='replace')}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("server did not answer /health within 90 s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark_script(name: str):
    """The module of ``benchmarks/<name>.py``, imported as its own run would see it (its folder on the path)."""
    import importlib.util

    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import would: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
