"""Graph propagation shared by the CF backbones and the multimodal models."""

from __future__ import annotations

import torch
from torch import nn

from modalrec.graphs import SparseOperator


class _LayerSum(torch.autograd.Function):
    """Σ_l X^l / ``divisor`` of the propagation layers without stacking them (``divisor`` L+1 for the mean, 1 for
    the sum).

    The forward adds the layers in order and divides once, the same float operations as
    ``torch.stack(layers).sum(0)`` (and ``.mean(0)``: a sum, then a division); the backward hands every layer
    the same ``grad / divisor``, which autograd's ``mean`` computed on an expanded (L+1)-layer copy. So the
    values and gradients are bit for bit those of the stacked form (tested), without writing the (L+1) × N × d
    stack forward or its gradient backward: the LightGCN step's element-wise work on the stack, which costs
    several times its sparse products.
    """

    @staticmethod
    def forward(ctx, divisor: float, *layers: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.divisor = divisor
        ctx.n_layers = len(layers)
        total = layers[0] + layers[1]
        for x in layers[2:]:
            total += x
        return total.div_(divisor) if divisor != 1 else total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        share = grad / ctx.divisor if ctx.divisor != 1 else grad
        return (None, *([share] * ctx.n_layers))


def combine_layers(layers: list[torch.Tensor], combine: str) -> torch.Tensor:
    """``mean`` or ``sum`` of the propagation layers X⁰..X^L (:class:`_LayerSum`), or the ``last`` one."""
    if combine == "last":
        return layers[-1]
    if combine not in ("mean", "sum"):
        raise ValueError(f"unknown layer combination {combine!r} (mean | last | sum)")
    if len(layers) == 1:
        return layers[0]
    return _LayerSum.apply(float(len(layers)) if combine == "mean" else 1.0, *layers)


def propagate(adj: SparseOperator, x0: torch.Tensor, n_layers: int, combine: str = "mean") -> torch.Tensor:
    """LightGCN-style propagation X^l = Â X^{l−1} (docs/building-blocks.md#lightgcn-propagation).

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
    return combine_layers(layers, combine)


def split_nodes(h: torch.Tensor, n_users: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split stacked [users; items] node rows back into the user and item parts."""
    return h[:n_users], h[n_users:]


class NGCFPropagation(nn.Module):
    """NGCF layers (Wang et al. 2019; docs/models/ngcf.md#forward-pass).

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


# ====================================================================== edge-list aggregation (MMGCN, GRCN)
def edge_list_aggregate(
    x: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    n_nodes: int,
    aggr: str = "mean",
    edge_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Message passing over a directed edge list (docs/building-blocks.md#edge-lists; PyG semantics).

    Message of edge e is ``w_e · x[src_e]`` (``w_e = 1`` without ``edge_weight``); node v
    receives ``Σ_{e: dst_e = v}`` of its messages (``add``) or their mean over its incoming
    edges (``mean``: divided by the in-edge COUNT, as PyG's mean aggregation). Nodes with no
    incoming edge get zeros. Differentiable in ``x`` and ``edge_weight``; memory O(|edges| · d).
    For a fixed graph without learned weights :func:`edge_list_operator` is faster.
    """
    msg = x.index_select(0, src)
    if edge_weight is not None:
        msg = msg * edge_weight.unsqueeze(-1)
    out = x.new_zeros((n_nodes, *x.shape[1:])).index_add_(0, dst, msg)
    if aggr == "add":
        return out
    if aggr == "mean":
        count = torch.bincount(dst, minlength=n_nodes).clamp_(min=1).to(x.dtype)
        return out / count.view(-1, *([1] * (x.dim() - 1)))
    raise ValueError(f"unknown aggregation {aggr!r} (mean | add)")


def edge_list_operator(
    src: torch.Tensor,
    dst: torch.Tensor,
    n_nodes: int,
    aggr: str = "mean",
    edge_weight: torch.Tensor | None = None,
) -> SparseOperator:
    """The fixed sparse matrix M with ``M @ x == edge_list_aggregate(x, src, dst, n_nodes, aggr, edge_weight)``.

    M[dst_e, src_e] = w_e (``add``) or w_e / indeg(dst_e) (``mean``); duplicate edges are
    summed, as in the aggregation. A CSR sparse–dense product instead of a gather + scatter,
    for graphs whose weights are not learned (``edge_weight`` is detached).
    """
    w = torch.ones(src.shape[0], device=src.device) if edge_weight is None else edge_weight.detach().float()
    if aggr == "mean":
        count = torch.bincount(dst, minlength=n_nodes).clamp_(min=1).to(w.dtype)
        w = w / count[dst]
    elif aggr != "add":
        raise ValueError(f"unknown aggregation {aggr!r} (mean | add)")
    return SparseOperator.from_coo(dst, src, w, (n_nodes, n_nodes))


def segment_softmax(logits: torch.Tensor, index: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Softmax of edge ``logits`` within the groups of equal ``index`` (e.g. over the incoming edges of a node).

    The per-group maximum is subtracted first (scatter-max) for stability; groups with no
    edge do not occur in the output. Differentiable in ``logits`` (GRCN's attention, PyG ``softmax``).
    """
    group_max = logits.new_full((n_segments,), float("-inf")).scatter_reduce(
        0, index, logits.detach(), reduce="amax", include_self=True
    )
    ex = torch.exp(logits - group_max.index_select(0, index))
    denom = logits.new_zeros(n_segments).index_add_(0, index, ex)
    return ex / denom.index_select(0, index)


# ====================================================================== hypergraphs (LGMRec)
def gumbel_softmax_memberships(
    logits: torch.Tensor, tau: float, noise: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Soft hyperedge memberships softmax((Λ + g)/τ) over the last axis (docs/models/lgmrec.md#forward-pass, step 1).

    ``g`` is standard Gumbel noise −log(−log U) when ``noise`` (drawn from ``generator`` if
    given, so a seeded generator makes the draw reproducible); without ``noise`` it is the
    plain tempered softmax (the noise-free membership).
    """
    if noise:
        u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
        g = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))
        logits = logits + g
    return torch.softmax(logits / tau, dim=-1)


def hypergraph_propagate(
    item_memberships: torch.Tensor, user_memberships: torch.Tensor, item_emb: torch.Tensor, n_layers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Item → hyperedge → node propagation (docs/models/lgmrec.md#forward-pass, step 5).

    Y⁰ = ``item_emb``; for l = 1..L: Λ = H_iᵀ Y^{l−1} (A × d), Y^l = H_i Λ, G_u = H_u Λ.
    Returns (G_u, G_i = Y^L). Cost O(L (n_i + n_u) A d); nothing n × n is formed.
    With L = 0 the users get zeros and the items ``item_emb``.
    """
    y = item_emb
    g_u = user_memberships.new_zeros(user_memberships.shape[0], item_emb.shape[1])
    for _ in range(n_layers):
        lam = item_memberships.T @ y
        y = item_memberships @ lam
        g_u = user_memberships @ lam
    return g_u, y


# ====================================================================== learned-weight edge lists (GRCN)
def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        return torch.sparse_csr_tensor(crow, col, values, (n, n), check_invariants=False)


class _EdgeAggregate(torch.autograd.Function):
    """out = M(w) x with M[dst_e, src_e] = w_e; gradients for w (an SDDMM) and x (Mᵀ g), all CSR kernels."""

    @staticmethod
    def forward(ctx, graph: LearnedEdgeGraph, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.graph = graph
        ctx.save_for_backward(w, x)
        return graph.csr(w) @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        w, x = ctx.saved_tensors
        g = ctx.graph
        grad_w = g.dot_values(grad.contiguous(), x) if ctx.needs_input_grad[1] else None
        grad_x = g.csr_t(w) @ grad if ctx.needs_input_grad[2] else None
        return None, grad_w, grad_x


class _EdgeDot(torch.autograd.Function):
    """v_e = x[dst_e] · y[src_e] (an SDDMM); gradients M(g) y and M(g)ᵀ x."""

    @staticmethod
    def forward(ctx, graph: LearnedEdgeGraph, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.graph = graph
        ctx.save_for_backward(x, y)
        return graph.dot_values(x, y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, y = ctx.saved_tensors
        g = ctx.graph
        grad_x = g.csr(grad) @ y if ctx.needs_input_grad[1] else None
        grad_y = g.csr_t(grad) @ x if ctx.needs_input_grad[2] else None
        return None, grad_x, grad_y


class LearnedEdgeGraph:
    """A fixed directed edge list (``src → dst``, n nodes) for message passing with LEARNED edge weights.

    Same semantics as :func:`edge_list_aggregate` with ``aggr="add"`` and ``edge_weight``, but
    the products run as CSR sparse–dense products (forward and the gradient in x) and sampled
    dense–dense products (``torch.sparse.sampled_addmm``; the gradient in the weights), with no
    (|edges| × d) message tensor and no scatter: several times faster on CPU. Per-edge values
    are always in the order of the given edge list. Used by GRCN's attention and re-weighted GCN.
    """

    def __init__(self, src: torch.Tensor, dst: torch.Tensor, n_nodes: int) -> None:
        n = int(n_nodes)
        self.n_nodes = n
        self.src, self.dst = src, dst
        self.perm = torch.argsort(dst * n + src, stable=True)  # edge order -> CSR(dst rows) order
        self.crow = torch.zeros(n + 1, dtype=torch.long, device=src.device)
        self.crow[1:] = torch.cumsum(torch.bincount(dst, minlength=n), 0)
        self.col = src[self.perm]
        self.perm_t = torch.argsort(src * n + dst, stable=True)  # edge order -> CSR(src rows) order
        self.crow_t = torch.zeros(n + 1, dtype=torch.long, device=src.device)
        self.crow_t[1:] = torch.cumsum(torch.bincount(src, minlength=n), 0)
        self.col_t = dst[self.perm_t]
        self._pattern = _csr(self.crow, self.col, torch.zeros(src.shape[0], device=src.device), n)

    def csr(self, w: torch.Tensor) -> torch.Tensor:
        """M(w): rows dst, columns src."""
        return _csr(self.crow, self.col, w.index_select(0, self.perm), self.n_nodes)

    def csr_t(self, w: torch.Tensor) -> torch.Tensor:
        """M(w)ᵀ: rows src, columns dst."""
        return _csr(self.crow_t, self.col_t, w.index_select(0, self.perm_t), self.n_nodes)

    def dot_values(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x[dst_e] · y[src_e] for every edge, in edge order (no autograd)."""
        vals = torch.sparse.sampled_addmm(self._pattern.to(x.dtype), x, y.T, beta=0.0).values()
        return torch.empty_like(vals).index_copy_(0, self.perm, vals)

    def aggregate(self, x: torch.Tensor, edge_weight: torch.Tensor) -> torch.Tensor:
        """out_v = Σ_{e: dst_e = v} w_e x[src_e], differentiable in ``x`` and ``edge_weight``."""
        return _EdgeAggregate.apply(self, edge_weight, x)

    def edge_dot(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x[dst_e] · y[src_e] per edge, differentiable in ``x`` and ``y``."""
        return _EdgeDot.apply(self, x, y)
