"""The message-passing blocks of ``modalrec.nn.propagation`` shared by several models, against direct loops
or dense formulas: edge-list aggregation (MMGCN, GRCN), segment softmax and learned-edge graphs (GRCN),
Gumbel memberships and hypergraph propagation (LGMRec); LightGCN's layer combination against the stacked form."""

from __future__ import annotations

import pytest
import scipy.sparse as sp
import torch

from modalrec.graphs import SparseOperator
from modalrec.nn.propagation import (
    LearnedEdgeGraph,
    edge_list_aggregate,
    edge_list_operator,
    gumbel_softmax_memberships,
    hypergraph_propagate,
    propagate,
    segment_softmax,
)


@pytest.mark.parametrize("combine", ["mean", "sum", "last"])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_propagate_combines_layers_bit_for_bit_as_the_stacked_form(combine, n_layers):
    """The combination without a stack (nn.propagation._LayerSum) gives the stacked form's values and
    gradients exactly: models' pinned metrics rest on it."""
    gen = torch.Generator().manual_seed(n_layers)
    n, d = 300, 16
    dense = (torch.rand(n, n, generator=gen) < 0.03).float()
    dense = ((dense + dense.T) > 0).float()
    deg = dense.sum(1).clamp(min=1)
    adj = SparseOperator(sp.csr_matrix((dense / deg.sqrt()[:, None] / deg.sqrt()[None]).numpy()))
    x0 = torch.randn(n, d, generator=gen)
    weights = torch.randn(n, d, generator=gen)

    def stacked(x: torch.Tensor) -> torch.Tensor:
        layers = [x]
        for _ in range(n_layers):
            layers.append(adj @ layers[-1])
        if combine == "last":
            return layers[-1]
        return getattr(torch.stack(layers), combine)(dim=0)

    results = []
    for combined in (stacked, lambda x: propagate(adj, x, n_layers, combine)):
        x = x0.clone().requires_grad_(True)
        out = combined(x)
        (out * weights).sum().backward()
        results.append((out.detach(), x.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    with torch.no_grad():
        assert torch.equal(propagate(adj, x0, n_layers, combine), results[0][0])
    with pytest.raises(ValueError, match="unknown layer combination"):
        propagate(adj, x0, n_layers, "max")


def test_edge_list_aggregate_mean_add_and_operator():
    src = torch.tensor([0, 1, 2, 2, 3, 0])
    dst = torch.tensor([1, 0, 0, 1, 1, 3])
    x = torch.randn(5, 3, dtype=torch.float64)
    w = torch.tensor([0.5, 2.0, -1.0, 1.5, 3.0, 0.25], dtype=torch.float64)
    add = torch.zeros(5, 3, dtype=torch.float64)
    count = torch.zeros(5)
    for s, d, we in zip(src.tolist(), dst.tolist(), w.tolist(), strict=True):
        add[d] += we * x[s]
        count[d] += 1
    mean = add / count.clamp(min=1).unsqueeze(1).double()
    torch.testing.assert_close(edge_list_aggregate(x, src, dst, 5, "add", w), add)
    torch.testing.assert_close(edge_list_aggregate(x, src, dst, 5, "mean", w), mean)
    assert (edge_list_aggregate(x, src, dst, 5, "mean")[[2, 4]] == 0).all()  # no incoming edges
    for aggr in ("mean", "add"):
        op = edge_list_operator(src, dst, 5, aggr, w)
        torch.testing.assert_close((op @ x.float()).double(), edge_list_aggregate(x, src, dst, 5, aggr, w))
    # differentiable in the edge weights (GRCN learns them)
    wg = w.clone().requires_grad_(True)
    edge_list_aggregate(x, src, dst, 5, "add", wg).sum().backward()
    torch.testing.assert_close(wg.grad, x[src].sum(dim=1))
    with pytest.raises(ValueError):
        edge_list_aggregate(x, src, dst, 5, "max")


def test_segment_softmax_is_softmax_within_groups():
    torch.manual_seed(0)
    index = torch.tensor([2, 0, 2, 2, 0, 4])
    logits = torch.randn(6) * 30  # large values: the max subtraction keeps it finite
    out = segment_softmax(logits, index, 5)
    for g in (0, 2, 4):
        m = index == g
        torch.testing.assert_close(out[m], torch.softmax(logits[m], dim=0))


def test_learned_edge_graph_matches_gather_scatter_with_gradients():
    torch.manual_seed(0)
    n, e = 30, 200
    src, dst = torch.randint(0, n, (e,)), torch.randint(0, n, (e,))
    g = LearnedEdgeGraph(src, dst, n)
    x = torch.randn(n, 5, requires_grad=True)
    y = torch.randn(n, 5, requires_grad=True)
    w = torch.rand(e, requires_grad=True)
    weights = torch.randn(n, 5)
    fast = (g.aggregate(x, w) * weights).sum() + (g.edge_dot(x, y) * w).sum()
    slow = (edge_list_aggregate(x, src, dst, n, "add", edge_weight=w) * weights).sum() + (
        (x[dst] * y[src]).sum(1) * w
    ).sum()
    torch.testing.assert_close(fast, slow)
    for a, b in zip(torch.autograd.grad(fast, [x, y, w]), torch.autograd.grad(slow, [x, y, w]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_gumbel_memberships_and_hypergraph_propagation():
    logits = torch.randn(10, 4)
    clean = gumbel_softmax_memberships(logits, 0.2, noise=False)
    torch.testing.assert_close(clean, torch.softmax(logits / 0.2, dim=1))
    a = gumbel_softmax_memberships(logits, 0.2, True, torch.Generator().manual_seed(3))
    b = gumbel_softmax_memberships(logits, 0.2, True, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, clean)
    torch.testing.assert_close(a.sum(1), torch.ones(10))
    h_i, h_u, y0 = torch.rand(10, 4), torch.rand(7, 4), torch.randn(10, 3)
    g_u, g_i = hypergraph_propagate(h_i, h_u, y0, 2)
    lam1 = h_i.T @ y0
    lam2 = h_i.T @ (h_i @ lam1)
    torch.testing.assert_close(g_i, h_i @ lam2)
    torch.testing.assert_close(g_u, h_u @ lam2)
