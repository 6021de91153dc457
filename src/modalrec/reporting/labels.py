"""How reports name metrics: ``recall@10`` is shown as ``Recall@10`` in tables, figures and logs."""

from __future__ import annotations

_NAMES = {"recall": "Recall", "ndcg": "NDCG", "precision": "Precision", "map": "MAP", "hit": "Hit"}


def metric_label(metric: str) -> str:
    """``recall@10`` → ``Recall@10``."""
    name, _, k = metric.partition("@")
    return f"{_NAMES.get(name, name)}@{k}" if k else _NAMES.get(name, name)
