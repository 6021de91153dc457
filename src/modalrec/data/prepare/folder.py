"""The files of a prepared dataset folder (MMRec layout), written into a (temporary) directory.

``<name>.inter`` (tab-separated ``userID itemID rating [timestamp] x_label``), the id
mappings ``u_id_mapping.csv``/``i_id_mapping.csv``, ``<modality>_feat.npy`` and
``item_text.tsv``; ``prepare.json`` is written by the pipeline last.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from modalrec.data.dataset import FEATURE_SUFFIX
from modalrec.data.prepare.filtering import KeptInteractions
from modalrec.data.prepare.interactions import RawInteractions
from modalrec.io import write_npy, write_text

REPORT_FILE = "prepare.json"
USER_MAPPING = "u_id_mapping.csv"
ITEM_MAPPING = "i_id_mapping.csv"
ITEM_TEXT = "item_text.tsv"


def write_folder(
    d: Path,
    name: str,
    kept: KeptInteractions,
    labels: np.ndarray,
    features: dict[str, np.ndarray],
    item_texts: list[str] | None,
    raw: RawInteractions,
) -> list[str]:
    """Write the dataset's files into ``d``; returns their names in the order written.

    The mapping files' first column is named after the source column of the ids (``user_id``
    and ``asin`` for the Amazon formats), so an id can be traced back to the raw file.
    """
    files = [_write_inter(d / f"{name}.inter", kept, labels)]
    amazon = raw.format != "table"
    u_src = "user_id" if amazon else raw.columns["user"]
    i_src = "asin" if amazon else raw.columns["item"]
    user_names, item_names = kept.user_names, kept.item_names
    write_text(d / USER_MAPPING, f"{u_src}\tuserID\n" + "".join(f"{s}\t{j}\n" for j, s in enumerate(user_names)))
    write_text(d / ITEM_MAPPING, f"{i_src}\titemID\n" + "".join(f"{s}\t{j}\n" for j, s in enumerate(item_names)))
    files += [USER_MAPPING, ITEM_MAPPING]
    for m, x in features.items():
        write_npy(d / f"{m}{FEATURE_SUFFIX}", np.ascontiguousarray(x, dtype=np.float32))
        files.append(f"{m}{FEATURE_SUFFIX}")
    if item_texts is not None:
        lines = [f"itemID\t{i_src}\ttext"] + [
            f"{j}\t{s}\t{t}" for j, (s, t) in enumerate(zip(item_names, item_texts, strict=True))
        ]
        write_text(d / ITEM_TEXT, "\n".join(lines) + "\n")
        files.append(ITEM_TEXT)
    return files


def _write_inter(path: Path, kept: KeptInteractions, labels: np.ndarray) -> str:
    """The interaction file (rating 1 for every row when the input has none); returns its name."""
    n = len(kept)
    cols = [
        [str(v) for v in kept.users.tolist()],
        [str(v) for v in kept.items.tolist()],
        _format_numbers(kept.ratings) if kept.ratings is not None else ["1"] * n,
    ]
    header = ["userID", "itemID", "rating"]
    if kept.timestamps is not None:
        cols.append(_format_numbers(kept.timestamps))
        header.append("timestamp")
    cols.append([str(v) for v in labels.tolist()])
    header.append("x_label")
    body = "\n".join("\t".join(row) for row in zip(*cols, strict=True))
    write_text(path, "\t".join(header) + "\n" + body + "\n")
    return path.name


def _format_numbers(x: np.ndarray) -> list[str]:
    """Integers without a decimal point or exponent (unix times stay exact); other values in full."""
    if np.all(np.isfinite(x)) and np.all(x == np.round(x)) and np.all(np.abs(x) < 2**53):
        return [str(v) for v in x.astype(np.int64).tolist()]
    return [repr(v) for v in x.tolist()]


def normal_permissions(d: Path) -> None:
    """mkdtemp/mkstemp create 0700/0600 entries; give the finished folder the usual umask-based modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(d, 0o777 & ~umask)
    for p in d.iterdir():
        os.chmod(p, 0o666 & ~umask)
