"""Readers of the image inputs: the Amazon binary feature file (``--image-features``) and a
folder of ``<item id>.<ext>`` image files (``--images``)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from modalrec.data.prepare.sources import is_gzipped
from modalrec.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def read_image_features(
    path: Path, wanted: dict[str, int], dim: int = 4096, chunk_records: int = 512
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Rows of the Amazon binary image-feature file for the wanted items.

    The file repeats a 10-byte ASIN and ``dim`` little-endian float32 values. ``wanted``
    maps an ASIN to its output row. Returns ``(features, found, records, duplicates)``:
    rows of items not in the file are zero and ``found`` is False there. The file is
    streamed (it may be several GB, gzipped or not); the first record of a repeated ASIN wins.
    """
    rec_size = 10 + 4 * dim
    dtype = np.dtype([("asin", "S10"), ("feat", "<f4", (dim,))])
    out = np.zeros((len(wanted), dim), dtype=np.float32)
    found = np.zeros(len(wanted), dtype=bool)
    records = dups = 0
    opener = gzip.open if is_gzipped(path, "the binary image-feature file") else open
    try:
        with opener(path, "rb") as fh:
            while True:
                buf = fh.read(rec_size * chunk_records)
                if not buf:
                    break
                whole = len(buf) // rec_size
                if len(buf) % rec_size:
                    raise DataError(
                        path,
                        f"truncated: record {records + whole} has {len(buf) % rec_size} of {rec_size} bytes "
                        f"(10-byte ASIN + {dim} float32)",
                    )
                block = np.frombuffer(buf, dtype=dtype)
                for r, raw in enumerate(block["asin"].tolist()):
                    asin = raw.decode("ascii", errors="replace").strip("\x00 ")
                    row = wanted.get(asin)
                    if row is None:
                        continue
                    if found[row]:
                        dups += 1
                        continue
                    vec = block["feat"][r]
                    if not np.isfinite(vec).all():
                        raise DataError(path, f"record {records + r} (ASIN {asin}) holds non-finite values")
                    out[row] = vec
                    found[row] = True
                records += whole
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(path, f"cannot read ({exc}); truncated or corrupt gzip file?") from None
    if records == 0:
        raise DataError(path, "empty file")
    return out, found, records, dups


def list_images(directory: Path) -> tuple[dict[str, Path], int]:
    """Image files named ``<item id>.<ext>``; returns ``(id -> path, ids with several files)``.

    With several files for one id, the first by name is used.
    """
    if not directory.exists():
        raise DataError(directory, "no such directory")
    if not directory.is_dir():
        raise DataError(directory, "not a directory; --images takes a folder of <item id>.<ext> files")
    files: dict[str, Path] = {}
    ambiguous = 0
    for p in sorted(directory.iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        if p.stem in files:
            ambiguous += 1
            continue
        files[p.stem] = p
    return files, ambiguous
