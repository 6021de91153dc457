"""The one model interface every recommender implements."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn

from modalrec.config import Config
from modalrec.errors import ConfigError
from modalrec.nn.scoring import dot_scores

if TYPE_CHECKING:
    import scipy.sparse as sp

    from modalrec.data.dataset import Dataset
    from modalrec.graphs import GraphStore

COLD_CONTENT = "content"  # scores an item without interactions from its features (docs: "Cold items")
COLD_UNABLE = "unable"  # ID only: a cold item's scores are random, never the untrained ID row's
# (tensor, rows, values): while scoring, ``tensor[rows]`` reads ``values`` (see Recommender.cold_overrides)
ColdOverride = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
FEATURE_BUFFER = "feat_{}"  # the buffer holding a modality's feature matrix (Recommender.register_feature_buffers)
COO_PARTS = ("rows", "cols", "vals")  # buffer suffixes of a sparse matrix (Recommender.register_coo_buffers)
# scores a model's per-block ranking arrays may hold together (Recommender.ranking_block_size): 256 MiB of
# float32, so a block never shrinks below 1,024 users on catalogues up to ~21k items with three arrays
MAX_STACKED_SCORES = 2**26
# scores per array in one CPU tile of a pair-wise ranking pass (Recommender.score_tile_shape): 512 KiB of
# float32, so the element-wise work on a tile's arrays runs in cache instead of streaming (users × items)
# arrays through memory once per operation (MARIO's ranking; measured by hand: docs/models/mario.md)
PAIR_TILE_SCORES = 2**17


def feature_tensor(features: Mapping[str, np.ndarray], modalities: str | Sequence[str]) -> torch.Tensor:
    """A modality's (n_items, d_m) feature matrix, or several side by side in the given order, as float32.

    One modality shares memory with the dataset's array when that is already contiguous float32
    (copy it, e.g. ``.clone()``, before training it as a parameter).
    """
    names = [modalities] if isinstance(modalities, str) else list(modalities)
    parts = [np.ascontiguousarray(features[m], dtype=np.float32) for m in names]
    return torch.from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1))


class Batch(NamedTuple):
    """A training batch of (user, positive item, sampled negative item) index tensors."""

    users: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor


@dataclass
class Explanation:
    """Per-(user, item) weights over named parts (modalities or representation pairs).

    ``weights`` has shape (n_pairs, len(parts)); ``kind`` says what they are
    (``attention``, ``uniform``, …). ``extra`` holds further arrays keyed by name.
    """

    kind: str
    parts: list[str]
    weights: torch.Tensor
    extra: dict[str, Any] | None = None


class Recommender(nn.Module):
    """Base class of every recommender: built from (dataset, config, graphs), trained through
    :meth:`loss`, ranked through :meth:`full_scores`.

    What to write (each hook's docstring says what it must do and when it is called):

    - ``__init__(dataset, config, graphs)``: call ``super().__init__(dataset, config, graphs)`` first,
      then build the parameters, reading settings from ``config`` (a model's own keys come from its
      ``settings`` / ``config_file``), features from ``dataset.features`` (or
      :meth:`register_feature_buffers`) and graphs from ``graphs``. A setting the model cannot use on
      this dataset raises :meth:`setting_error`.
    - Required: :meth:`loss` and :meth:`compute_representations` (everything ranking needs, computed
      once per evaluation under ``no_grad`` and cached until :meth:`train` / ``eval()`` is called,
      its weights are loaded or it is moved to another device or dtype).
    - Optional: :meth:`full_scores` (when ranking is not the dot product of a (users, items) pair),
      :meth:`pre_epoch`, :meth:`extra_state` / :meth:`load_extra_state`, :meth:`explain`,
      :meth:`score_pairs`, :meth:`candidate_scores`, :meth:`ranking_block_size`, :meth:`score_tile_shape`,
      :meth:`used_modalities`, :meth:`item_representation`, and for cold items :meth:`cold_overrides` /
      :meth:`compute_cold_representations`. A model whose :meth:`full_scores` is a fast rewrite may add
      ``naive_pair_scores(users, items)``, the literal per-pair formula, as its test reference.
    - Class attributes: ``name`` (default: the class name), ``description``, ``min_modalities`` (the
      content modalities it needs; above 0, :meth:`used_modalities` lists them), ``cold_start`` and
      ``cold_rule``.

    ``modalrec check-model`` (:func:`modalrec.testing.check_model`) checks this contract.

    Cold items (a dataset split with ``--protocol cold-items``: items held out with every interaction,
    none in training). ``cold_start`` declares how the model scores them:

    - ``COLD_UNABLE`` (``"unable"``, the default): ID only. A cold item has nothing but its untrained
      rows, so :meth:`ranking_scores` gives cold items random scores; runs and the benchmark report the
      model as "unable (random)" and recommendations leave cold items out. A model that reads features
      but keeps this default is reported so too (``check-model`` warns).
    - ``COLD_CONTENT`` (``"content"``): a cold item's score comes from its features and the shared
      weights only — it changes when the item's features change, and not when anything stored for the
      item (its ID rows, trainable feature copies) does. The model declares in :meth:`cold_overrides`
      the per-item tensors whose cold rows are replaced, while evaluation representations are computed,
      by a value that owes nothing to the item's own training — the warm-item mean
      (:meth:`cold_mean`), zero (:meth:`cold_zero`) or the raw features (:meth:`cold_raw_features`); a
      model whose content path needs more overrides :meth:`compute_cold_representations`. ``cold_rule``
      is the one-line rule shown in logs, ``metrics.json`` and ``/info``.
    """

    name: ClassVar[str] = ""
    """The registered name (case-insensitive); a subclass that does not set it is named after its class."""
    # Settings: the model's keys with their defaults, and its sections (search_space: the grid of
    # --grid/sweep; search_ranges: tune's ranges; presets; bounds; compat; only_with; description), on
    # top of the keys of configs/overall.yaml. A class states them in ONE of the next three attributes
    # (read by modalrec.config.model_settings); the model's own keys then work with --set, --config,
    # --grid, tune and sweep, checked against their defaults' types and their bounds.
    config_name: ClassVar[str] = ""
    """A YAML inside modalrec, ``configs/<config_name>.yaml`` (the built-in models)."""
    config_file: ClassVar[str] = ""
    """A YAML of your own: a path relative to the file of the module defining the class (or absolute)."""
    settings: ClassVar[Mapping[str, Any] | None] = None
    """The same sections as a YAML, in the class: ``{"proj_scale": 0.5, "search_space": {"proj_scale": [0.0, 0.5]}}``.

    Inheritance: a subclass that states none of the three has its base model's settings (``class
    ImgLightGCN(LightGCN)`` keeps ``n_layers``, LightGCN's grid and presets). One that states its own
    has them merged over its base's: its keys and defaults are added to or replace the base's, its
    ``presets``, ``bounds``, ``compat`` and ``only_with`` extend the base's (a preset of the same name
    setting by setting), and its ``search_space`` / ``search_ranges``, when given, replace the base's
    whole (the base's grid is kept when it gives none).
    """
    description: ClassVar[str] = ""
    min_modalities: ClassVar[int] = 0
    cold_start: ClassVar[str] = COLD_UNABLE
    cold_rule: ClassVar[str] = "ID only: no representation for an item without interactions (scored at random)"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:  # not inherited: a subclass of LightGCN is not "LightGCN"
            cls.name = cls.__name__

    def __init__(self, dataset: Dataset, config: Config, graphs: GraphStore) -> None:
        super().__init__()
        if len(dataset.features) < self.min_modalities:
            raise self.setting_error(
                None,
                f"needs at least {self.min_modalities} content modalities; dataset "
                f"{dataset.name!r} has {len(dataset.features)} ({', '.join(dataset.features) or 'none'})",
            )
        self.n_users = dataset.n_users
        self.n_items = dataset.n_items
        self.config = config
        self.graphs = graphs
        self.modalities = list(dataset.features)
        self._cache: Any = None
        # Cold-start bookkeeping: plain tensors (not buffers), rebuilt from the dataset on load.
        self.cold_items = torch.from_numpy(np.ascontiguousarray(dataset.cold_items, dtype=np.int64))
        degree = np.diff(dataset.train_matrix.tocsc().indptr)
        self.warm_items = torch.from_numpy(np.flatnonzero(degree > 0).astype(np.int64))
        self._raw_features = dataset.features  # a reference: the "raw" override of trainable feature copies
        self._cold_seed = int(config.get("seed", 0) or 0)

    def used_modalities(self) -> list[str]:
        """The content modalities this model reads (none for an ID-only model). Optional.

        Shown in the head of ``train.log``; ``check-model`` warns when a model that reads features
        declares ``cold_start = "unable"``. The default lists every modality of the dataset when
        ``min_modalities`` > 0 and none otherwise: override it when the model reads only some of them
        (a setting that switches modalities off), or set ``min_modalities`` for a content model.
        """
        return list(self.modalities) if self.min_modalities > 0 else []

    # ----------------------------------------------------------- building blocks for subclasses
    def setting_error(self, key: str | None, problem: str) -> ConfigError:
        """The one form of a setting this model cannot use here: ``"<Model>: <key> <problem>"``, one line.

        For what only the model can check — a value against the dataset (modality counts and
        names) or against another key. Static ranges and choices are declared in the model's
        YAML ``bounds:`` and checked when the configuration is resolved (:mod:`modalrec.config`).
        ``key`` None: a problem of the dataset as a whole.
        """
        return ConfigError(f"{self.name}: {problem}" if key is None else f"{self.name}: {key} {problem}")

    def register_feature_buffers(
        self,
        dataset: Dataset,
        modalities: Sequence[str] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> list[str]:
        """Register each modality's feature matrix (float32, optionally ``transform``-ed) as buffer ``feat_<m>``.

        Non-persistent: the features are data, not state, so they follow ``.to(device)`` but stay
        out of ``state_dict`` (a saved model.pt holds none and loads into any of these models).
        ``modalities`` defaults to all of the dataset's, in its order. Returns the buffer names;
        read a buffer with :meth:`feature_buffer`.
        """
        names = []
        for m in self.modalities if modalities is None else modalities:
            x = feature_tensor(dataset.features, m)
            names.append(FEATURE_BUFFER.format(m))
            self.register_buffer(names[-1], x if transform is None else transform(x), persistent=False)
        return names

    def feature_buffer(self, modality: str) -> torch.Tensor:
        """The feature matrix of ``modality`` registered by :meth:`register_feature_buffers`."""
        return getattr(self, FEATURE_BUFFER.format(modality))

    def register_coo_buffers(self, name: str, matrix: sp.spmatrix) -> None:
        """Keep a fixed sparse matrix (a frozen item graph) as COO triples on the model's device.

        Non-persistent buffers ``<name>_rows``, ``<name>_cols`` (int64) and ``<name>_vals`` (float32),
        in the order of ``matrix.tocoo()``; read them back with :meth:`coo_buffers`.
        """
        coo = matrix.tocoo()
        parts = (coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data.astype(np.float32))
        for part, array in zip(COO_PARTS, parts, strict=True):
            self.register_buffer(f"{name}_{part}", torch.from_numpy(array), persistent=False)

    def coo_buffers(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, cols, values) registered by :meth:`register_coo_buffers` under ``name``."""
        rows, cols, vals = (getattr(self, f"{name}_{part}") for part in COO_PARTS)
        return rows, cols, vals

    def in_eval_mode(self) -> contextlib.AbstractContextManager[None]:
        """Within the block the model is in eval mode (dropout off: what ranking uses); the mode it had is
        restored afterwards, also when the block raises. Already in eval mode, nothing changes (the
        cached representations stay valid). The same as :func:`ranking_mode` on this model."""
        return ranking_mode(self)

    def ranking_block_size(self, n_columns: int, stacked: int = 1) -> int:
        """Users per block when full ranking forms ``stacked`` (block × ``n_columns``) arrays per user block.
        Optional.

        Not called by the trainer or the evaluator (the evaluator ranks ``eval_batch_size`` users per
        call of :meth:`ranking_scores`): a model's own :meth:`full_scores` / :meth:`candidate_scores`
        call it to cut a user block into smaller ones when scoring forms per-pair or per-modality
        arrays (MARIO, MeAIM, MAML). The ``ranking_block_size`` setting when the model has one and it
        is set; otherwise 1024 on a GPU and 32 per CPU thread (blocks whose score matrices stay
        cache-sized at Baby's catalogue). Either is capped so that the ``stacked``
        arrays hold at most :data:`MAX_STACKED_SCORES` scores together: a block sized for thousands of
        items would take gigabytes per array at hundreds of thousands (a CPU ranking that tiles its
        columns, :meth:`score_tile_shape`, is bounded anyway). A model that sizes its blocks by pairs overrides
        this (MAML).
        """
        value = self.config.get("ranking_block_size")
        if value is None:
            value = 1024 if self.device.type == "cuda" else 32 * max(1, torch.get_num_threads())
        return max(1, min(int(value), MAX_STACKED_SCORES // max(1, stacked * n_columns)))

    def score_tile_shape(self, n_columns: int, stacked: int = 1, n_rows: int | None = None) -> tuple[int, int]:
        """(users, columns) per tile when full ranking forms per-pair arrays tile by tile. Optional.

        On a GPU: :meth:`ranking_block_size` users (capped for ``stacked`` whole-row arrays) and all
        ``n_columns`` (one kernel per operation over a whole block). On a CPU: the setting's or the default
        number of users, and as many columns as keep each array at :data:`PAIR_TILE_SCORES` scores, so a
        tile's element-wise work runs in cache (MARIO's ranking, whose scores need about a dozen
        operations per pair after its GEMMs; a tile's arrays are best allocated once per call and
        reused, see ``nn.scoring.modality_attention_scores_into``); a tile is bounded whatever the catalogue, so the
        whole-row cap does not apply. ``n_rows``, the users of the call, caps a tile's users, and on a CPU the
        columns then widen to keep the tile at :data:`PAIR_TILE_SCORES` (the evaluator's blocks hold fewer
        users than a tile at large catalogues: 594 at 112,800 items, where 1,024-user tiles would have
        shrunk to 594 × 128 scores and paid their per-tile overhead over 1.7× as many tiles).
        """
        on_gpu = self.device.type == "cuda"
        rows = self.ranking_block_size(n_columns, stacked) if on_gpu else self.ranking_block_size(1)
        if n_rows is not None:
            rows = max(1, min(rows, n_rows))
        return rows, n_columns if on_gpu else max(1, min(n_columns, PAIR_TILE_SCORES // rows))

    # ----------------------------------------------------------- interface
    def loss(self, batch: Batch) -> torch.Tensor:
        """The training objective on one batch, a scalar tensor to minimise. Required.

        Called by the trainer once per batch, in training mode with gradients on. ``batch`` holds
        ``train_batch_size`` index tensors on the model's device: users, their positive items (training
        interactions, shuffled every epoch) and one negative item each (drawn uniformly among the
        training items the user has not interacted with). The trainer back-propagates the result and
        steps the optimiser over every parameter; regularisers belong in it. A NaN/inf loss ends
        training at that epoch (no step is taken; the best epoch so far is kept).
        """
        raise NotImplementedError

    def has_closed_form_sgd_step(self) -> bool:
        """Whether :meth:`closed_form_sgd_step` applies to this model's configuration. Optional (default False).

        When it does and the run uses ``optimizer: sgd`` with ``weight_decay: 0``, the trainer calls
        :meth:`closed_form_sgd_step` instead of back-propagating :meth:`loss` through autograd, and
        builds no torch optimiser at all.
        """
        return False

    def closed_form_sgd_step(self, batch: Batch, learning_rate: float) -> float | None:
        """One plain-SGD step on :meth:`loss` of ``batch`` with the gradient written out by hand. Optional.

        Must equal ``loss(batch).backward()`` followed by ``p -= learning_rate · p.grad`` for every
        parameter (up to float summation order) and touch only the rows the batch uses, so a step
        costs what its batch costs — not the size of the embedding tables. Returns the batch's loss
        before the step, or None (and changes nothing) when that loss is NaN/inf. Called under
        ``no_grad``, in training mode, only when :meth:`has_closed_form_sgd_step` is True.
        """
        raise NotImplementedError

    def compute_representations(self) -> Any:
        """Whatever full ranking needs: by default a (user table, item table) pair. Required.

        Read it through :meth:`representations`, never directly: in training mode that recomputes
        it on every call (so :meth:`loss` may use it, with gradients); in evaluation mode it is
        computed once under ``no_grad`` and cached until :meth:`train` (``eval()`` included),
        :meth:`load_state_dict` or a move to another device or dtype (on a cold-items split a content
        model's goes through :meth:`compute_cold_representations`).
        Anything the scores depend on must come from parameters, persistent buffers or the data:
        a model saved and loaded again must give the same scores.
        """
        raise NotImplementedError

    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of the given users on all items, (len(users), n_items). Optional.

        The default is the dot product of the pair :meth:`compute_representations` returns; override
        it when ranking is anything else. Called in evaluation mode under ``no_grad``: through
        :meth:`ranking_scores` by the evaluator (``eval_batch_size`` users at a time) and by
        ``recommend``, directly by ``serve`` (one user at a time). Scoring a block must equal scoring
        its users one by one (no dependence on the block), and agree with :meth:`score_pairs`.
        """
        user_repr, item_repr = self.representations()
        return dot_scores(user_repr[users], item_repr)

    def pre_epoch(self, epoch: int) -> None:
        """Prepare epoch ``epoch`` (0-based): re-sample a graph, rebuild a structure. Optional.

        Called by the trainer at the start of every epoch, in training mode, after the epoch's
        random state is captured and before its batches are drawn; a resume mid-epoch calls it
        again with that same random state. Random draws must come from torch's, NumPy's or
        Python's global generators (the trainer seeds and saves them), and nothing may depend on
        the ``epochs`` cap: the same seed must give the same epochs whatever their number.
        """

    def extra_state(self) -> dict[str, Any]:
        """Training state outside :meth:`state_dict` that a resumed run needs to continue exactly. Optional.

        E.g. an optimiser the model steps itself, or counters and caches kept across the batches
        of an epoch. Called by the trainer when it writes a resume state — at an epoch boundary
        (after the evaluation) or, on an interrupt, after any batch; a mid-epoch resume replays
        the epoch's :meth:`pre_epoch` (with the epoch's random state) before
        :meth:`load_extra_state`. Random draws from torch's global generator need nothing here:
        the trainer saves every global random state. Default: nothing.
        """
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned. Optional (needed when :meth:`extra_state` is).

        Called by the trainer when resuming a run, after the weights were loaded (and, mid-epoch,
        after the epoch's :meth:`pre_epoch` was replayed).
        """

    def item_representation(self) -> torch.Tensor:
        """The item embedding used for analyses (modality preservation, similar items)."""
        return self.representations()[1]

    def explain(self, users: torch.Tensor, items: torch.Tensor) -> Explanation | None:
        """Per-(user, item) influence of each modality, or None when the model has none (the default). Optional.

        For aligned pairs (``users[i]``, ``items[i]``): an :class:`Explanation` whose ``weights`` are
        (pairs, parts), one column per name in ``parts``; ``extra["item_weights"]`` may add
        (pairs, parts, item parts) weights named by ``extra["item_parts"]``. Called in evaluation
        mode by ``recommend --explain`` and ``serve`` (whose start-up probes it once on a pair),
        never during training or evaluation.
        """
        return None

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of aligned (user, item) pairs, (len(users),). Optional.

        The default goes through :meth:`full_scores` of the distinct users. A model may override it
        with a cheaper per-pair path, which must give the same scores as the full ranking (the
        contract kit compares them). Not used by the trainer or the evaluator.
        """
        uniq, inverse = torch.unique(users, return_inverse=True)
        return self.full_scores(uniq)[inverse, items]

    # ----------------------------------------------------------- cold items
    @property
    def scores_cold_items(self) -> bool:
        """True when the dataset has cold items and this model scores them from content."""
        return self.cold_start == COLD_CONTENT and self.cold_items.numel() > 0

    def cold_overrides(self) -> list[ColdOverride]:
        """Per-item tensors whose cold rows are replaced while evaluation representations are computed.

        Needed by a ``cold_start = COLD_CONTENT`` model with anything stored per item (ID rows, item
        biases, trainable feature copies): each entry is (tensor, rows, values), made by
        :meth:`cold_mean`, :meth:`cold_zero` or :meth:`cold_raw_features` (:meth:`cold_feature_copies`) — e.g.
        ``[self.cold_mean(self.item_emb.weight)]``; a node table (users then items) passes
        ``offset=self.n_users``. Called, in evaluation mode, whenever the representations are
        computed on a dataset with cold items (:meth:`compute_cold_representations`); the tensors
        hold their trained values again afterwards. The base returns none (an ID-only model needs none).
        """
        return []

    def _cold_rows(self, table: torch.Tensor, offset: int) -> torch.Tensor:
        return self.cold_items.to(table.device) + offset

    def cold_mean(self, table: torch.Tensor, offset: int = 0) -> ColdOverride:
        """Cold rows of ``table`` (item j at row ``offset`` + j) set to the mean row of the warm items.

        Warm = items with a training interaction; the mean is the ID part of "an average item".
        """
        warm = self.warm_items.to(table.device) + offset
        rows = self._cold_rows(table, offset)
        mean = table.detach()[warm].mean(dim=0, keepdim=True)
        return table, rows, mean.expand(rows.shape[0], -1).clone()

    def cold_zero(self, table: torch.Tensor, offset: int = 0) -> ColdOverride:
        """Cold rows of ``table`` set to zero (the ID part absent, the mode of an L2 prior)."""
        rows = self._cold_rows(table, offset)
        return table, rows, table.new_zeros((rows.shape[0], *table.shape[1:]))

    def cold_raw_features(self, table: torch.Tensor, modality: str) -> ColdOverride:
        """Cold rows of a trainable copy of a modality's features reset to the raw features (their initial value)."""
        rows = self._cold_rows(table, 0)
        raw = feature_tensor(self._raw_features, modality)[self.cold_items]
        return table, rows, raw.to(device=table.device, dtype=table.dtype)

    def cold_feature_copies(self, tables: Sequence[torch.Tensor]) -> list[ColdOverride]:
        """:meth:`cold_raw_features` of every modality's trainable feature copy (``tables`` in the order of
        ``self.modalities``)."""
        return [self.cold_raw_features(t, m) for t, m in zip(tables, self.modalities, strict=True)]

    @contextlib.contextmanager
    def cold_substitution(self) -> Iterator[None]:
        """Within the block, the tensors of :meth:`cold_overrides` hold the cold values; restored after."""
        saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        with torch.no_grad():
            for table, rows, values in self.cold_overrides():
                saved.append((table, rows, table[rows].clone()))
                table[rows] = values.to(table.dtype)
        try:
            yield
        finally:
            with torch.no_grad():
                for table, rows, old in reversed(saved):
                    table[rows] = old

    def compute_cold_representations(self) -> Any:
        """:meth:`compute_representations` with the cold rows of :meth:`cold_overrides` in place.

        What :meth:`representations` computes in evaluation mode for a ``COLD_CONTENT`` model on a
        dataset with cold items. Optional: override it when the content path needs more than row
        replacements (e.g. cold items' graph neighbours taken from feature similarity).
        """
        with self.cold_substitution():
            return self.compute_representations()

    def ranking_scores(self, users: torch.Tensor) -> torch.Tensor:
        """What evaluation and recommendation rank by: :meth:`full_scores`, with cold items handled.

        A content model's cold items are already scored from content (:meth:`representations`).
        An ID-only model's cold columns are replaced by random draws: each cold item takes the
        score of a uniformly drawn warm item of the same user (a random rank among the warm
        items; among cold items a random order), seeded by the config seed and the users.
        """
        scores = self.full_scores(users)
        if self.cold_start != COLD_UNABLE or self.cold_items.numel() == 0:
            return scores
        cold = self.cold_items.to(scores.device)
        warm_mask = torch.ones(scores.shape[1], dtype=torch.bool, device=scores.device)
        warm_mask[cold] = False
        gen = torch.Generator().manual_seed(self._cold_seed * 1_000_003 + int(users[0]) if len(users) else 0)
        warm_sorted = scores[:, warm_mask].sort(dim=1).values
        pick = torch.randint(0, warm_sorted.shape[1], (scores.shape[0], cold.shape[0]), generator=gen)
        scores = scores.clone()
        scores[:, cold] = torch.gather(warm_sorted, 1, pick.to(scores.device))
        return scores

    def candidate_scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """:meth:`ranking_scores` on the ``items`` columns only, (len(users), len(items)). Optional.

        What a cold-item evaluation ranks by: the evaluator calls it, in evaluation mode under
        ``no_grad``, with a block of users and the split's cold items. The default slices the full
        ranking (so an ID-only model's random cold scores are the same draws); a model that pays per
        scored pair (MAML) overrides it to score only these columns, which must equal the ranking's.
        """
        scores = self.ranking_scores(users)
        return scores[:, items.to(scores.device)]

    # ----------------------------------------------------------- caching
    def representations(self) -> Any:
        """Cached :meth:`compute_representations`; recomputed after any training step.

        In eval mode on a dataset with cold items, a content model's cold items are scored
        through :meth:`compute_cold_representations`.
        """
        if self.training:
            return self.compute_representations()
        if self._cache is None:
            with torch.no_grad():
                self._cache = (
                    self.compute_cold_representations() if self.scores_cold_items else self.compute_representations()
                )
        return self._cache

    def train(self, mode: bool = True) -> Recommender:
        """Set the mode and drop the cached representations: on every call, ``eval()`` on a model already in
        evaluation mode included, so ``eval()`` is how to refresh them after editing weights by hand
        (docs/extending.md#cached-representations). Code that ranks repeatedly on fixed weights switches
        modes through :func:`ranking_mode` instead, which leaves an evaluating model (and its cache) alone."""
        self._cache = None
        return super().train(mode)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        self._cache = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        # .to(device), .double(), .half(), …: cached tables would stay on the old device or dtype
        self._cache = None
        return super()._apply(fn, recurse)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def extra_repr(self) -> str:
        return f"users={self.n_users}, items={self.n_items}, modalities={self.modalities}"


@contextlib.contextmanager
def ranking_mode(model: Any) -> Iterator[None]:
    """Within the block ``model`` is in evaluation mode; a model that was training is switched back afterwards,
    also when the block raises.

    A model already in evaluation mode is left alone, not ``eval()``-ed again: :meth:`Recommender.train` drops
    the cached representations on every call, so re-entering evaluation mode would make every ranking call (each
    chunk of a resumable pass, a test right after a validation on the same weights) compute them anew — about
    80 s for MARIO at 300,000 items, where they include its learned kNN graphs. Works on anything with
    ``training``, ``train()`` and ``eval()`` (the evaluator also ranks the fixed popularity and random rankers).
    """
    was_training = bool(model.training)
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def xavier_embedding(n: int, dim: int, uniform: bool = True) -> nn.Embedding:
    """An embedding table with Xavier init (uniform by default; docs/building-blocks.md#initialisation)."""
    emb = nn.Embedding(n, dim)
    (nn.init.xavier_uniform_ if uniform else nn.init.xavier_normal_)(emb.weight)
    return emb
