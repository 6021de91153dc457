"""The serving engine: a loaded run with everything ranking needs precomputed.

At start-up the run is loaded once, the model is put in eval mode and its
representations are computed and cached; the engine then keeps

* for dot-product models the user and item tables as contiguous float32 matrices, so a
  request is one GEMV (item table × user vector) plus a top-k;
* for other models the model's cached representations, so a request is one
  ``full_scores`` call on a single user (MARIO: M GEMVs and the attention mix);
* the number of training interactions of every item, and which items are cold;
* the L2-normalised item representation and L2-normalised raw feature matrices, so a
  similar-items request is one GEMV and a top-k.

A training user's list is :func:`modalrec.recommendation.recommend_user` (the same answer as
``modalrec recommend``) fed with these precomputed scores — or, served with ``--ann``, with the
candidates of the run's item index re-ranked exactly (:mod:`modalrec.run_index`; the same answer as
``modalrec recommend --ann``). No request ever recomputes
representations: explanations run under :func:`~modalrec.recommendation.frozen_cache`, which stops
a model's ``eval()`` call (MeAIM's ``explain`` makes one) from dropping them.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from modalrec.errors import ModalrecError, RunError
from modalrec.recommendation import (
    check_items,
    check_user,
    cold_note,
    excluded,
    frozen_cache,
    item_degree,
    ranked_list,
    recommend_user,
    top_items,
    training_items,
    unscorable_items,
)
from modalrec.run_index import ItemIndex, choose_item_index
from modalrec.run_load import LoadedRun, load_run
from modalrec.serve.foldin import FoldIn, dot_tables

MAX_K = 1000
MAX_HISTORY = 10_000


def open_run(run_dir: str | Path, data_dir: str | Path | None = None, model: str | None = None) -> LoadedRun:
    """Load a run directory for serving (``model``: a spec replacing the recorded one); every failure is a
    one-line :class:`RunError`."""
    try:
        return load_run(run_dir, data_dir=data_dir, cache_dir=False, model=model)
    except ModalrecError:
        raise
    except Exception as exc:  # corrupt config/metrics/state dict: one line, no traceback
        first = (str(exc).strip().splitlines() or [""])[0]
        raise RunError(f"{run_dir}: cannot load the run ({exc.__class__.__name__}: {first})") from None


class Engine:
    """A run loaded for serving; every public method returns JSON-ready dicts."""

    def __init__(self, run: LoadedRun, ann: bool | None = None) -> None:
        """Precompute what ranking needs; ``ann`` True: training users' lists come from the run's item index
        (one-line error when the model is not a dot product or the index is missing or stale); False: exact;
        None: the index where :func:`~modalrec.run_index.choose_item_index` takes it, else exact
        (:attr:`retrieval_note` says which and why)."""
        self.run = run
        self.model = model = run.model
        self.dataset = ds = run.dataset
        self.lock = threading.Lock()  # explain() may toggle module state; serialise model calls
        model.eval()
        with torch.no_grad():
            model.representations()  # computed once here; cached while the model stays in eval mode
        with torch.no_grad(), frozen_cache(model):
            tables = dot_tables(model)
            self.user_table = tables[0].float().contiguous() if tables is not None else None
            self.item_table = tables[1].float().contiguous() if tables is not None else None
            self.item_norm = F.normalize(model.item_representation().float(), dim=1).contiguous()
            self.fold_in = FoldIn(model, ds.train_matrix)
            probe = model.explain(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
        self.feature_norm = {
            m: F.normalize(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), dim=1)
            for m, x in ds.features.items()
        }
        self.item_degree = item_degree(ds)
        # Cold items (cold-items split): a content model scores them from their features (its cached
        # representations already hold those scores), so they are served like any item; an ID-only model
        # cannot score them, so they are left out of its lists (and the response says so).
        self.is_cold = np.zeros(ds.n_items, dtype=bool)
        self.is_cold[ds.cold_items] = True
        self.unscorable = unscorable_items(model, ds)
        self.explanation_parts = list(probe.parts) if probe is not None else []
        self.explanation_kind = probe.kind if probe is not None else None
        # after the precompute: the index re-ranks with the cached tables (no second copy)
        self.index: ItemIndex | None
        self.retrieval_note: str | None  # why requests go through the index or not (None: nothing to say)
        with frozen_cache(model):
            self.index, self.retrieval_note = choose_item_index(run, ann)

    @classmethod
    def from_run_dir(
        cls, run_dir: str | Path, data_dir: str | Path | None = None, model: str | None = None, ann: bool | None = None
    ) -> Engine:
        """Load ``run_dir`` and precompute (``ann``: open its item index); raises a one-line error."""
        run = open_run(run_dir, data_dir, model)
        try:
            with torch.no_grad():
                return cls(run, ann=ann)
        except ModalrecError:
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise RunError(f"{run_dir}: cannot prepare the run ({exc.__class__.__name__}: {first})") from None

    # ------------------------------------------------------------------ info
    def info(self) -> dict[str, Any]:
        """What GET /info answers: model, dataset, counts, modalities, explanation parts, metrics."""
        ds, m = self.dataset, self.run.metrics
        return {
            "model": self.model.name,
            "dataset": ds.name,
            "run": str(self.run.path),
            "users": ds.n_users,
            "items": ds.n_items,
            "train_interactions": int(ds.train_matrix.nnz),
            "modalities": {k: int(x.shape[1]) for k, x in ds.features.items()},
            "has_titles": ds.item_titles is not None,
            "explanation": {"kind": self.explanation_kind, "parts": self.explanation_parts},
            "fold_in": self.fold_in.method,
            "retrieval": self.index.summary() if self.index is not None else {"method": "exact"},
            "similar_by": ["model", *ds.features],
            "best_epoch": m.get("best_epoch"),
            "metrics": {"valid": m.get("valid") or {}, "test": m.get("test") or {}},
            "cold_items": {
                "count": int(ds.cold_items.size),
                "scoring": self.model.cold_start,
                "rule": self.model.cold_rule,
            }
            if ds.has_cold_items
            else None,
        }

    def item_entry(self, item: int) -> dict[str, Any]:
        """How an item is described in every list: id, title, training interactions, cold flag."""
        return {
            "item": int(item),
            "title": self.dataset.title(item),
            "interactions": int(self.item_degree[item]),
            "cold": bool(self.is_cold[item]),
        }

    def history(self, user: int) -> dict[str, Any]:
        """The user's training items (with titles where the dataset has them)."""
        check_user(self.dataset, user)
        return {"user": user, "items": [self.item_entry(i) for i in training_items(self.dataset, user).tolist()]}

    # ------------------------------------------------------------------ ranking
    def _user_scores(self, user: int) -> torch.Tensor:
        if self.item_table is not None:
            return self.item_table @ self.user_table[user]
        return self.model.full_scores(torch.tensor([user])).float()[0]

    def recommend(self, user: int, k: int = 10, exclude_seen: bool = True, explain: bool = False) -> dict[str, Any]:
        """Top-k of a training user; with ``explain`` the model's per-modality influence per item.

        :func:`modalrec.recommendation.recommend_user` on the precomputed scores (with ``ann``, on the item
        index's candidates, marked by ``retrieval``): a user without training interactions gets the most
        popular items, marked by ``fallback``; ``k`` above the number of items is capped, with a ``note``.
        """
        with self.lock, frozen_cache(self.model):
            return recommend_user(
                self.model,
                self.dataset,
                user,
                k,
                exclude_seen,
                explain,
                scores=self._user_scores,
                describe=self.item_entry,
                degree=self.item_degree,
                retrieve=self.index.retrieve if self.index is not None else None,
            )

    def recommend_new(
        self, history: list[int], k: int = 10, exclude_seen: bool = True, explain: bool = False
    ) -> dict[str, Any]:
        """Top-k for a user unseen in training, folded in from ``history`` (see :mod:`modalrec.serve.foldin`)."""
        check_items(self.dataset, history)
        hist = np.unique(np.asarray(history, dtype=np.int64))
        with self.lock, torch.no_grad(), frozen_cache(self.model):
            res = self.fold_in(hist)
            exclude = excluded(torch.from_numpy(hist) if exclude_seen else None, self.unscorable)
            items, scores = top_items(res.scores.float(), k, exclude)
            note = f"{self.model.name} has no per-modality explanation for fold-in ({res.method})"
            body = ranked_list(self.model, items, scores, self.item_entry, explain, res.explain, note)
        return {
            "history": hist.tolist(),
            "k": k,
            "exclude_seen": exclude_seen,
            "model": self.model.name,
            "fold_in": {"method": res.method, **res.details},
            **body,
            **cold_note(self.model, self.unscorable),
        }

    def similar(self, item: int, k: int = 10, by: str = "model") -> dict[str, Any]:
        """Nearest items by cosine of the model's item representation or of a raw modality feature."""
        check_items(self.dataset, [item])
        if by == "model":
            table = self.item_norm
        elif by in self.feature_norm:
            table = self.feature_norm[by]
        else:
            raise ModalrecError(f"by must be model or one of the modalities {', '.join(self.feature_norm) or '(none)'}")
        with torch.no_grad():
            sims = table @ table[item]
            items, scores = top_items(sims, k, torch.tensor([item]))
        return {
            "query": self.item_entry(item),
            "by": by,
            "k": k,
            "items": [
                {"rank": r, **self.item_entry(i), "similarity": round(float(s), 6)}
                for r, (i, s) in enumerate(zip(items, scores, strict=True), start=1)
            ],
        }
