"""The one model interface every recommender implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
from torch import nn

from modalrec.config import Config
from modalrec.errors import ConfigError
from modalrec.nn.scoring import dot_scores

if TYPE_CHECKING:
    from modalrec.data.dataset import Dataset
    from modalrec.graphs import GraphStore


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
    """Base class: build from (dataset, config, graphs); ``loss(batch)``; ``full_scores(users)``.

    Subclasses implement :meth:`loss` and :meth:`compute_representations` (everything
    ranking needs, computed once per evaluation under ``no_grad`` and cached until the
    module is put back in training mode or its weights are loaded), and override
    :meth:`full_scores` when ranking is not a plain dot product.
    """

    name: ClassVar[str] = ""
    config_name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    min_modalities: ClassVar[int] = 0

    def __init__(self, dataset: Dataset, config: Config, graphs: GraphStore) -> None:
        super().__init__()
        if len(dataset.features) < self.min_modalities:
            raise ConfigError(
                f"{self.name} needs at least {self.min_modalities} content modalities; dataset "
                f"{dataset.name!r} has {len(dataset.features)} ({', '.join(dataset.features) or 'none'})"
            )
        self.n_users = dataset.n_users
        self.n_items = dataset.n_items
        self.config = config
        self.graphs = graphs
        self.modalities = list(dataset.features)
        self._cache: Any = None

    # ----------------------------------------------------------- interface
    def loss(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def compute_representations(self) -> Any:
        """Whatever full ranking needs (by default a (user table, item table) pair)."""
        raise NotImplementedError

    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of the given users on all items, (len(users), n_items)."""
        user_repr, item_repr = self.representations()
        return dot_scores(user_repr[users], item_repr)

    def pre_epoch(self, epoch: int) -> None:
        """Hook called by the trainer before every epoch (graph re-sampling etc.)."""

    def extra_state(self) -> dict[str, Any]:
        """Training state outside :meth:`state_dict` that a resumed run needs to continue exactly.

        E.g. an optimiser the model steps itself, or counters and caches kept across the batches
        of an epoch. Called by the trainer when it writes a resume state — at an epoch boundary
        (after the evaluation) or, on an interrupt, after any batch; a mid-epoch resume replays
        the epoch's :meth:`pre_epoch` (with the epoch's random state) before
        :meth:`load_extra_state`. Random draws from torch's global generator need nothing here:
        the trainer saves every global random state. Default: nothing.
        """
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned (after the weights were loaded)."""

    def item_representation(self) -> torch.Tensor:
        """The item embedding used for analyses (modality preservation, similar items)."""
        return self.representations()[1]

    def explain(self, users: torch.Tensor, items: torch.Tensor) -> Explanation | None:
        """Per-(user, item) influence of each modality; None when the model has none."""
        return None

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of aligned (user, item) pairs (through the full-ranking path)."""
        uniq, inverse = torch.unique(users, return_inverse=True)
        return self.full_scores(uniq)[inverse, items]

    # ----------------------------------------------------------- caching
    def representations(self) -> Any:
        """Cached :meth:`compute_representations`; recomputed after any training step."""
        if self.training:
            return self.compute_representations()
        if self._cache is None:
            with torch.no_grad():
                self._cache = self.compute_representations()
        return self._cache

    def train(self, mode: bool = True) -> Recommender:
        self._cache = None
        return super().train(mode)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        self._cache = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def extra_repr(self) -> str:
        return f"users={self.n_users}, items={self.n_items}, modalities={self.modalities}"


def xavier_embedding(n: int, dim: int, uniform: bool = True) -> nn.Embedding:
    """An embedding table with Xavier init (uniform by default; baselines.md §2.6)."""
    emb = nn.Embedding(n, dim)
    (nn.init.xavier_uniform_ if uniform else nn.init.xavier_normal_)(emb.weight)
    return emb
