"""modalrec — multimodal recommendation: data, graphs, models, training, evaluation."""

from modalrec.errors import ConfigError, DataError, ModalrecError, RunError
from modalrec.threads import prefer_passive_waiting

prefer_passive_waiting()  # must precede torch's OpenMP start-up; see modalrec.threads

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "ModalrecError", "RunError", "__version__"]
