"""Per-modality user and item tables of a trained model, for the analyses."""

from __future__ import annotations

import numpy as np
import torch

from modalrec.errors import ModalrecError
from modalrec.models.base import Recommender

INTERACTION_NAMES = ("interaction", "id")


def modality_tables(model: Recommender) -> dict[str, tuple[np.ndarray | None, np.ndarray]]:
    """``{modality: (user table or None, item table)}`` as float32 NumPy arrays.

    Models with named parts (MARIO: content modalities + ``interaction``; MeAIM: ``id`` +
    content modalities) give one entry per part — MARIO's users have a single table shared
    by all parts. Any other model gives its scoring tables under ``interaction``.
    """
    model.eval()
    with torch.no_grad():
        reps = model.representations()
        parts = getattr(model, "parts", None)
        items = getattr(reps, "items", None)
        if parts is not None and isinstance(items, torch.Tensor) and items.dim() == 3 and len(parts) == items.shape[0]:
            users = reps.users
            return {
                p: ((users[i] if users.dim() == 3 else users).float().cpu().numpy(), items[i].float().cpu().numpy())
                for i, p in enumerate(parts)
            }
        if isinstance(reps, tuple) and len(reps) == 2 and all(isinstance(t, torch.Tensor) for t in reps):
            return {"interaction": (reps[0].float().cpu().numpy(), reps[1].float().cpu().numpy())}
        return {"interaction": (None, model.item_representation().float().cpu().numpy())}


def pick_modality(tables: dict, modality: str, what: str) -> tuple[str, tuple]:
    """The entry of ``modality`` (``interaction`` and ``id`` are synonyms), or a helpful error."""
    if modality in tables:
        return modality, tables[modality]
    if modality in INTERACTION_NAMES:
        for alt in INTERACTION_NAMES:
            if alt in tables:
                return alt, tables[alt]
    raise ModalrecError(f"{what}: no {modality!r} representation (available: {', '.join(tables)})")


def interaction_items(model: Recommender) -> np.ndarray:
    """The item table of the interaction (collaborative) modality of a trained model."""
    tables = modality_tables(model)
    for alt in INTERACTION_NAMES:
        if alt in tables:
            return tables[alt][1]
    return model.item_representation().detach().float().cpu().numpy()
