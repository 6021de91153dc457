"""The Optuna side of ``modalrec tune``: the storage, the sampler, the pruner, the study and its heartbeats.

The study lives in an Optuna storage: ``sqlite:///<report>/study.db`` by default; a
``postgresql://`` URL lets ``modalrec tune`` processes on several machines share one study.
Samplers: ``tpe`` (with the constant liar, so that parallel trials do not all try the same
point), ``random`` and ``grid`` (the finite ``search_space`` only); pruners: ``median``,
``hyperband`` and ``none``. The driver records the heartbeat of the trials it runs, so the
trials of a process that died are marked failed by the next one after the grace period.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from modalrec.errors import ConfigError, ModalrecError
from modalrec.experiments.search_space import encode

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
HEARTBEAT_SECONDS = 20
GRACE_SECONDS = 60


# ---------------------------------------------------------------------- storage
def storage_url(url: str) -> str:
    """``postgresql://…`` with the driver that is installed named explicitly (psycopg 3, else psycopg2).

    SQLAlchemy's default driver for a bare ``postgresql://`` differs between its versions; naming it
    makes the URL work with whichever of the two the environment has.
    """
    if not url.startswith(("postgresql://", "postgres://")):
        return url
    import importlib.util

    rest = url.split("://", 1)[1]
    for module, dialect in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"{dialect}://{rest}"
    raise ModalrecError(
        f"--storage {safe_url(url)}: no PostgreSQL driver (psycopg) is installed; it is in the 'scale' extra: "
        "pip install -e '.[scale]'"
    )


def safe_url(url: str) -> str:
    """The URL without its password (it goes into error messages and reports)."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


def open_storage(optuna: Any, url: str) -> Any:
    """The study storage; a few tries, as processes started together race to create Optuna's tables."""
    for attempt in range(5):
        try:
            return _open_storage(optuna, url)
        except ModalrecError as exc:
            # The loser of the race sees either a duplicate row or a table the winner created a moment before.
            message = str(exc).lower()
            if attempt == 4 or not ("duplicate key" in message or "already exists" in message):
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def _open_storage(optuna: Any, url: str) -> Any:
    try:
        return optuna.storages.RDBStorage(
            storage_url(url), heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS
        )
    except ImportError as exc:  # the database driver (psycopg) is missing
        raise ModalrecError(
            f"--storage {safe_url(url)}: {exc}; the PostgreSQL driver is in the 'scale' extra: "
            "pip install -e '.[scale]'"
        ) from None
    except Exception as exc:  # noqa: BLE001 — SQLAlchemy's errors: unreachable server, bad URL, refused login
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModalrecError(f"--storage {safe_url(url)}: cannot open the study storage ({reason})") from None


# ---------------------------------------------------------------------- sampler and pruner
def make_sampler(optuna: Any, kind: str, seed: int, space: dict[str, dict[str, Any]], budget: int) -> Any:
    """The ``--sampler`` of the study, seeded with ``seed``; ``budget`` (the trials) sizes TPE's random start."""
    if kind == "tpe":
        # Optuna's default of 10 random start-up trials would make a small budget a random search
        startup = min(10, max(3, budget // 4))
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=startup)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":
        grid = {k: [encode(c) for c in d["choices"]] for k, d in space.items()}
        return _ask_tell_grid_sampler(optuna)(grid, seed=seed)
    raise ConfigError(f"--sampler {kind!r}: choose from {', '.join(SAMPLERS)}")


def _ask_tell_grid_sampler(optuna: Any) -> type:
    """Optuna's ``GridSampler`` for a study driven by ask and tell, as ``modalrec tune``'s driver drives it.

    Optuna's grid sampler ends ``Study.optimize`` when a told trial finishes the grid, by calling
    ``Study.stop`` from ``after_trial`` — which raises ``RuntimeError`` outside ``optimize``, i.e. on
    the ``tell`` of the last grid point. Here ``after_trial`` does nothing: the driver stops asking
    for trials itself once the grid is exhausted (``GridSampler.is_exhausted``).
    """

    class AskTellGridSampler(optuna.samplers.GridSampler):
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            """Nothing (see :func:`_ask_tell_grid_sampler`): the driver, not the sampler, ends the study."""

    return AskTellGridSampler


def make_pruner(optuna: Any, kind: str, max_epochs: int, startup: int, warmup: int) -> Any:
    """The ``--pruner``: ``startup`` trials run unpruned, none is pruned before step ``warmup`` (median)."""
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, max_epochs), reduction_factor=3)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner {kind!r}: choose from {', '.join(PRUNERS)}")


# ---------------------------------------------------------------------- the study
def trials_in_study(optuna: Any, storage: Any, name: str) -> int:
    """How many trials the study ``name`` already holds (0 when it does not exist yet)."""
    existing = _summary(optuna, storage, name)
    return existing.n_trials if existing is not None else 0


def _summary(optuna: Any, storage: Any, name: str) -> Any:
    """Optuna's summary of the study ``name`` in ``storage``, or None when there is none."""
    return next((s for s in optuna.get_all_study_summaries(storage) if s.study_name == name), None)


def study_identity(optuna: Any, storage: Any, name: str) -> dict[str, Any] | None:
    """What the study ``name`` was made for (see :func:`open_study`); None when it does not exist (or says nothing)."""
    existing = _summary(optuna, storage, name)
    return existing.user_attrs.get("modalrec") if existing is not None else None


def open_study(
    optuna: Any, storage: Any, name: str, sampler: Any, pruner: Any, identity: dict[str, Any], url: str
) -> Any:
    """Create the study ``name`` (maximising), or load it when it exists and was made for the same ``identity``.

    ``identity`` (model, data fingerprint, modalities, fixed overrides, metric, the model's source
    hash) is stored with a new study; a study made for another one is refused, naming the first
    difference. A study made before source hashes were recorded has none: its source counts as the same.
    """
    for attempt in range(5):  # two processes creating the same study at once: the loser loads it
        try:
            study = optuna.create_study(
                study_name=name,
                storage=storage,
                sampler=sampler,
                pruner=pruner,
                direction="maximize",
                load_if_exists=True,
            )
            break
        except optuna.exceptions.DuplicatedStudyError:
            if attempt == 4:
                raise
            time.sleep(0.5)
    made_for = study.user_attrs.get("modalrec")
    if made_for is None:
        study.set_user_attr("modalrec", identity)
    elif (diff := next((k for k in identity if identity[k] != made_for.get(k, identity[k])), None)) is not None:
        raise ModalrecError(
            f"study {name!r} in {safe_url(url)} was made for another {diff} ({made_for.get(diff)!r}, now "
            f"{identity[diff]!r}); use another --study-name or --out"
        )
    return study


class Heartbeat:
    """Records the heartbeat of the trials this process runs, so a process that dies leaves trials that go stale."""

    def __init__(self, storage: Any) -> None:
        self.storage, self.ids = storage, set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS / 2):
            with self._lock:
                ids = list(self.ids)
            for tid in ids:
                try:
                    self.storage.record_heartbeat(tid)
                except Exception:  # noqa: BLE001 — a missed beat only makes the trial look stale sooner
                    pass

    def add(self, tid: int) -> None:
        """Beat for trial ``tid`` from now on (and once at once)."""
        with self._lock:
            self.ids.add(tid)
        self.storage.record_heartbeat(tid)

    def discard(self, tid: int) -> None:
        """Stop beating for trial ``tid`` (it finished)."""
        with self._lock:
            self.ids.discard(tid)

    def close(self) -> None:
        """Stop the heartbeat thread."""
        self._stop.set()
