"""Raw review dumps → a dataset folder (``modalrec data prepare``).

Library entry point: :func:`prepare_dataset`. Readers live in
:mod:`modalrec.data.prepare.readers`, the k-core filter in :mod:`modalrec.data.prepare.kcore`,
the offline encoders in :mod:`modalrec.data.encode` (optional extra ``modalrec[prepare]``).
"""

from modalrec.data.prepare.kcore import kcore_mask
from modalrec.data.prepare.pipeline import PrepareResult, encode_image_files, encode_texts, prepare_dataset
from modalrec.data.prepare.readers import META_FORMATS, REVIEW_FORMATS

__all__ = [
    "META_FORMATS",
    "REVIEW_FORMATS",
    "PrepareResult",
    "encode_image_files",
    "encode_texts",
    "kcore_mask",
    "prepare_dataset",
]
