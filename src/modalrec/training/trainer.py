"""The trainer: its state in one :class:`TrainState`, each phase of training a method, its hooks :class:`Callback`s."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
import torch

from modalrec.errors import ConfigError, ModalrecError
from modalrec.evaluation import EvalResult, Evaluator
from modalrec.models.base import Batch
from modalrec.training.large_data import describe_large_data
from modalrec.training.rng import capture_rng_state, restore_rng_state
from modalrec.training.runtime import deterministic_cpu_kernels, keep_freed_memory_in_process, peak_memory_mb
from modalrec.training.sampler import NegativeSampler
from modalrec.training.state import TrainingStopped, TrainResult, TrainState

if TYPE_CHECKING:
    from modalrec.config import Config
    from modalrec.data.dataset import Dataset
    from modalrec.models.base import Recommender
    from modalrec.training.distributed import DataParallel

OPTIMIZERS = ("adam", "sgd")


def make_optimizer(model: torch.nn.Module, config: Config) -> torch.optim.Optimizer:
    """The trainer's optimizer: ``adam`` (MMRec's, the default) or plain ``sgd`` (Rendle's BPR, Cornac).

    Both take ``learning_rate`` and ``weight_decay``. With ``sgd`` the step is taken on the batch
    MEAN loss, so per-sample SGD with step η corresponds to ``learning_rate`` = η · batch size.
    """
    kind = str(config.get("optimizer", "adam")).lower()
    if kind not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {config.get('optimizer')!r}")
    cls = torch.optim.Adam if kind == "adam" else torch.optim.SGD
    return cls(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)


def uses_closed_form_step(model: Recommender, config: Config) -> bool:
    """Whether the trainer steps ``model`` through its :meth:`~Recommender.closed_form_sgd_step`.

    Only for plain SGD without weight decay (the step the method must equal) and a model that
    says the closed form covers its configuration.
    """
    kind = str(config.get("optimizer", "adam")).lower()
    if kind not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {config.get('optimizer')!r}")
    return kind == "sgd" and float(config.weight_decay) == 0.0 and model.has_closed_form_sgd_step()


def learning_rate_at(config: Config, epoch: int) -> float:
    """The step size of epoch ``epoch`` (0-based): learning_rate · γ^(epoch / T), ``learning_rate_scheduler`` [γ, T]."""
    gamma, period = config.learning_rate_scheduler
    return float(config.learning_rate) * gamma ** (epoch / period)


def checkpoint_interval(config: Config) -> int:
    """Epochs between resume states: ``checkpoint_every``, where 0 means at every evaluation (``eval_step``)."""
    every = int(config.get("checkpoint_every", 0))
    if every < 0:
        raise ConfigError(f"checkpoint_every = {every}: must be ≥ 0 (0 = at every evaluation)")
    return every or int(config.eval_step)


class Callback:
    """A hook into :class:`Trainer`; override the events needed. Every event gets the trainer first.

    Per epoch: ``on_epoch_start``; ``on_batch_end`` after every optimiser step; ``on_validation_end`` after an
    evaluation (with the epoch's ``valid_metric``); then ``on_epoch_end`` with the epoch's log line, or
    ``on_epoch_abort`` with a closing line when the epoch ends early (interrupt, NaN loss); ``on_epoch_boundary``
    only when another epoch follows — resume states are written there. ``on_train_start``/``on_train_end`` frame
    the epochs (the end also on an exception). A callback asks training to stop with
    :meth:`Trainer.request_stop`; it takes effect right after ``on_batch_end`` or ``on_epoch_boundary``.
    An exception a callback raises ends training and propagates.
    """

    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first epoch (of this process)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Before the epoch's sampling (or its replay, when resuming mid-epoch)."""

    def on_batch_end(self, trainer: Trainer, epoch: int, batch: int, loss: float) -> None:
        """After batch ``batch`` (0-based) of ``epoch`` was trained; ``loss`` is its loss."""

    def on_validation_end(self, trainer: Trainer, epoch: int, score: float) -> None:
        """After the validation of ``epoch``; ``score`` is its ``valid_metric``."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, line: str) -> None:
        """After a completed epoch (and its validation); ``line`` reports it."""

    def on_epoch_abort(self, trainer: Trainer, epoch: int, line: str) -> None:
        """When ``epoch`` ends early (a stop request mid-epoch, a NaN loss); ``line`` says why."""

    def on_epoch_boundary(self, trainer: Trainer, epoch: int) -> None:
        """After ``epoch`` when training goes on: the state is whole (batch None) and may be saved."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last epoch, a stop or an exception; before the best weights are restored and tested."""


class Trainer:
    """Trains ``model`` with early stopping on ``config.valid_metric``; tests once on the best weights.

    The validation metric must improve strictly to count; after ``stopping_step`` evaluations without
    improvement training stops, but never before ``min_epochs`` epochs. A NaN/inf loss stops training and
    keeps the best result so far. The test split is evaluated exactly once, on the restored best weights,
    and is never used for any decision.

    Resumable: :meth:`checkpoint` hands ``write_state`` the complete state (weights, optimiser,
    :class:`TrainState`, every RNG state, the model's :meth:`extra_state`); ``fit(resume=that state)``
    continues bit-for-bit as if never stopped (same device and thread count). The random draws happen in a
    fixed order — an epoch's RNG state is captured, then ``pre_epoch``, then the sampler's permutation and
    negatives — which a mid-epoch resume replays exactly.
    """

    def __init__(
        self,
        model: Recommender,
        dataset: Dataset,
        config: Config,
        *,
        log: Callable[[str], None] = print,
        device: str | torch.device = "cpu",
        rng: np.random.Generator | None = None,
        write_state: Callable[[dict[str, Any]], None] | None = None,
        callbacks: Sequence[Callback] = (),
        parallel: DataParallel | None = None,
    ) -> None:
        self.model, self.dataset, self.config, self.log = model, dataset, config, log
        self.parallel = parallel  # data-parallel worker (training/distributed.py), or None: one process
        self.device = torch.device(device)
        keep_freed_memory_in_process()
        deterministic_cpu_kernels(self.device)
        self.rng = rng if rng is not None else np.random.default_rng(config.seed)
        train_u, train_i = dataset.split("train")
        self.sampler = NegativeSampler(train_u, train_i, dataset.n_items, self.rng)
        self.metric = config.valid_metric.lower()
        # Early stopping may rank a fixed, seeded sample of the valid users (``valid_user_sample``); the
        # best weights are then validated once more on every valid user (``finish``), so a run's valid
        # metrics and per-user vectors always cover the whole split.
        self.valid_eval = self._evaluator(
            "valid", user_sample=int(config.get("valid_user_sample", 0)), sample_seed=int(config.seed)
        )
        if self.metric not in {f"{m}@{k}" for m in config.metrics for k in config.topk}:
            raise ModalrecError(f"valid_metric {config.valid_metric!r} is not among the computed metrics/topk")
        self.closed_form = parallel is None and uses_closed_form_step(model, config)  # DDP needs gradients
        # No torch optimiser for a closed-form step: constructing one imports torch's compiler stack
        # (≈ 1 s of every run's start-up), which a step written out by hand never uses.
        self.optimizer = None if self.closed_form else make_optimizer(model, config)
        self.step_module = parallel.wrap(model) if parallel is not None else None
        self.batch_size = int(config.train_batch_size)
        self.n_batches = math.ceil(train_u.size / self.batch_size)
        self.max_epochs = int(config.epochs)
        self.checkpoint_every = checkpoint_interval(config)
        # a floor on the time between resume states, for the at-every-evaluation schedule only
        self.checkpoint_seconds = (
            float(config.get("checkpoint_seconds", 0)) if not config.get("checkpoint_every") else 0.0
        )
        self.write_state = write_state
        self.callbacks = list(callbacks)
        self.state = TrainState()
        self.stop_signal: int | None = None  # set by request_stop
        self.stop_reason = "max epochs reached"
        self.learning_rate = learning_rate_at(config, 0)  # the step size of the epoch in progress
        self.rng_epoch_start: dict[str, Any] | None = None  # the RNG state the epoch in progress began with
        self._resume_extra: dict[str, Any] | None = None  # the model's extra state of a mid-epoch resume
        self._written_at: tuple[int, int | None] | None = None  # (epoch, batch) of the last state written

    def _evaluator(self, split: str, **options: Any) -> Evaluator:
        c = self.config
        return Evaluator(
            self.dataset,
            split,
            list(c.topk),
            tuple(c.metrics),
            block_size=c.eval_batch_size,
            device=self.device,
            mode=c.get("eval_mode"),
            **options,
        )

    def _fire(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: dict[str, Any] | None = None, evaluate_test: bool = True) -> TrainResult:
        """Train (from ``resume``, a state :meth:`checkpoint` wrote, if given), then restore the best weights and
        test them once (unless ``evaluate_test`` is False). Raises :class:`TrainingStopped` on a stop request."""
        if resume is not None:
            self.resume(resume)
        mode_line = describe_large_data(self.config, self.sampler.users.size, self.n_batches)
        if mode_line is not None:
            self.log(mode_line)
        if self.validation_sampled:
            v = self.validation_record()
            self.log(
                f"early stopping validates on {v['users']} of the {v['of']} valid users (seed {v['seed']}); "
                "the best epoch is then validated on all of them"
            )
        try:
            self._fire("on_train_start")
            while self.state.epoch < self.max_epochs:
                if not self.run_epoch():
                    break
        finally:
            self._fire("on_train_end")
        return self.finish(evaluate_test)

    def run_epoch(self) -> bool:
        """Train one epoch (or the rest of it), validate when due; False when training ends after it."""
        st = self.state
        epoch = st.epoch
        self._fire("on_epoch_start", epoch)
        self.model.train()
        self.learning_rate = learning_rate_at(self.config, epoch)
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate
        draws = self.start_epoch(epoch) if st.batch is None else self.replay_epoch(epoch)
        finite, train_seconds = self.train_batches(epoch, *draws)
        st.epoch_seconds.append(train_seconds)
        record = {"epoch": epoch, "loss": st.epoch_loss / self.n_batches, "train_seconds": round(train_seconds, 4)}
        st.batch, st.epoch = None, epoch + 1
        if not finite:
            st.history.append({**record, "loss": None})  # None, not NaN: metrics.json stays strict JSON
            self._fire("on_epoch_abort", epoch, f"epoch {epoch}: loss is NaN/inf — stopping, keeping the best epoch")
            self.stop_reason = f"non-finite loss at epoch {epoch}"
            return False
        line = f"epoch {epoch:4d}  loss {record['loss']:.5f}  {train_seconds:.2f}s"
        if (epoch + 1) % int(self.config.eval_step) == 0:
            line += self.validate(epoch, record)
        st.history.append(record)
        self._fire("on_epoch_end", epoch, line)
        if self.should_stop_early(epoch) or st.epoch >= self.max_epochs:
            return False
        self._fire("on_epoch_boundary", epoch)
        if self.stop_signal is not None:
            self.stop()
        return True

    def start_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A fresh epoch: remember the RNG state, then ``pre_epoch`` and the epoch's (users, pos, neg) draws."""
        self.rng_epoch_start = capture_rng_state(self.rng, self.device)
        self.model.pre_epoch(epoch)
        draws = self.sampler.draw_epoch()
        self.state.batch, self.state.epoch_loss, self.state.epoch_train_seconds = 0, 0.0, 0.0
        return draws

    def replay_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Resuming mid-epoch: replay the epoch's ``pre_epoch`` and draws from its starting RNG state, then return
        to the RNG and model state at the batch where it stopped."""
        rng_now = capture_rng_state(self.rng, self.device)
        restore_rng_state(self.rng_epoch_start, self.rng, self.device)
        self.model.pre_epoch(epoch)
        draws = self.sampler.draw_epoch()
        restore_rng_state(rng_now, self.rng, self.device)
        self.model.load_extra_state(self._resume_extra)  # after the replayed pre_epoch: the mid-epoch state
        return draws

    def train_batches(self, epoch: int, users: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> tuple[bool, float]:
        """Train the epoch's batches from ``state.batch`` on; (whether every loss was finite, training seconds)."""
        st = self.state
        t0 = time.perf_counter()
        for b in range(st.batch, self.n_batches):
            lo, hi = b * self.batch_size, min(users.size, (b + 1) * self.batch_size)
            if self.parallel is not None:  # this worker's part of the global batch
                lo, hi = self.parallel.batch_part(lo, hi)
            parts = (torch.from_numpy(a[lo:hi]).to(self.device) for a in (users, pos, neg))
            value = self.train_step(Batch(*parts))
            if value is None:
                return False, st.epoch_train_seconds + time.perf_counter() - t0
            st.epoch_loss += value
            st.batch = b + 1
            self._fire("on_batch_end", epoch, b, value)
            if self.stop_signal is not None:
                st.epoch_train_seconds += time.perf_counter() - t0
                self._fire(
                    "on_epoch_abort", epoch, f"epoch {epoch:4d}  interrupted after batch {b + 1} of {self.n_batches}"
                )
                self.stop()
        return True, st.epoch_train_seconds + time.perf_counter() - t0

    def train_step(self, batch: Batch) -> float | None:
        """One optimiser step on ``batch``; its loss, or None (and no step) when the loss is NaN/inf."""
        if self.optimizer is None:
            with torch.no_grad():
                return self.model.closed_form_sgd_step(batch, self.learning_rate)
        if self.parallel is not None:
            return self._parallel_step(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.model.loss(batch)
        if not torch.isfinite(loss):
            return None
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def _parallel_step(self, batch: Batch) -> float | None:
        """The data-parallel step: every worker's loss on its part, their mean decides (the same on every worker
        whether the step is taken — a worker that skipped the backward pass would leave the others waiting)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.step_module(*batch)
        value = self.parallel.mean(loss)
        if not math.isfinite(value):
            return None
        loss.backward()  # DDP averages the gradients over the workers here
        self.optimizer.step()
        return value

    def evaluate(self, evaluator: Evaluator) -> EvalResult:
        """``evaluator`` on the model as it is; split among the workers and merged when data-parallel."""
        if self.parallel is not None:
            return self.parallel.evaluate(evaluator, self.model)
        return evaluator.evaluate(self.model)

    def validate(self, epoch: int, record: dict[str, Any]) -> str:
        """Evaluate on the validation split, keep the best weights, count evaluations without improvement.

        Adds the rounded metrics to the epoch's history ``record``; returns the text for the epoch's line.
        """
        st = self.state
        result = self.evaluate(self.valid_eval)
        st.eval_seconds.append(result.seconds)
        record["valid"] = result.rounded()
        score = result.metrics[self.metric]
        line = f"  valid {self.metric} {score:.4f}"
        if score > st.best_score:
            st.best_score, st.best_epoch, st.best_valid, st.bad_evals = score, epoch, result, 0
            st.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
            line += "  *"
        else:
            st.bad_evals += 1
        self._fire("on_validation_end", epoch, score)
        return line

    def should_stop_early(self, epoch: int) -> bool:
        """More than ``stopping_step`` evaluations without improvement, and ``min_epochs`` reached."""
        st = self.state
        if st.bad_evals > int(self.config.stopping_step) and epoch + 1 >= int(self.config.get("min_epochs", 0)):
            self.stop_reason = f"no improvement of valid {self.metric} for {st.bad_evals} evaluations"
            return True
        return False

    # ------------------------------------------------------------------ resume states and stopping
    def state_dict(self, rng: dict[str, Any]) -> dict[str, Any]:
        """The complete resume state at this point, with ``rng`` (from :func:`capture_rng_state`) as its RNG state."""
        return {
            "trainer": self.state.to_dict(),
            "model_state": self.model.state_dict(),
            "model_extra": self.model.extra_state(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else {},
            "rng": rng,
            "rng_epoch_start": self.rng_epoch_start if self.state.batch is not None else None,
            "device": self.device.type,
            "threads": torch.get_num_threads(),
        }

    def checkpoint(self) -> None:
        """Hand the resume state at this point to ``write_state`` (nothing without one)."""
        if self.write_state is None:
            return
        self.write_state(self.state_dict(capture_rng_state(self.rng, self.device)))
        self._written_at = (self.state.epoch, self.state.batch)

    def resume(self, state: dict[str, Any]) -> None:
        """Load a state :meth:`checkpoint` wrote: weights, optimiser, schedule, progress, RNG, model extras."""
        self.state = TrainState.from_dict(state["trainer"])
        self.model.load_state_dict({k: v.to(self.device) for k, v in state["model_state"].items()})
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.rng_epoch_start = state["rng_epoch_start"]
        restore_rng_state(state["rng"], self.rng, self.device)
        self._resume_extra = state["model_extra"]
        if self.state.batch is None:  # at an epoch boundary the model's extra state precedes the next pre_epoch
            self.model.load_extra_state(state["model_extra"])

    def request_stop(self, signum: int) -> None:
        """Ask training to stop at the next safe point (after this batch or epoch boundary), for signal ``signum``."""
        if self.stop_signal is None:
            self.stop_signal = signum

    def stop(self) -> NoReturn:
        """Save the state at this point (unless just written) and raise :class:`TrainingStopped`."""
        st = self.state
        if self._written_at != (st.epoch, st.batch):
            self.checkpoint()
        raise TrainingStopped(self.stop_signal, st.epoch, st.batch, self.n_batches, self.write_state is not None)

    # ------------------------------------------------------------------ the end
    def finish(self, evaluate_test: bool) -> TrainResult:
        """Restore the best weights, test them once (unless ``evaluate_test`` is False), log the summary line."""
        st = self.state
        best_valid, best_epoch = st.best_valid, st.best_epoch
        if st.best_state is None:  # never evaluated (NaN in the first epoch or eval_step > epochs)
            best_epoch = -1
        else:
            self.model.load_state_dict(st.best_state)
        # in evaluation mode before both passes, so they share one computation of the representations
        self.model.eval()
        if st.best_state is None or self.validation_sampled:  # the reported valid metrics cover every user
            best_valid = self.evaluate(self._evaluator("valid"))
        test = self.test() if evaluate_test else None
        test_text = (
            "test " + "  ".join(f"{k} {v:.4f}" for k, v in test.metrics.items() if k.startswith(("recall", "ndcg")))
            if test is not None
            else "test not evaluated (selection run)"
        )
        self.log(f"best epoch {best_epoch}: valid {self.metric} {best_valid.metrics[self.metric]:.4f}; {test_text}")
        return TrainResult(
            best_epoch,
            best_valid,
            test,
            st.history,
            self.stop_reason,
            self.timings(best_valid, test),
            self.validation_record(),
        )

    @property
    def validation_sampled(self) -> bool:
        """Whether early stopping ranks a sample of the valid users rather than all of them."""
        return self.valid_eval.users.size < self.valid_eval.n_eligible_users

    def validation_record(self) -> dict[str, Any]:
        """Which users early stopping ranked: ``users`` of ``of`` valid users (drawn with ``seed`` when sampled)."""
        record: dict[str, Any] = {"users": int(self.valid_eval.users.size), "of": self.valid_eval.n_eligible_users}
        if self.validation_sampled:
            record["seed"] = int(self.config.seed)
        return record

    def test(self) -> EvalResult:
        """The one test pass, on the model as it is (the restored best weights)."""
        return self.evaluate(self._evaluator("test", mask_valid=self.config.mask_valid_at_test))

    def timings(self, best_valid: EvalResult, test: EvalResult | None) -> dict[str, float]:
        """Mean seconds per epoch and per ranking, the test ranking, the total, epochs run and peak memory."""
        epoch_seconds, eval_seconds = self.state.epoch_seconds, self.state.eval_seconds
        return {
            "seconds_per_epoch": float(np.mean(epoch_seconds)) if epoch_seconds else 0.0,
            "ranking_seconds": float(np.mean(eval_seconds)) if eval_seconds else best_valid.seconds,
            "test_ranking_seconds": test.seconds if test is not None else 0.0,
            "total_train_seconds": float(np.sum(epoch_seconds)),
            "epochs_run": len(epoch_seconds),
            "peak_memory_mb": peak_memory_mb(self.device),
        }
