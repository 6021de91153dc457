"""Raw review dumps → a dataset folder (``modalrec data prepare``).

Library entry point: :func:`prepare_dataset` with its settings in :class:`PrepareOptions`.
The readers live in :mod:`modalrec.data.prepare.interactions`, :mod:`modalrec.data.prepare.item_meta`
and :mod:`modalrec.data.prepare.images` (on top of :mod:`modalrec.data.prepare.sources`), the
filters in :mod:`modalrec.data.prepare.filtering` (k-core: :mod:`modalrec.data.prepare.kcore`),
the features in :mod:`modalrec.data.prepare.features`, the offline encoders in
:mod:`modalrec.data.encode` (optional extra ``modalrec[prepare]``).
"""

from modalrec.data.prepare.features import encode_image_files, encode_texts
from modalrec.data.prepare.interactions import REVIEW_FORMATS
from modalrec.data.prepare.item_meta import META_FORMATS
from modalrec.data.prepare.kcore import kcore_mask
from modalrec.data.prepare.options import PrepareOptions
from modalrec.data.prepare.pipeline import PrepareResult, prepare_dataset

__all__ = [
    "META_FORMATS",
    "REVIEW_FORMATS",
    "PrepareOptions",
    "PrepareResult",
    "encode_image_files",
    "encode_texts",
    "kcore_mask",
    "prepare_dataset",
]
