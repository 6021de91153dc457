"""Loss primitives (docs/building-blocks.md#losses), written once for every model."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

LOG2E = 1.0 / math.log(2.0)  # e^x = 2^(x·log2 e): torch's exp2 runs several times faster than exp on CPU
# elements per tile of a fused kernel (4 MiB of float32): a tile stays in cache between its passes
_TILE_ELEMENTS = 2**20
_MAX_FIXED_SHIFT = 100.0  # base-2 logit range below which a fixed per-row shift cannot underflow a row's sum


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """BPR: −log σ(s⁺ − s⁻), mean (default) or sum over the batch; log-sigmoid for stability."""
    loss = -F.logsigmoid(pos_scores - neg_scores)
    return loss.mean() if reduction == "mean" else loss.sum()


def emb_loss(*tensors: torch.Tensor) -> torch.Tensor:
    """MMRec ``EmbLoss``: (Σ_j ‖X_j‖_F) / rows(X_last) — unsquared Frobenius norms over batch size."""
    total = sum(torch.linalg.norm(t) for t in tensors)
    return total / tensors[-1].shape[0]


def l2_loss(*tensors: torch.Tensor) -> torch.Tensor:
    """½ Σ_j ‖X_j‖_F² (no division; LayerGCN)."""
    return 0.5 * sum(t.pow(2).sum() for t in tensors)


def sq_reg(*tensors: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """``SqReg_B``: (½ Σ_j ‖X_j‖_F²) / B (LightGCN paper, NGCF, LATTICE, MARIO)."""
    b = batch_size if batch_size is not None else tensors[-1].shape[0]
    return l2_loss(*tensors) / b


class _GradientsInForward(torch.autograd.Function):
    """An autograd function whose forward pass also forms its gradients (they need the same (rows × table)
    products, and taking them at once keeps no such array for a backward pass). The forward stores
    ``ctx.grads``, one entry per forward input (None where there is none); the backward only scales them."""

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        return tuple(None if g is None else g * grad_out for g in ctx.grads)


class _DecodedL1Error(_GradientsInForward):
    """Σ over rows r and features e of |(codes_r · Wᵀ)_e − F[rows_r, e]|, gradients formed in the forward pass.

    One tile of rows at a time: decode into a cache-sized buffer, subtract the tile's feature rows, add
    up |·|, turn the buffer into its sign in place, and take both gradient products (∂/∂codes = sign·W,
    ∂/∂W += signᵀ·codes) while it is still in cache. The decoded (rows × features) table is never written
    to memory, nor its gathered targets.
    """

    @staticmethod
    def forward(ctx, codes, weight, features, rows, tile: int):  # type: ignore[override]
        n, width = codes.shape[0], weight.shape[0]
        need_codes, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_codes = torch.empty_like(codes) if need_codes else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        decoded = torch.empty(min(tile, n), width, dtype=codes.dtype, device=codes.device)
        target = torch.empty(min(tile, n), width, dtype=features.dtype, device=codes.device)
        total = codes.new_zeros(())
        for lo in range(0, n, tile):
            hi = min(n, lo + tile)
            out, ref = decoded[: hi - lo], target[: hi - lo]
            torch.mm(codes[lo:hi], weight.T, out=out)
            torch.index_select(features, 0, rows[lo:hi], out=ref)
            out.sub_(ref)
            total += torch.linalg.vector_norm(out, 1)
            if need_codes or need_weight:
                out.sign_()
                if need_codes:
                    torch.mm(out, weight, out=grad_codes[lo:hi])
                if need_weight:
                    grad_weight.addmm_(out.T, codes[lo:hi])
        ctx.grads = (grad_codes, grad_weight, None, None, None)
        return total


def decoded_l1_error(
    codes: torch.Tensor, weight: torch.Tensor, features: torch.Tensor, rows: torch.Tensor
) -> torch.Tensor:
    """mean over rows and features of |codes · weightᵀ − features[rows]|: a bias-free linear decoder's L1 error
    (MARIO's modality-preservation loss, paper Eq. 8, with F̂ = v W̃).

    The value and gradients of ``(codes @ weight.T - features[rows]).abs().mean()``, computed a tile of rows
    at a time (:class:`_DecodedL1Error`): at Baby's shape MARIO decodes ~1,800 × 4,096 image features per step,
    a 29 MB table that autograd would write, read back five times and keep for its backward pass.
    ``features`` gets no gradient (the features are data).
    """
    n = codes.shape[0] * weight.shape[0]
    tile = max(1, _TILE_ELEMENTS // max(1, weight.shape[0]))
    return _DecodedL1Error.apply(codes, weight, features, rows, tile) / max(1, n)


# ====================================================================== blocked full-table losses
class _EagerBlockSum(_GradientsInForward):
    """Σ over row blocks of ``fn(rows_block…, *shared)`` with the gradients taken block by block.

    The forward pass runs ``fn`` on one block of rows at a time under autograd, takes the
    block's gradients at once and accumulates them, so the only memory that outlives a
    block is one gradient per input; nothing of size (rows × table) is kept for the
    backward pass, which just scales the stored gradients.
    """

    @staticmethod
    def forward(ctx, fn, block_size: int, n_rows: int, *tensors):  # type: ignore[override]
        rows, shared = tensors[:n_rows], tensors[n_rows:]
        need = [t.requires_grad and t.is_floating_point() for t in tensors]
        grads: list[torch.Tensor | None] = [
            torch.zeros_like(t) if n else None for t, n in zip(tensors, need, strict=True)
        ]
        total = torch.zeros((), dtype=tensors[n_rows].dtype if shared else rows[0].dtype, device=rows[0].device)
        n = rows[0].shape[0]
        with torch.enable_grad():
            shared_leaves = [t.detach().requires_grad_(r) for t, r in zip(shared, need[n_rows:], strict=True)]
            for lo in range(0, n, block_size):
                row_leaves = [
                    t[lo : lo + block_size].detach().requires_grad_(r) for t, r in zip(rows, need[:n_rows], strict=True)
                ]
                leaves = row_leaves + shared_leaves
                value = fn(*leaves)
                wrt = [leaf for leaf, r in zip(leaves, need, strict=True) if r]
                block_grads = iter(torch.autograd.grad(value, wrt) if wrt else ())
                for j, r in enumerate(need):
                    if not r:
                        continue
                    g = next(block_grads)
                    if j < n_rows:
                        grads[j][lo : lo + block_size] = g  # type: ignore[index]
                    else:
                        grads[j].add_(g)  # type: ignore[union-attr]
                total = total + value.detach()
        ctx.grads = (None, None, None, *grads)
        return total


def blocked_row_sum(fn, rows: list[torch.Tensor], shared: list[torch.Tensor], block_size: int) -> torch.Tensor:
    """Σ_blocks fn(*row_blocks, *shared): a row-separable loss evaluated ``block_size`` rows at a time.

    ``rows`` are sliced along dim 0 (anchors, their indices …); ``shared`` (full tables)
    are passed whole. ``fn`` must return the SUM of its per-row terms. Peak memory is
    O(block × table) and no (rows × table) activation is stored for backward: each
    block's gradients are taken eagerly (same GEMM count as plain autograd). Without
    autograd (no_grad, or no input needs a gradient) the blocks simply run and sum.
    """
    tensors = [*rows, *shared]
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        with torch.no_grad():
            n = rows[0].shape[0]
            parts = [fn(*(t[lo : lo + block_size] for t in rows), *shared) for lo in range(0, n, block_size)]
            return torch.stack(parts).sum() if parts else rows[0].new_zeros(())
    return _EagerBlockSum.apply(fn, int(block_size), len(rows), *tensors)


class _InfoNCETable(_GradientsInForward):
    """Σ_k [log Σ_n exp(x_k·y_n) − x_k·y_{i_k}] over anchors x_k with the gradients formed in its forward pass.

    Each tile of anchors goes through its (table × tile) logits once, in a buffer small enough to stay in
    cache: the GEMM, exp, the sums, P = softmax − onehot in place, then both gradient GEMMs
    (∂/∂x = Pᵀ·Y, ∂/∂Y += P·x). No (anchors × table) array is written to memory and no log-softmax is
    stored for a backward pass, which only scales the stored gradients — 1.4–1.6× faster than autograd
    over ``cross_entropy`` at MeAIM's Baby shape (2,048 anchors against 19,445 and 7,050 rows). The
    logits are laid out table-major (Y·xᵀ): with d = 64 that product runs about 1.4× faster here than
    x·Yᵀ, whose output rows are long (measured by hand).

    The softmax needs no max-shift pass when the rows of Y have norm ≤ 1 (``info_nce_full`` normalises
    them): then |x_k·y_n| ≤ ‖x_k‖, and ‖x_k‖ is a shift no exponent can overflow; the maximum over the
    table is taken instead only when 2‖x_k‖ could underflow every term.
    """

    @staticmethod
    def forward(ctx, x, y, index, tile: int):  # type: ignore[override]
        n, n_rows = x.shape[0], y.shape[0]
        need = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        shift = x.norm(dim=1) * LOG2E  # base-2 bound of every logit of the anchor
        fixed = n == 0 or float(shift.max()) * 2.0 <= _MAX_FIXED_SHIFT
        x2 = x * LOG2E
        grad_x = torch.empty_like(x) if need else None
        grad_y = torch.zeros_like(y) if need else None
        buffer = torch.empty(n_rows, min(tile, n), dtype=x.dtype, device=x.device)
        total = x.new_zeros(())
        for lo in range(0, n, tile):
            hi = min(n, lo + tile)
            logits = buffer if hi - lo == buffer.shape[1] else buffer.new_empty(n_rows, hi - lo)
            torch.mm(y, x2[lo:hi].T, out=logits)  # (table, tile), base 2
            anchor_shift = shift[lo:hi] if fixed else logits.amax(dim=0)
            logits.sub_(anchor_shift).exp2_()
            sums = logits.sum(dim=0)
            total += (sums.log2() + anchor_shift).sum() / LOG2E
            if need:
                logits.mul_(sums.reciprocal_())
                logits[index[lo:hi], torch.arange(hi - lo, device=x.device)] -= 1.0
                torch.mm(logits.T, y, out=grad_x[lo:hi])
                grad_y.addmm_(logits, x[lo:hi])
        total -= (x * y[index]).sum()
        ctx.grads = (grad_x, grad_y, None, None)
        return total


def info_nce_full(
    anchors: torch.Tensor,
    positives_table: torch.Tensor,
    anchor_index: torch.Tensor,
    tau: float = 0.2,
    block_size: int = 512,
) -> torch.Tensor:
    """InfoNCE of anchors against a FULL table of candidates, cosine similarities, temperature τ.

    Row k's positive is ``positives_table[anchor_index[k]]``; every row of the table is
    a candidate (the positive included):

        L = −mean_k log[ exp(cos(x_k, Y_{i_k})/τ) / Σ_n exp(cos(x_k, Y_n)/τ) ].

    Computed at most ``block_size`` anchors at a time (fewer when a tile's logits would not stay
    in cache, :class:`_InfoNCETable`), so memory is O(block × table) however many anchors there
    are. The minimum, for a table whose rows are distinct, is reached when each anchor points the
    same way as its positive.
    """
    x = F.normalize(anchors, dim=1) / tau  # 1/τ folded into the (rows × d) side, not the logits
    y = F.normalize(positives_table, dim=1)
    tile = max(1, min(int(block_size), 2 * _TILE_ELEMENTS // max(1, y.shape[0])))
    return _InfoNCETable.apply(x, y, anchor_index, tile) / max(1, anchors.shape[0])


def sampled_candidate_rows(positives: torch.Tensor, n_rows: int, n_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidate rows of a sampled softmax over a table of ``n_rows``, and each positive's place among them.

    Candidates = the positives ∪ ``n_samples`` rows drawn uniformly with replacement (torch's global
    generator, which the trainer seeds and saves), sorted and without repeats; so every positive is a
    candidate exactly once, and a step costs O((B + n_samples)·d) instead of O(n_rows·d).
    Returns ``(rows, positions)`` with ``rows[positions[k]] == positives[k]``.
    """
    drawn = torch.randint(0, n_rows, (n_samples,), device=positives.device)
    rows = torch.unique(torch.cat([positives, drawn]))
    return rows, torch.searchsorted(rows, positives)


def sampled_subset(index: torch.Tensor, n_samples: int) -> torch.Tensor:
    """At most ``n_samples`` entries of ``index``, drawn uniformly without replacement (torch's global
    generator, which the trainer seeds and saves); ``index`` itself when ``n_samples`` is 0 or covers it.

    A mean over the drawn entries estimates the mean over all of ``index`` without bias, at a cost that
    no longer grows with it (DA-MRS's KL items and neighbour-discrimination anchors in the large-data mode).
    """
    if n_samples <= 0 or n_samples >= index.shape[0]:
        return index
    return index[torch.randperm(index.shape[0], device=index.device)[:n_samples]]


INFO_NCE_POSITIVES = ("batch", "block")


def info_nce_sampled(
    anchors: torch.Tensor,
    positives_table: torch.Tensor,
    anchor_index: torch.Tensor,
    n_candidates: int,
    tau: float = 0.2,
    block_size: int = 512,
    positives: str = "batch",
) -> torch.Tensor:
    """:func:`info_nce_full` against the positives plus ``n_candidates`` sampled rows of the table
    (:func:`sampled_candidate_rows`); the full table when ``n_candidates`` is 0 or covers it.

    ``positives`` says whose positives an anchor competes against besides the sampled rows: ``"batch"``,
    every positive of the call (O(B·(B + N)·d): quadratic in the batch), or ``"block"``, those of its own
    block of ``block_size`` anchors (:func:`info_nce_block_positives`, O(B·(block + N)·d): linear).
    """
    if positives not in INFO_NCE_POSITIVES:
        raise ValueError(f"positives must be one of {INFO_NCE_POSITIVES}, got {positives!r}")
    n_rows = positives_table.shape[0]
    if n_candidates <= 0 or n_candidates >= n_rows:
        return info_nce_full(anchors, positives_table, anchor_index, tau, block_size)
    if positives == "block":
        drawn = torch.randint(0, n_rows, (n_candidates,), device=anchor_index.device)  # as sampled_candidate_rows
        return info_nce_block_positives(anchors, positives_table, anchor_index, drawn, tau, block_size)
    rows, positions = sampled_candidate_rows(anchor_index, n_rows, n_candidates)
    return info_nce_full(anchors, positives_table[rows], positions, tau, block_size)


def info_nce_block_positives(
    anchors: torch.Tensor, table: torch.Tensor, index: torch.Tensor, drawn: torch.Tensor, tau: float, block_size: int
) -> torch.Tensor:
    """Sampled InfoNCE whose candidates grow with a block of anchors, not with the batch.

    ``drawn``: rows of ``table`` drawn once for the call (:func:`info_nce_sampled` draws them uniformly with
    replacement, as :func:`sampled_candidate_rows` does, so the generator advances alike). Anchor k's positive
    is ``table[index[k]]``; the anchors of each block of ``block_size`` rows compete against the set
    C_blk = {their block's positives} ∪ {drawn rows}, without repeats:

        L = −mean_k log[ exp(cos(x_k, Y_{i_k})/τ) / Σ_{n ∈ C_blk(k)} exp(cos(x_k, Y_n)/τ) ].

    With one block holding every anchor this is the ``"batch"`` form of :func:`info_nce_sampled`.
    Repeats are masked rather than removed: a positive that occurs earlier in its block, or a drawn row
    that repeats an earlier draw or is one of the block's positives, gets a logit of −∞, so the
    block's candidate matrix keeps a fixed shape. Gradients are taken block by block
    (:func:`blocked_row_sum`); only the anchors' own positive rows and the drawn rows are gathered.
    """
    order = torch.argsort(drawn, stable=True)
    repeat = torch.zeros_like(drawn, dtype=torch.bool)
    repeat[order[1:]] = drawn[order[1:]] == drawn[order[:-1]]  # every copy of a row after the first
    x = F.normalize(anchors, dim=1) / tau
    own = F.normalize(table[index], dim=1)
    sampled = F.normalize(table[drawn], dim=1)
    total = blocked_row_sum(_info_nce_block_positives, [x, own, index], [sampled, drawn, repeat], block_size)
    return total / max(1, anchors.shape[0])


def _info_nce_block_positives(
    x: torch.Tensor, own: torch.Tensor, index: torch.Tensor, sampled: torch.Tensor, drawn: torch.Tensor,
    repeat: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    same = index[:, None] == index[None, :]
    first = same.to(torch.uint8).argmax(dim=1)  # the first column holding anchor k's positive: its target
    later_copy = first != torch.arange(index.shape[0], device=index.device)
    in_block = torch.isin(drawn, index)
    own_logits = (x @ own.T).masked_fill(later_copy[None, :], float("-inf"))
    sampled_logits = (x @ sampled.T).masked_fill((repeat | in_block)[None, :], float("-inf"))
    return F.cross_entropy(torch.cat([own_logits, sampled_logits], dim=1), first, reduction="sum")


def bernoulli_kl_symmetric(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Element-wise symmetric KL between Bernoulli(p) and Bernoulli(q): kl(p‖q) + kl(q‖p).

    kl(p‖q) = p ln(p/q) + (1−p) ln((1−p)/(1−q)); probabilities are clamped to
    [eps, 1−eps] first. The sum of both directions simplifies exactly to
    (p − q)·(logit p − logit q), which is what is computed: 0 iff p = q, positive otherwise.
    """
    p = p.clamp(eps, 1.0 - eps)
    q = q.clamp(eps, 1.0 - eps)
    return (p - q) * ((torch.log(p) - torch.log1p(-p)) - (torch.log(q) - torch.log1p(-q)))


def bernoulli_kl_symmetric_logits(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """:func:`bernoulli_kl_symmetric` of p = σ(x), q = σ(y), computed from the logits.

    Clamping σ(x) to [eps, 1−eps] equals clamping x to [−c, c] with c = logit(1−eps)
    (σ is monotone), and logit(σ(x̃)) = x̃, so the value is exactly
    (σ(x̃) − σ(ỹ))·(x̃ − ỹ): no logarithms, and accurate where σ rounds to 1 in float32.
    """
    c = math.log((1.0 - eps) / eps)
    x = x.clamp(-c, c)
    y = y.clamp(-c, c)
    return (torch.sigmoid(x) - torch.sigmoid(y)) * (x - y)


class _DotBernoulliKL(_GradientsInForward):
    """Σ_(k,n) (σ(ã) − σ(b̃))(ã − b̃) with a = x_k·P_n, b = x_k·Q_n clamped to ±c, gradients formed in the forward.

    One tile of anchors at a time, its two (tile × table) logit arrays kept small enough to stay in cache
    through every pass: the two GEMMs, σ, the value, then in place ∂/∂a = σ'(ã)(ã − b̃) + σ(ã) − σ(b̃) and
    ∂/∂b = −σ'(b̃)(ã − b̃) − (σ(ã) − σ(b̃)) (zero where the clamp bit, as autograd's clamp gives), and the
    gradient GEMMs. Autograd over the element-wise form stored about ten (anchors × table) arrays and
    made MeAIM's KL term about a third of its step at Baby's shape (profiled by hand). The clamp is applied
    only to a tile whose logits reach ±c (one min/max pass tells).
    """

    @staticmethod
    def forward(ctx, x, table_p, table_q, bound: float, tile: int):  # type: ignore[override]
        n, n_rows = x.shape[0], table_p.shape[0]
        need = any(ctx.needs_input_grad[:3])
        grads = [torch.zeros_like(t) if need else None for t in (x, table_p, table_q)]
        shape = (min(tile, n), n_rows)
        a_buf, b_buf, d_buf, s_buf = (torch.empty(shape, dtype=x.dtype, device=x.device) for _ in range(4))
        total = x.new_zeros(())
        for lo in range(0, n, tile):
            hi = min(n, lo + tile)
            xt = x[lo:hi]
            a, b, diff, gap = a_buf[: hi - lo], b_buf[: hi - lo], d_buf[: hi - lo], s_buf[: hi - lo]
            torch.mm(xt, table_p.T, out=a)
            torch.mm(xt, table_q.T, out=b)
            masks = []
            for t in (a, b):
                low, high = torch.aminmax(t)
                if float(low) < -bound or float(high) > bound:
                    masks.append(t.abs().le_(bound))
                    t.clamp_(-bound, bound)
                else:
                    masks.append(None)
            torch.sub(a, b, out=diff)
            a.sigmoid_()
            b.sigmoid_()
            torch.sub(a, b, out=gap)
            total += torch.dot(gap.view(-1), diff.view(-1))
            if not need:
                continue
            sides = ((a, 1.0, masks[0], table_p, grads[1]), (b, -1.0, masks[1], table_q, grads[2]))
            for t, sign, mask, table, g_table in sides:
                t.addcmul_(t, t, value=-1.0).mul_(diff).add_(gap)  # σ'(t̃)(ã − b̃) + σ(ã) − σ(b̃)
                if mask is not None:
                    t.mul_(mask)
                grads[0][lo:hi].addmm_(t, table, alpha=sign)
                g_table.addmm_(t.T, xt, alpha=sign)
        ctx.grads = (*grads, None, None)
        return total


def dot_bernoulli_kl_full(
    anchors: torch.Tensor, table_p: torch.Tensor, table_q: torch.Tensor, block_size: int = 512, eps: float = 1e-7
) -> torch.Tensor:
    """Mean over (anchor, table row) of ``bernoulli_kl_symmetric(σ(x·P_n), σ(x·Q_n))``.

    P = σ(X Pᵀ) and Q = σ(X Qᵀ) are (anchors × table) probability matrices (MeAIM's
    preference distributions), in the logit form of :func:`bernoulli_kl_symmetric_logits`; computed at
    most ``block_size`` anchors at a time (fewer when a tile would not stay in cache,
    :class:`_DotBernoulliKL`), so no full (anchors × table) matrix is ever kept.
    """
    n = anchors.shape[0] * table_p.shape[0]
    tile = max(1, min(int(block_size), _TILE_ELEMENTS // max(1, table_p.shape[0])))
    bound = math.log((1.0 - eps) / eps)
    return _DotBernoulliKL.apply(anchors, table_p, table_q, bound, tile) / max(1, n)


# ====================================================================== GRACE InfoNCE (MMSSL)
def grace_info_nce(z1: torch.Tensor, z2: torch.Tensor, tau: float = 0.5, block_size: int = 1024) -> torch.Tensor:
    """GRACE-style InfoNCE with intra-view negatives (MMSSL, docs/building-blocks.md#infonce), mean over anchors.

    For aligned rows n of z1, z2 and cosine c:
    −log( e^{c(z1n,z2n)/τ} / (Σ_j e^{c(z1n,z1j)/τ} + Σ_j e^{c(z1n,z2j)/τ} − e^{c(z1n,z1n)/τ}) ),
    j over all rows (the batch). Computed ``block_size`` anchors at a time. All-zero rows
    have cosine 0 with everything (F.normalize), so an all-zero z1 gives the constant
    log(2n − 1).
    """
    n = z1.shape[0]
    a = F.normalize(z1, dim=1) / tau
    t1 = F.normalize(z1, dim=1)
    t2 = F.normalize(z2, dim=1)

    def block(ab: torch.Tensor, idx: torch.Tensor, t1_: torch.Tensor, t2_: torch.Tensor) -> torch.Tensor:
        refl = torch.exp(ab @ t1_.T)
        betw = torch.exp(ab @ t2_.T)
        col = idx.unsqueeze(1)
        pos = betw.gather(1, col).squeeze(1)
        own = refl.gather(1, col).squeeze(1)
        return -torch.log(pos / (refl.sum(1) + betw.sum(1) - own)).sum()

    index = torch.arange(n, device=z1.device)
    return blocked_row_sum(block, [a, index], [t1, t2], block_size) / max(1, n)


# ====================================================================== neighbour discrimination (DA-MRS)
def neighbour_discrimination_nce(
    anchors: list[torch.Tensor],
    tables: list[torch.Tensor],
    tau: float = 0.2,
    n_pos: int = 10,
    block_size: int = 512,
    eps: float = 1e-9,
) -> torch.Tensor:
    """DA-MRS's multi-positive "neighbour discrimination" loss over V views (docs/models/damrs.md#loss, 3).

    ``anchors[m]`` (rows × d) and ``tables[m]`` (n × d) are the L2-normalised embeddings of
    view m for the anchor items and for all items. Per view, Q_m = softmax_row(z_m Z_mᵀ)
    (no temperature; no gradient). For target view m, M = Σ_a Q_a + Q_m (= Q_a + Q_b + 2Q_m
    for three views); Pos_mm = top-``n_pos`` of M; Pos_s = top-``n_pos`` of Q_m after zeroing
    the Pos_mm entries. With e_j = exp(z_m·Z_mj/τ), tot = Σ_j e_j, mm = Σ_{Pos_mm} e_j,
    sg = Σ_{Pos_s} e_j: ℓ_m = −log(mm/tot + eps) − log(sg/(tot − mm) + eps). Returns the
    mean over anchors and views. Anchors are processed ``block_size`` at a time (memory
    O(block × n × V)); pseudo-label indices carry no gradient, the scores do.
    """
    v = len(anchors)
    n_rows = anchors[0].shape[0]
    k = min(n_pos, tables[0].shape[0])
    total = _NeighbourNCE.apply(float(tau), k, int(block_size), float(eps), v, *anchors, *tables)
    return total / max(1, n_rows * v)


class _NeighbourNCE(_GradientsInForward):
    """Σ over anchors and views of the neighbour-discrimination terms, gradients in closed form.

    Per block of anchors and view: s = z Zᵀ, e = exp(s/τ); with a = mm/tot, b = sg/(tot − mm),
    ℓ = −log(a + ε) − log(b + ε) and ∂ℓ/∂s_j = (e_j/τ)(∂ℓ/∂tot + 1[j∈Pos_mm] ∂ℓ/∂mm
    + 1[j∈Pos_s] ∂ℓ/∂sg). The gradients are formed eagerly block by block (two GEMMs each),
    so nothing of size (anchors × n) outlives a block and no autograd graph is built for it.
    """

    @staticmethod
    def forward(ctx, tau, k, block_size, eps, v, *tensors):  # type: ignore[override]
        zs, ts = tensors[:v], tensors[v:]
        need = ctx.needs_input_grad[5:]
        gz = [torch.zeros_like(z) if need[m] else None for m, z in enumerate(zs)]
        gt = [torch.zeros_like(t) if need[v + m] else None for m, t in enumerate(ts)]
        total = torch.zeros((), dtype=torch.float64, device=zs[0].device)
        n_rows = zs[0].shape[0]
        for lo in range(0, n_rows, block_size):
            zb = [z[lo : lo + block_size] for z in zs]
            sims = [z @ t.T for z, t in zip(zb, ts, strict=True)]
            qs = [torch.softmax(sm, dim=1) for sm in sims]
            q_sum = qs[0].clone()
            for q in qs[1:]:
                q_sum += q
            for m in range(v):
                pos_mm = torch.topk(q_sum + qs[m], k, dim=1).indices
                pos_s = torch.topk(qs[m].scatter_(1, pos_mm, 0.0), k, dim=1).indices  # qs[m] not needed after
                e = sims[m].mul_(1.0 / tau).exp_()
                tot = e.sum(1)
                e_mm, e_s = e.gather(1, pos_mm), e.gather(1, pos_s)
                mm, sg = e_mm.sum(1), e_s.sum(1)
                rest = tot - mm
                a, b = mm / tot, sg / rest
                total += (-torch.log(a + eps) - torch.log(b + eps)).sum().double()
                if gz[m] is None and gt[m] is None:
                    continue
                ia, ib = 1.0 / (a + eps), 1.0 / (b + eps)
                d_tot = ia * mm / tot.square() + ib * sg / rest.square()
                d_mm = -ia / tot - ib * sg / rest.square()
                d_sg = -ib / rest
                g = e.mul_((d_tot / tau).unsqueeze(1))
                g.scatter_add_(1, pos_mm, e_mm * (d_mm / tau).unsqueeze(1))
                g.scatter_add_(1, pos_s, e_s * (d_sg / tau).unsqueeze(1))
                if gz[m] is not None:
                    gz[m][lo : lo + block_size] = g @ ts[m]
                if gt[m] is not None:
                    gt[m] += g.T @ zb[m]
        ctx.grads = (None, None, None, None, None, *gz, *gt)
        return total.to(zs[0].dtype)


# ====================================================================== WGAN-GP (MMSSL)
def wgan_gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """mean_r (‖∇_x D(x̂_r)‖₂ − 1)², x̂ = α real + (1 − α) fake with α ~ U(0, 1) per row.

    The gradient is taken with ``create_graph`` so the penalty trains the critic; inputs are
    detached first (the penalty is a critic-only term).
    """
    alpha = torch.rand(real.shape[0], 1, device=real.device, dtype=real.dtype)
    x = (alpha * real.detach() + (1.0 - alpha) * fake.detach()).requires_grad_(True)
    out = critic(x)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return (grad.norm(2, dim=1) - 1.0).pow(2).mean()


# ====================================================================== in-batch InfoNCE (SLMRec)
def info_nce_in_batch(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    tau: float = 0.2,
    normalize: bool = True,
    block_size: int | None = None,
) -> torch.Tensor:
    """In-batch, one-directional InfoNCE (docs/building-blocks.md#infonce), mean over the batch.

    Logits ``a_b · c_{b'} / τ`` over all batch pairs (b, b'), cross-entropy with the diagonal
    as target: −mean_b log[ exp(a_b·c_b/τ) / Σ_{b'} exp(a_b·c_{b'}/τ) ]. Only the anchors
    are contrasted (rows), not the positives. With ``normalize`` both sides are L2-normalised
    first (cosine logits, SLMRec's main task); without, raw dot products (SLMRec's FAC task).
    Duplicate positives in a batch act as false negatives, as in the reference.

    ``block_size`` (SLMRec's ``in_batch_block``, set by the large-data mode): each anchor competes only
    against the positives of its own block of ``block_size`` consecutive batch rows (the last block may
    be smaller), the mean still over every anchor — each block is the in-batch InfoNCE of a batch that
    size. A step then costs O(B·block·d) instead of O(B²·d), and no (B × B) logits exist (blocks are
    evaluated one at a time with their gradients taken at once, :func:`blocked_row_sum`). None, or a block
    at least the batch, is the formula above.
    """
    if normalize:
        anchors = F.normalize(anchors, dim=1)
        positives = F.normalize(positives, dim=1)
    n = anchors.shape[0]
    if block_size is None or block_size >= n:
        logits = (anchors / tau) @ positives.T  # 1/τ on the (B × d) side, not on the B × B logits
        return F.cross_entropy(logits, torch.arange(n, device=anchors.device))
    block_sum = functools.partial(_in_batch_info_nce_sum, tau=tau)
    return blocked_row_sum(block_sum, [anchors, positives], [], int(block_size)) / n


def _in_batch_info_nce_sum(anchors: torch.Tensor, positives: torch.Tensor, tau: float) -> torch.Tensor:
    """Σ over one block's anchors of the in-batch InfoNCE term against that block's positives."""
    logits = (anchors / tau) @ positives.T
    return F.cross_entropy(logits, torch.arange(anchors.shape[0], device=anchors.device), reduction="sum")


# ====================================================================== bootstrap cosine loss (BM3)
def negative_cosine_loss(online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """c(x, y) = 1 − mean_b cos(x_b, y_b) (BM3, docs/models/bm3.md#loss).

    ``target`` is used as given (detach it first).
    """
    return 1.0 - F.cosine_similarity(online, target, dim=-1).mean()


def wgan_gradient_penalty_linear_first(
    rest, weight: torch.Tensor, h_real: torch.Tensor, h_fake: torch.Tensor
) -> torch.Tensor:
    """:func:`wgan_gradient_penalty` of a critic D(x) = rest(x Wᵀ + b), from the first layer's outputs.

    Because the first layer is affine, the interpolate's first-layer output is
    α h_real + (1 − α) h_fake exactly, and ∇_x D(x̂) = (∇_h rest) W — so the critic never
    runs its widest GEMM on x̂. ``h_real``/``h_fake`` = x Wᵀ + b of the real / fake rows
    (with their graph, so the penalty's gradient reaches W and b through both paths);
    α ~ U(0, 1) per row is drawn first, as in :func:`wgan_gradient_penalty`.
    """
    alpha = torch.rand(h_real.shape[0], 1, device=h_real.device, dtype=h_real.dtype)
    h_hat = alpha * h_real + (1.0 - alpha) * h_fake
    (grad_h,) = torch.autograd.grad(rest(h_hat).sum(), h_hat, create_graph=True)
    return (grad_h @ weight).norm(2, dim=1).sub(1.0).pow(2).mean()
