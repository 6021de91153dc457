"""Top-k recommendations of one training user: the one implementation behind :func:`modalrec.run_load.recommend`,
``modalrec recommend`` and the server's ``GET /users/{user}/recommendations``.

The answer is a JSON-ready dict ``{model, dataset, user, k, exclude_seen, [note], [retrieval], [fallback],
items, [explanation]}``:

* ``k`` above the number of items is capped at it, and ``note`` says so;
* a user without training interactions gets the most popular items, marked by ``fallback`` (the model
  never learned them, so its scores for them mean nothing);
* on a cold-items split an ID-only model cannot score the cold items: they are left out of its lists, and
  ``note`` says so (unless it already says that ``k`` was capped);
* with ``explain``, each item carries the model's per-modality ``weights`` (and MeAIM's ``pair_weights``).

Callers choose where the scores come from (``scores``: the server's precomputed tables) and which fields
describe an item (``describe``: the server adds training counts and the cold flag); the ranking, the
exclusions, the fallback, the notes and the explanations are the same for all of them. A ``retrieve``
function replaces the full ranking by a retrieval of its own (``--ann``: candidates from an item index,
re-ranked exactly; :mod:`modalrec.run_index`), and the list then says so in ``retrieval``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from modalrec.data.dataset import Dataset
from modalrec.errors import ModalrecError
from modalrec.models.base import COLD_UNABLE, Explanation, Recommender

# item id → the fields that describe it in a list (at least "item")
ItemFields = Callable[[int], dict[str, Any]]
# item ids (a long tensor on the model's device) → the model's explanation of them, or None
Explainer = Callable[[torch.Tensor], Explanation | None]
# (user, k, items to leave out or None) → the k best (items, scores) and how they were found (``retrieval``)
Retriever = Callable[[int, int, torch.Tensor | None], tuple[list[int], list[float], dict[str, Any]]]


class NotFoundError(ModalrecError):
    """An unknown user or item id (the server answers HTTP 404)."""


def check_user(dataset: Dataset, user: int) -> None:
    """Raise :class:`NotFoundError` unless ``user`` is a user id of ``dataset``."""
    if not 0 <= user < dataset.n_users:
        raise NotFoundError(f"unknown user {user} (out of range: users are 0..{dataset.n_users - 1})")


def check_items(dataset: Dataset, items: list[int]) -> None:
    """Raise :class:`NotFoundError` unless every id in ``items`` is an item id of ``dataset``."""
    bad = [i for i in items if not 0 <= i < dataset.n_items]
    if bad:
        raise NotFoundError(f"unknown item {bad[0]} (items are 0..{dataset.n_items - 1})")


def training_items(dataset: Dataset, user: int) -> np.ndarray:
    """The items ``user`` interacted with in training (int64, in the order of the training matrix)."""
    r = dataset.train_matrix
    return r.indices[r.indptr[user] : r.indptr[user + 1]].astype(np.int64)


def has_training_interactions(dataset: Dataset, user: int) -> bool:
    """Whether ``user`` has at least one training interaction (else the model never learned them)."""
    indptr = dataset.train_matrix.indptr
    return bool(indptr[user + 1] > indptr[user])


def item_degree(dataset: Dataset) -> np.ndarray:
    """Number of training interactions of every item (int64, one per item)."""
    return np.asarray(dataset.train_matrix.sum(axis=0)).ravel().astype(np.int64)


def item_fields(dataset: Dataset) -> ItemFields:
    """The plain description of an item: its id and, where the dataset has one, its title."""

    def fields(item: int) -> dict[str, Any]:
        out: dict[str, Any] = {"item": int(item)}
        title = dataset.title(item)
        if title is not None:
            out["title"] = title
        return out

    return fields


def unscorable_items(model: Recommender, dataset: Dataset) -> torch.Tensor | None:
    """The cold items an ID-only model cannot score (it would rank them at random), else None."""
    if model.cold_start == COLD_UNABLE and dataset.has_cold_items:
        return torch.from_numpy(np.ascontiguousarray(dataset.cold_items, dtype=np.int64))
    return None


def cold_note(model: Recommender, unscorable: torch.Tensor | None) -> dict[str, str]:
    """``{"note": …}`` saying that an ID-only model's cold items are left out; empty when none are."""
    if unscorable is None:
        return {}
    return {"note": f"{model.name} is ID only: its {unscorable.numel():,} cold items cannot be scored, left out"}


def excluded(seen: torch.Tensor | None, unscorable: torch.Tensor | None) -> torch.Tensor | None:
    """Items a list must not hold: ``seen`` plus the cold items the model cannot score (None: nothing)."""
    if unscorable is None:
        return seen
    return unscorable if seen is None else torch.cat([seen, unscorable])


def top_items(scores: torch.Tensor, k: int, exclude: torch.Tensor | None) -> tuple[list[int], list[float]]:
    """The ``k`` best (items, scores) of a score vector, ``exclude`` left out; shorter when fewer remain."""
    if exclude is not None and len(exclude):
        scores = scores.clone()
        scores[exclude.to(scores.device)] = -torch.inf
    vals, idx = torch.topk(scores, min(k, scores.shape[0]))
    keep = torch.isfinite(vals)  # an excluded item only fills a list longer than the rankable items
    return idx[keep].tolist(), vals[keep].tolist()


@contextlib.contextmanager
def frozen_cache(model: Recommender) -> Iterator[None]:
    """Keep the model's cached representations across calls that toggle train/eval mode.

    ``Recommender.train`` drops the cache on every call, also ``eval()`` on a model that
    is already in eval mode; while recommending, the weights never change, so the cache stays
    valid. Inside this block ``train``/``eval`` are no-ops on this instance.
    """
    if "train" in model.__dict__:  # already frozen (nested use)
        yield
        return
    cache = model._cache
    model.train = lambda mode=True: model  # type: ignore[method-assign]
    try:
        yield
    finally:
        del model.train
        if model._cache is None:
            model._cache = cache


def ranked_list(
    model: Recommender,
    items: list[int],
    scores: list[float],
    describe: ItemFields,
    explain: bool,
    explainer: Explainer | None,
    no_explanation: str,
) -> dict[str, Any]:
    """``{"items": [...], ["explanation"]}`` of a ranked list; ``no_explanation`` says why there is none."""
    out: dict[str, Any] = {"items": []}
    expl: Explanation | None = None
    if explain:
        if explainer is not None and items:
            with frozen_cache(model):
                expl = explainer(torch.tensor(items, dtype=torch.long, device=model.device))
        out["explanation"] = (
            {"kind": expl.kind, "parts": list(expl.parts), "note": None}
            if expl is not None
            else {"kind": None, "parts": [], "note": no_explanation}
        )
    weights = _explanation_weights(expl)
    for rank, (item, score) in enumerate(zip(items, scores, strict=True), start=1):
        entry: dict[str, Any] = {"rank": rank, **describe(item), "score": round(float(score), 6)}
        if weights is not None:
            entry.update(weights(rank - 1))
        out["items"].append(entry)
    return out


def _explanation_weights(expl: Explanation | None) -> Callable[[int], dict[str, Any]] | None:
    """Row ``i`` of an explanation as ``{"weights": …, ["pair_weights": …]}`` (rounded to 4 decimals)."""
    if expl is None:
        return None
    parts = list(expl.parts)
    weights = expl.weights.detach().float().cpu().numpy()
    extra = expl.extra or {}
    nested = extra.get("item_weights")  # e.g. MeAIM's stage-1 weights: user representation → item representation
    nested = nested.detach().float().cpu().numpy() if nested is not None else None
    item_parts = extra.get("item_parts", parts)

    def row(i: int) -> dict[str, Any]:
        out: dict[str, Any] = {"weights": {p: round(float(x), 4) for p, x in zip(parts, weights[i], strict=True)}}
        if nested is not None:
            out["pair_weights"] = {
                a: {b: round(float(x), 4) for b, x in zip(item_parts, r, strict=True)}
                for a, r in zip(parts, nested[i], strict=True)
            }
        return out

    return row


def popularity_fallback(
    dataset: Dataset,
    user: int,
    k: int,
    explain: bool = False,
    describe: ItemFields | None = None,
    degree: np.ndarray | None = None,
) -> dict[str, Any]:
    """The answer for a user without training interactions: the k items with the most training
    interactions (ties: lower item id), marked as a fallback, never as the model's ranking.

    Such a user's embedding is still at its random initialisation, so the model's scores for
    them mean nothing; popularity is the honest non-personalised answer. ``degree`` is
    :func:`item_degree`, when the caller keeps it.
    """
    degree = item_degree(dataset) if degree is None else degree
    describe = describe or item_fields(dataset)
    order = np.argsort(-degree, kind="stable")[:k]
    out: dict[str, Any] = {
        "fallback": {
            "method": "popularity",
            "reason": (
                f"user {user} has no training interaction, so the model never learned them; "
                "these are the most popular items instead (serve's POST /recommendations folds a new user in "
                "from their items)"
            ),
        },
        "items": [],
    }
    if explain:
        out["explanation"] = {"kind": None, "parts": [], "note": "popularity fallback: no per-modality explanation"}
    for rank, item in enumerate(order.tolist(), start=1):
        out["items"].append({"rank": rank, **describe(item), "score": float(degree[item])})
    return out


def recommend_user(
    model: Recommender,
    dataset: Dataset,
    user: int,
    k: int = 10,
    exclude_seen: bool = True,
    explain: bool = False,
    scores: Callable[[int], torch.Tensor] | None = None,
    describe: ItemFields | None = None,
    degree: np.ndarray | None = None,
    retrieve: Retriever | None = None,
) -> dict[str, Any]:
    """Top-k items of training user ``user`` as a JSON-ready dict (see the module docstring).

    ``scores`` maps a user to the scores of all items (default: the model's ``ranking_scores``);
    ``describe`` gives an item's fields (default :func:`item_fields`); ``degree`` is
    :func:`item_degree`, when the caller keeps it. ``retrieve``, when given, finds the list instead of
    ranking every item (the same exclusions are passed to it) and its account of how becomes the answer's
    ``retrieval``; a user without training interactions still gets the popularity fallback. The model
    must be in eval mode.
    """
    check_user(dataset, user)
    if k < 1:
        raise ModalrecError(f"k must be at least 1 (got {k})")
    n = dataset.n_items
    describe = describe or item_fields(dataset)
    out: dict[str, Any] = {
        "model": model.name,
        "dataset": dataset.name,
        "user": user,
        "k": k,
        "exclude_seen": exclude_seen,
    }
    if k > n:
        out["note"] = f"k {k} exceeds the {n} items; returning at most {n}"
    if not has_training_interactions(dataset, user):
        return {**out, **popularity_fallback(dataset, user, min(k, n), explain, describe, degree)}
    unscorable = unscorable_items(model, dataset)
    seen = torch.from_numpy(training_items(dataset, user)) if exclude_seen else None
    retrieval: dict[str, Any] | None = None
    with torch.no_grad():
        if retrieve is not None:
            items, values, retrieval = retrieve(user, k, excluded(seen, unscorable))
        else:
            if scores is not None:
                row = scores(user)
            else:
                row = model.ranking_scores(torch.tensor([user], device=model.device)).float()[0]
            items, values = top_items(row, k, excluded(seen, unscorable))

        def explainer(idx: torch.Tensor) -> Explanation | None:
            return model.explain(torch.full_like(idx, user), idx)

        body = ranked_list(
            model, items, values, describe, explain, explainer, f"{model.name} has no per-modality explanation"
        )
    if "note" not in out:
        out.update(cold_note(model, unscorable))
    if retrieval is not None:
        out["retrieval"] = retrieval
    return {**out, **body}
