"""The serving engine: a loaded run with everything ranking needs precomputed.

At start-up the run is loaded once, the model is put in eval mode and its
representations are computed and cached; the engine then keeps

* for dot-product models the user and item tables as contiguous float32 matrices, so a
  request is one GEMV (item table × user vector) plus a top-k;
* for other models the model's cached representations, so a request is one
  ``full_scores`` call on a single user (MARIO: M GEMVs and the attention mix);
* the training items of every user as CSR arrays (masking seen items is an index write);
* the L2-normalised item representation and L2-normalised raw feature matrices, so a
  similar-items request is one GEMV and a top-k.

No request ever recomputes representations: explanations run under :func:`frozen_cache`,
which stops a model's ``eval()`` call (MeAIM's ``explain`` makes one) from dropping them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from modalrec.errors import ModalrecError, RunError
from modalrec.models.base import COLD_UNABLE, Explanation, Recommender
from modalrec.runs import LoadedRun, load_run, popularity_fallback
from modalrec.serve.foldin import FoldIn, dot_tables

MAX_K = 1000
MAX_HISTORY = 10_000


class NotFoundError(ModalrecError):
    """An unknown user or item id (HTTP 404)."""


@contextlib.contextmanager
def frozen_cache(model: Recommender) -> Iterator[None]:
    """Keep the model's cached representations across calls that toggle train/eval mode.

    ``Recommender.train`` drops the cache on every call, also ``eval()`` on a model that
    is already in eval mode; while serving, the weights never change, so the cache stays
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


def open_run(run_dir: str | Path, data_dir: str | Path | None = None) -> LoadedRun:
    """Load a run directory for serving; every failure is a one-line :class:`RunError`."""
    try:
        return load_run(run_dir, data_dir=data_dir, cache_dir=False)
    except ModalrecError:
        raise
    except Exception as exc:  # corrupt config/metrics/state dict: one line, no traceback
        first = (str(exc).strip().splitlines() or [""])[0]
        raise RunError(f"{run_dir}: cannot load the run ({exc.__class__.__name__}: {first})") from None


class Engine:
    """A run loaded for serving; every public method returns JSON-ready dicts."""

    def __init__(self, run: LoadedRun) -> None:
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
        r = ds.train_matrix
        self.seen_indptr = r.indptr.astype(np.int64)
        self.seen_indices = torch.from_numpy(r.indices.astype(np.int64))
        self.item_degree = np.asarray(r.sum(axis=0)).ravel().astype(np.int64)
        # Cold items (cold-items split): a content model scores them from their features (its cached
        # representations already hold those scores), so they are served like any item; an ID-only model
        # cannot score them, so they are left out of its lists (and the response says so).
        self.is_cold = np.zeros(ds.n_items, dtype=bool)
        self.is_cold[ds.cold_items] = True
        self.unscorable = (
            torch.from_numpy(ds.cold_items) if ds.has_cold_items and model.cold_start == COLD_UNABLE else None
        )
        self.explanation_parts = list(probe.parts) if probe is not None else []
        self.explanation_kind = probe.kind if probe is not None else None

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, data_dir: str | Path | None = None) -> Engine:
        """Load ``run_dir`` and precompute; raises :class:`RunError` with a one-line reason."""
        run = open_run(run_dir, data_dir)
        try:
            with torch.no_grad():
                return cls(run)
        except ModalrecError:
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise RunError(f"{run_dir}: cannot prepare the run ({exc.__class__.__name__}: {first})") from None

    # ------------------------------------------------------------------ checks
    def check_user(self, user: int) -> None:
        if not 0 <= user < self.dataset.n_users:
            raise NotFoundError(f"unknown user {user} (users are 0..{self.dataset.n_users - 1})")

    def check_items(self, items: list[int]) -> None:
        bad = [i for i in items if not 0 <= i < self.dataset.n_items]
        if bad:
            raise NotFoundError(f"unknown item {bad[0]} (items are 0..{self.dataset.n_items - 1})")

    # ------------------------------------------------------------------ info
    def info(self) -> dict[str, Any]:
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
        return {
            "item": int(item),
            "title": self.dataset.title(item),
            "interactions": int(self.item_degree[item]),
            "cold": bool(self.is_cold[item]),
        }

    def history(self, user: int) -> dict[str, Any]:
        """The user's training items (with titles where the dataset has them)."""
        self.check_user(user)
        items = self.seen_indices[self.seen_indptr[user] : self.seen_indptr[user + 1]].tolist()
        return {"user": user, "items": [self.item_entry(i) for i in items]}

    # ------------------------------------------------------------------ ranking
    def _user_scores(self, user: int) -> torch.Tensor:
        if self.item_table is not None:
            return self.item_table @ self.user_table[user]
        return self.model.full_scores(torch.tensor([user])).float()[0]

    def _seen(self, user: int) -> torch.Tensor:
        return self.seen_indices[self.seen_indptr[user] : self.seen_indptr[user + 1]]

    def _excluded(self, seen: torch.Tensor | None) -> torch.Tensor | None:
        """Items a list must not hold: ``seen`` plus, for an ID-only model, the cold items it cannot score."""
        if self.unscorable is None:
            return seen
        return self.unscorable if seen is None else torch.cat([seen, self.unscorable])

    def _cold_note(self) -> dict[str, str]:
        if self.unscorable is None:
            return {}
        n = self.unscorable.numel()
        return {"note": f"{self.model.name} is ID only: its {n:,} cold items cannot be scored, left out"}

    @staticmethod
    def _top(scores: torch.Tensor, k: int, exclude: torch.Tensor | None) -> tuple[list[int], list[float]]:
        if exclude is not None and len(exclude):
            scores = scores.clone()
            scores[exclude] = -torch.inf
        vals, idx = torch.topk(scores, min(k, scores.shape[0]))
        keep = torch.isfinite(vals)
        return idx[keep].tolist(), vals[keep].tolist()

    def _result(
        self,
        items: list[int],
        scores: list[float],
        explain: bool,
        explainer,
        model_has_none_note: str,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"items": []}
        expl: Explanation | None = None
        if explain:
            if explainer is not None and items:
                with frozen_cache(self.model):
                    expl = explainer(torch.tensor(items, dtype=torch.long))
            out["explanation"] = (
                {"kind": expl.kind, "parts": list(expl.parts), "note": None}
                if expl is not None
                else {"kind": None, "parts": [], "note": model_has_none_note}
            )
        weights = expl.weights.detach().float().cpu().numpy() if expl is not None else None
        nested = (expl.extra or {}).get("item_weights") if expl is not None else None
        item_parts = (expl.extra or {}).get("item_parts", expl.parts) if expl is not None else None
        nested = nested.detach().float().cpu().numpy() if nested is not None else None
        for rank, (item, score) in enumerate(zip(items, scores, strict=True), start=1):
            entry: dict[str, Any] = {"rank": rank, **self.item_entry(item), "score": round(float(score), 6)}
            if weights is not None:
                entry["weights"] = {p: round(float(x), 4) for p, x in zip(expl.parts, weights[rank - 1], strict=True)}
            if nested is not None:
                entry["pair_weights"] = {
                    a: {b: round(float(x), 4) for b, x in zip(item_parts, row, strict=True)}
                    for a, row in zip(expl.parts, nested[rank - 1], strict=True)
                }
            out["items"].append(entry)
        return out

    def recommend(self, user: int, k: int = 10, exclude_seen: bool = True, explain: bool = False) -> dict[str, Any]:
        """Top-k of a training user; with ``explain`` the model's per-modality influence per item.

        A user without training interactions gets the most popular items, marked by ``fallback``
        (the model never learned them). ``k`` above the number of items is capped, with a ``note``.
        """
        self.check_user(user)
        head: dict[str, Any] = {"user": user, "k": k, "exclude_seen": exclude_seen, "model": self.model.name}
        if k > self.dataset.n_items:
            head["note"] = f"k {k} exceeds the {self.dataset.n_items} items; returning at most {self.dataset.n_items}"
        if self.seen_indptr[user + 1] == self.seen_indptr[user]:
            body = popularity_fallback(self.dataset, user, min(k, self.dataset.n_items), explain)
            body["items"] = [
                {"rank": e["rank"], **self.item_entry(e["item"]), "score": e["score"]} for e in body["items"]
            ]
            return {**head, **body}
        with self.lock, torch.no_grad():
            exclude = self._excluded(self._seen(user) if exclude_seen else None)
            items, scores = self._top(self._user_scores(user), k, exclude)
            model = self.model

            def explainer(idx: torch.Tensor) -> Explanation | None:
                return model.explain(torch.full_like(idx, user), idx)

            body = self._result(items, scores, explain, explainer, f"{model.name} has no per-modality explanation")
        if self.unscorable is not None and "note" not in head:
            head.update(self._cold_note())
        return {**head, **body}

    def recommend_new(
        self, history: list[int], k: int = 10, exclude_seen: bool = True, explain: bool = False
    ) -> dict[str, Any]:
        """Top-k for a user unseen in training, folded in from ``history`` (see :mod:`modalrec.serve.foldin`)."""
        self.check_items(history)
        hist = np.unique(np.asarray(history, dtype=np.int64))
        with self.lock, torch.no_grad(), frozen_cache(self.model):
            res = self.fold_in(hist)
            exclude = self._excluded(torch.from_numpy(hist) if exclude_seen else None)
            items, scores = self._top(res.scores.float(), k, exclude)
            note = f"{self.model.name} has no per-modality explanation for fold-in ({res.method})"
            body = self._result(items, scores, explain, res.explain, note)
        return {
            "history": hist.tolist(),
            "k": k,
            "exclude_seen": exclude_seen,
            "model": self.model.name,
            "fold_in": {"method": res.method, **res.details},
            **body,
            **self._cold_note(),
        }

    def similar(self, item: int, k: int = 10, by: str = "model") -> dict[str, Any]:
        """Nearest items by cosine of the model's item representation or of a raw modality feature."""
        self.check_items([item])
        if by == "model":
            table = self.item_norm
        elif by in self.feature_norm:
            table = self.feature_norm[by]
        else:
            raise ModalrecError(f"by must be model or one of the modalities {', '.join(self.feature_norm) or '(none)'}")
        with torch.no_grad():
            sims = table @ table[item]
            items, scores = self._top(sims, k, torch.tensor([item]))
        return {
            "query": self.item_entry(item),
            "by": by,
            "k": k,
            "items": [
                {"rank": r, **self.item_entry(i), "similarity": round(float(s), 6)}
                for r, (i, s) in enumerate(zip(items, scores, strict=True), start=1)
            ],
        }
