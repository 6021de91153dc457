"""Dataset folders in the MMRec layout: loading, validation, splits, the synthetic default."""

from modalrec.data.dataset import Dataset, load_dataset, write_dataset
from modalrec.data.split import SPLIT_PROTOCOLS, resplit_dataset, split_labels
from modalrec.data.synth import generate_synthetic, write_synthetic_dataset

__all__ = [
    "SPLIT_PROTOCOLS",
    "Dataset",
    "generate_synthetic",
    "load_dataset",
    "resplit_dataset",
    "split_labels",
    "write_dataset",
    "write_synthetic_dataset",
]
