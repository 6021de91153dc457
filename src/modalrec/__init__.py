"""modalrec — multimodal recommendation: data, graphs, models, training, evaluation."""

from modalrec.errors import ConfigError, DataError, ModalrecError, RunError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "ModalrecError", "RunError", "__version__"]
