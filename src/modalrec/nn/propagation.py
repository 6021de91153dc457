"""Graph propagation shared by the CF backbones and the multimodal models."""

from __future__ import annotations

import torch
from torch import nn

from modalrec.graphs import SparseOperator


def propagate(adj: SparseOperator, x0: torch.Tensor, n_layers: int, combine: str = "mean") -> torch.Tensor:
    """LightGCN-style propagation X^l = Â X^{l−1} (baselines.md §2.2).

    ``combine``: ``mean`` of layers 0..L (LightGCN), ``last`` (X^L; MeAIM, MARIO's
    modality graphs), or ``sum`` of layers 0..L.
    """
    if n_layers == 0:
        return x0
    layers = [x0]
    x = x0
    for _ in range(n_layers):
        x = adj @ x
        layers.append(x)
    if combine == "last":
        return x
    stacked = torch.stack(layers, dim=0)
    if combine == "mean":
        return stacked.mean(dim=0)
    if combine == "sum":
        return stacked.sum(dim=0)
    raise ValueError(f"unknown layer combination {combine!r} (mean | last | sum)")


def split_nodes(h: torch.Tensor, n_users: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split stacked [users; items] node rows back into the user and item parts."""
    return h[:n_users], h[n_users:]


class NGCFPropagation(nn.Module):
    """NGCF layers (Wang et al. 2019; baselines.md §5).

    E^l = LeakyReLU(S W₁ + b₁) + LeakyReLU((E^{l−1} ⊙ S) W₂ + b₂) with S = A E^{l−1},
    then message dropout; the output concatenates E^0 with the L2-normalised E^1..E^L
    (dimension d·(L+1)). Only the copy that goes into the output is normalised.
    """

    def __init__(
        self, dim: int, layer_sizes: list[int], message_dropout: list[float] | float = 0.1, negative_slope: float = 0.01
    ) -> None:
        super().__init__()
        sizes = [dim, *layer_sizes]
        drops = message_dropout if isinstance(message_dropout, list) else [message_dropout] * len(layer_sizes)
        if len(drops) != len(layer_sizes):
            raise ValueError("message_dropout needs one value per layer")
        self.w1 = nn.ModuleList(nn.Linear(sizes[i], sizes[i + 1]) for i in range(len(layer_sizes)))
        self.w2 = nn.ModuleList(nn.Linear(sizes[i], sizes[i + 1]) for i in range(len(layer_sizes)))
        self.dropouts = nn.ModuleList(nn.Dropout(p) for p in drops)
        self.negative_slope = negative_slope
        self.out_dim = sum(sizes)

    def forward(self, adj: SparseOperator, e0: torch.Tensor) -> torch.Tensor:
        act = nn.functional.leaky_relu
        outputs = [e0]
        e = e0
        for w1, w2, drop in zip(self.w1, self.w2, self.dropouts, strict=True):
            side = adj @ e
            e = act(w1(side), self.negative_slope) + act(w2(e * side), self.negative_slope)
            e = drop(e)
            outputs.append(nn.functional.normalize(e, dim=1))
        return torch.cat(outputs, dim=1)
