"""The settings of ``modalrec data prepare``: one frozen object holding every default and check."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from modalrec.data.prepare.interactions import REVIEW_FORMATS, ColumnNames
from modalrec.data.prepare.item_meta import META_FORMATS
from modalrec.data.split import SPLIT_PROTOCOLS
from modalrec.errors import ModalrecError


@dataclass(frozen=True)
class PrepareOptions:
    """How :func:`~modalrec.data.prepare.prepare_dataset` builds a dataset folder (defaults = the CLI's).

    Inputs besides the interactions: ``meta`` (item metadata → ``item_text.tsv`` and, with
    ``text``, ``text_feat.npy``), and one image source, ``image_features`` (Amazon binary
    file of ``image_feature_dim`` floats per item) or ``images`` (folder of ``<item id>.<ext>``).
    Filtering: ``min_rating`` (implicit-feedback threshold), ``kcore``; ``split`` with ``seed``.
    Reading: ``review_format``/``meta_format`` (``auto`` detects from the content) and the
    table column names (``None``: the usual names). Encoding: ``text_model``, ``device``,
    ``batch_size``. ``name``: of the ``<name>.inter`` file (default: the folder's name).

    Paths may be given as strings; ``text_cols`` as any sequence (kept as a tuple).
    :meth:`validate` checks the values; ``prepare_dataset`` calls it after checking that the
    output folder is new, so the errors keep that order.
    """

    meta: Path | None = None
    image_features: Path | None = None
    images: Path | None = None
    kcore: int = 5
    split: str = "mmrec"
    seed: int = 999
    min_rating: float | None = None
    review_format: str = "auto"
    meta_format: str = "auto"
    user_col: str | None = None
    item_col: str | None = None
    rating_col: str | None = None
    time_col: str | None = None
    text_cols: Sequence[str] | None = None
    text: bool = True
    text_model: str | Path | None = None  # kept as given: the report records str(text_model)
    device: str = "cpu"
    batch_size: int = 64
    name: str | None = None
    image_feature_dim: int = 4096

    def __post_init__(self) -> None:
        # frozen: normalise through object.__setattr__ (the dataclass's own way round __setattr__)
        for key in ("meta", "image_features", "images"):
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, Path(value))
        if self.text_cols is not None:
            object.__setattr__(self, "text_cols", tuple(self.text_cols))

    @property
    def column_names(self) -> ColumnNames:
        """The interaction-table columns named by ``user_col``/``item_col``/``rating_col``/``time_col``."""
        return ColumnNames(self.user_col, self.item_col, self.rating_col, self.time_col)

    def validate(self, out: Path) -> str:
        """Raise :class:`~modalrec.errors.ModalrecError` on the first setting that cannot work
        (messages name the CLI option); return the dataset name (default: ``out``'s name)."""
        if self.image_features is not None and self.images is not None:
            raise ModalrecError("--image-features and --images are mutually exclusive (give one image source)")
        if self.split not in SPLIT_PROTOCOLS:
            raise ModalrecError(f"--split {self.split!r}: choose from {', '.join(SPLIT_PROTOCOLS)}")
        if self.review_format not in ("auto", *REVIEW_FORMATS):
            raise ModalrecError(f"--format {self.review_format!r}: choose from auto, {', '.join(REVIEW_FORMATS)}")
        if self.meta_format not in ("auto", *META_FORMATS):
            raise ModalrecError(f"--meta-format {self.meta_format!r}: choose from auto, {', '.join(META_FORMATS)}")
        if self.kcore < 0:
            raise ModalrecError(f"--kcore must be ≥ 0, got {self.kcore}")
        if self.batch_size < 1:
            raise ModalrecError(f"--batch-size must be ≥ 1, got {self.batch_size}")
        name = self.name or out.name
        if not name or name.startswith(".") or "/" in name or os.sep in name:
            raise ModalrecError(f"dataset name {name!r} must be a plain file name")
        return name
