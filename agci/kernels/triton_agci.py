"""Fused Triton kernels for AGCI on packed tokens ``[T, D]`` split into images by ``cu_seqlens``.

Forward (about 2 reads and 1 write of ``T*D``), 2 launches, 3 when an image has more than CHUNK tokens:
  1. ``_segment_colsum``: grid (image, row chunk, column block); each program sums CHUNK rows of one image
     and stores ``sum / n``. Chunks are laid from each image's first row, so an image's result does not
     depend on the other images in the call (bitwise batch invariance).
  2. ``_sum_partials``: adds the partial means of each image (skipped when one chunk suffices).
  3. ``_inject_rows``: one program per token row: dot, norms, weight, and ``x + lam * w * g``.

Backward, with ``c_i = <x_i, g> / (|x_i||g|)``, ``w_i = 1 - c_i`` and ``p_i = lam <dy_i, g>``:
  ``dL/dg = sum_i (lam w_i dy_i - p_i x_i / (|x_i||g|)) + (sum_i p_i c_i) g / |g|^2``
  ``dx_i = dy_i - p_i g / (|x_i||g|) + p_i c_i x_i / |x_i|^2 + (dL/dg) / n``
  (the two middle terms vanish where the cosine is undefined, as in the reference).
  1. ``_bwd_chunk_sums``: grid (image, chunk of BWD_CHUNK rows): the per-token coefficients, computed and
     used in the same program for the weighted column sum (partial ``dL/dg`` and ``sum p_i c_i``); with one
     chunk per image it stores the finished ``dL/dg / n`` itself.
  2. ``_bwd_finish_grad_g``: per image ``dL/dg / n`` from the partials (skipped with one chunk per image).
  3. ``_bwd_rows``: one program per token: its coefficients again and ``dx``, the row read once.
  2 launches when every image has at most BWD_CHUNK tokens, else 3, and no torch op in between; before
  this layout the backward took 4 launches plus a torch reduction (``|g|^2``) and wrote 4 floats per token.
  Traffic: x and dy read twice (the second time from L2 in ``_bwd_chunk_sums``), dx written once.
All sums are in float32; outputs are written in the input dtype. Chunks start at each image's first row in
the backward too, so gradients are batch invariant bitwise as well.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import EPS

CHUNK = 128  # rows per program in the forward's segmented column sums (the mean)
CHUNK_BLOCK_R = 32
CHUNK_BLOCK_D = 128
ROW_BLOCK_MAX = 8192  # widest row kept in registers at once; wider rows are processed in blocks
BWD_CHUNK = 16  # rows per program of the backward's fused coefficients + column sum (also its parallelism)
BWD_BLOCK_D = 256  # columns per [BWD_CHUNK, BWD_BLOCK_D] tile there
BWD_CHUNK_WARPS = 4
SPLIT_BLOCK_S = 16  # partial results reduced 16 chunks x 128 columns per load
SPLIT_BLOCK_D = 128


FWD_WIDE_ROW = 8192  # the forward's rows get 8 warps from this block width: 4 beat 8 and 16 at D 3584-4096 (H200)
BWD_WIDE_ROW = 4096  # the backward's per-row pass reads two more rows (dy, dL/dg), so 8 warps pay off earlier


def _row_launch(d: int, wide: int) -> tuple[int, int]:
    """(block width, warps) of a one-program-per-row kernel over rows ``d`` wide: rows up to ROW_BLOCK_MAX are read
    in one block; blocks of ``wide`` columns or more get 8 warps."""
    block = min(triton.next_power_of_2(max(d, 1)), ROW_BLOCK_MAX)
    return block, 8 if block >= wide else 4


@triton.jit
def _segment_colsum(
    A,
    P,
    CU,
    D,
    stride_a,
    n_splits,
    CHUNK: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    STEP_R: tl.constexpr,
):
    """Partial means over CHUNK rows of one image, ``sum(A) / n``, written to ``P[image, chunk]``.
    Tiles are accumulated in two dimensions and reduced once, so loads are not serialised by reductions."""
    seg = tl.program_id(0)
    split = tl.program_id(1)
    dblk = tl.program_id(2)
    start = tl.load(CU + seg)
    end = tl.load(CU + seg + 1)
    r_begin = start + split * CHUNK
    r_end = tl.minimum(r_begin + CHUNK, end)
    cols = dblk * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    for r in range(r_begin, r_end, STEP_R):
        rows = r + tl.arange(0, BLOCK_R)
        mask = (rows < r_end)[:, None] & cmask[None, :]
        a = tl.load(A + rows.to(tl.int64)[:, None] * stride_a + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if STEP_R == 2 * BLOCK_R:  # two row tiles in flight per iteration
            rows2 = rows + BLOCK_R
            mask2 = (rows2 < r_end)[:, None] & cmask[None, :]
            a2 = tl.load(A + rows2.to(tl.int64)[:, None] * stride_a + cols[None, :], mask=mask2, other=0.0)
            acc += a + a2.to(tl.float32)
        else:
            acc += a
    total = tl.sum(acc, axis=0) / tl.maximum(end - start, 1).to(tl.float32)
    tl.store(P + (seg.to(tl.int64) * n_splits + split) * D + cols, total, mask=cmask)


@triton.jit
def _sum_splits(base, n_splits, D, cols, cmask, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """Sum over ``n_splits`` rows of a ``[n_splits, D]`` float32 block, ``BLOCK_S`` rows per load."""
    acc = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
    for s0 in range(0, n_splits, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask = (s < n_splits)[:, None] & cmask[None, :]
        acc += tl.load(base + s.to(tl.int64)[:, None] * D + cols[None, :], mask=mask, other=0.0)
    return tl.sum(acc, axis=0)


@triton.jit
def _sum_partials(P, G, D, n_splits, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    seg = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    acc = _sum_splits(P + seg.to(tl.int64) * n_splits * D, n_splits, D, cols, cmask, BLOCK_S, BLOCK_D)
    tl.store(G + seg.to(tl.int64) * D + cols, acc, mask=cmask)


@triton.jit
def _cosine(dot, xx, gg, eps):
    """``(cos, defined, safe denominator)`` of rows with ``<x, g> = dot``, ``|x|^2 = xx`` and ``|g|^2 = gg``."""
    denom = tl.sqrt(xx) * tl.sqrt(gg)
    defined = denom > eps
    safe = tl.maximum(denom, eps)
    return tl.where(defined, dot / safe, 0.0), defined, safe


@triton.jit
def _row_sums(x, g):
    """``<x, g>``, ``|x|^2`` and ``|g|^2`` of one block of a row (the statistics both per-row kernels need)."""
    return tl.sum(x * g, axis=0), tl.sum(x * x, axis=0), tl.sum(g * g, axis=0)


@triton.jit
def _inject_rows(X, Y, G, SEG, D, stride_x, stride_y, lam, eps, BLOCK_D: tl.constexpr, ONE_BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    seg = tl.load(SEG + row).to(tl.int64)
    x_row = X + row * stride_x
    y_row = Y + row * stride_y
    g_row = G + seg * D
    if ONE_BLOCK:
        cols = tl.arange(0, BLOCK_D)
        cmask = cols < D
        x = tl.load(x_row + cols, mask=cmask, other=0.0).to(tl.float32)
        g = tl.load(g_row + cols, mask=cmask, other=0.0)
        dot, xx, gg = _row_sums(x, g)
        cos, _, _ = _cosine(dot, xx, gg, eps)
        coef = lam * (1.0 - cos)
        tl.store(y_row + cols, (x + coef * g).to(Y.dtype.element_ty), mask=cmask)
    else:
        dot = 0.0
        xx = 0.0
        gg = 0.0
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            cmask = cols < D
            x = tl.load(x_row + cols, mask=cmask, other=0.0).to(tl.float32)
            g = tl.load(g_row + cols, mask=cmask, other=0.0)
            block_dot, block_xx, block_gg = _row_sums(x, g)
            dot += block_dot
            xx += block_xx
            gg += block_gg
        cos, _, _ = _cosine(dot, xx, gg, eps)
        coef = lam * (1.0 - cos)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            cmask = cols < D
            x = tl.load(x_row + cols, mask=cmask, other=0.0).to(tl.float32)
            g = tl.load(g_row + cols, mask=cmask, other=0.0)
            tl.store(y_row + cols, (x + coef * g).to(Y.dtype.element_ty), mask=cmask)


@triton.jit
def _bwd_chunk_sums(
    X,
    DY,
    G,
    CU,
    PART,
    GAMMA,
    GRAD_G,
    D,
    stride_x,
    stride_dy,
    n_splits,
    lam,
    eps,
    FINISH: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One program per image and chunk of CHUNK rows: the per-token coefficients and the weighted column sum.

    Pass 1 walks the chunk's rows in ``[CHUNK, BLOCK_D]`` tiles for ``<x_i, g>``, ``|x_i|^2``, ``<dy_i, g>``
    (and ``|g|^2``); pass 2 walks them again (the chunk is still in L2) and stores per column block
    ``sum_i lam w_i dy_i - p_i x_i / (|x_i||g|)``, with ``gamma = sum_i p_i c_i``. FINISH (one chunk per
    image) stores the finished ``dL/dg / n`` instead of a partial. No per-token value leaves the program.
    """
    seg = tl.program_id(0)
    split = tl.program_id(1)
    start = tl.load(CU + seg)
    end = tl.load(CU + seg + 1)
    rows = start + split * CHUNK + tl.arange(0, CHUNK)
    rmask = rows < end
    x_rows = X + rows.to(tl.int64)[:, None] * stride_x
    dy_rows = DY + rows.to(tl.int64)[:, None] * stride_dy
    g_row = G + seg.to(tl.int64) * D
    dot = tl.zeros([CHUNK], dtype=tl.float32)
    xx = tl.zeros([CHUNK], dtype=tl.float32)
    dyg = tl.zeros([CHUNK], dtype=tl.float32)
    gg_cols = tl.zeros([BLOCK_D], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        cmask = cols < D
        mask = rmask[:, None] & cmask[None, :]
        x = tl.load(x_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_row + cols, mask=cmask, other=0.0)
        dot += tl.sum(x * g[None, :], axis=1)
        xx += tl.sum(x * x, axis=1)
        dyg += tl.sum(dy * g[None, :], axis=1)
        gg_cols += g * g
    gg = tl.sum(gg_cols, axis=0)
    cos, defined, safe = _cosine(dot, xx, gg, eps)
    p = lam * dyg
    coef_dy = tl.where(rmask, lam * (1.0 - cos), 0.0)
    coef_x = tl.where(defined & rmask, -p / safe, 0.0)
    gamma = tl.sum(tl.where(defined & rmask, p * cos, 0.0), axis=0)
    slot = seg.to(tl.int64) * n_splits + split
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        cmask = cols < D
        mask = rmask[:, None] & cmask[None, :]
        x = tl.load(x_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        part = tl.sum(coef_dy[:, None] * dy + coef_x[:, None] * x, axis=0)
        if FINISH:
            g = tl.load(g_row + cols, mask=cmask, other=0.0)
            # the same arithmetic as _bwd_finish_grad_g on one partial, so the bits do not depend on the layout
            part += gamma * g / tl.maximum(gg, 1e-30)
            tl.store(GRAD_G + seg.to(tl.int64) * D + cols, part / tl.maximum(end - start, 1).to(tl.float32), mask=cmask)
        else:
            tl.store(PART + slot * D + cols, part, mask=cmask)
    if not FINISH:
        tl.store(GAMMA + slot, gamma)


@triton.jit
def _bwd_finish_grad_g(
    PART, GAMMA, G, CU, GRAD_G, D, n_splits, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, GG_BLOCK: tl.constexpr
):
    """``GRAD_G[seg] = (sum of partials + gamma * g / |g|^2) / n``: the gradient each token gets through g."""
    seg = tl.program_id(0)
    n = tl.load(CU + seg + 1) - tl.load(CU + seg)
    splits = tl.arange(0, BLOCK_S)
    gamma = tl.zeros([BLOCK_S], dtype=tl.float32)
    for s0 in range(0, n_splits, BLOCK_S):
        gamma += tl.load(GAMMA + seg * n_splits + s0 + splits, mask=s0 + splits < n_splits, other=0.0)
    gamma_total = tl.sum(gamma, axis=0)
    g_row = G + seg.to(tl.int64) * D
    gg_cols = tl.zeros([GG_BLOCK], dtype=tl.float32)  # |g|^2 summed exactly as _bwd_chunk_sums sums it
    for d0 in range(0, D, GG_BLOCK):
        all_cols = d0 + tl.arange(0, GG_BLOCK)
        g_all = tl.load(g_row + all_cols, mask=all_cols < D, other=0.0)
        gg_cols += g_all * g_all
    gg = tl.sum(gg_cols, axis=0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    acc = _sum_splits(PART + seg.to(tl.int64) * n_splits * D, n_splits, D, cols, cmask, BLOCK_S, BLOCK_D)
    g = tl.load(g_row + cols, mask=cmask, other=0.0)
    acc += gamma_total * g / tl.maximum(gg, 1e-30)
    tl.store(GRAD_G + seg.to(tl.int64) * D + cols, acc / tl.maximum(n, 1).to(tl.float32), mask=cmask)


@triton.jit
def _bwd_rows(
    X,
    DY,
    DX,
    G,
    GRAD_G,
    SEG,
    D,
    stride_x,
    stride_dy,
    stride_dx,
    lam,
    eps,
    BLOCK_D: tl.constexpr,
    ONE_BLOCK: tl.constexpr,
):
    """One program per token: its coefficients again (from x, dy and g) and
    ``dx = dy - p g / (|x||g|) + p c x / |x|^2 + dL/dg / n``. A row up to BLOCK_D wide is read once."""
    row = tl.program_id(0).to(tl.int64)
    seg = tl.load(SEG + row).to(tl.int64)
    x_row = X + row * stride_x
    dy_row = DY + row * stride_dy
    dx_row = DX + row * stride_dx
    g_row = G + seg * D
    gg_row = GRAD_G + seg * D
    if ONE_BLOCK:
        cols = tl.arange(0, BLOCK_D)
        cmask = cols < D
        x = tl.load(x_row + cols, mask=cmask, other=0.0).to(tl.float32)
        dy = tl.load(dy_row + cols, mask=cmask, other=0.0).to(tl.float32)
        g = tl.load(g_row + cols, mask=cmask, other=0.0)
        dot, xx, gg = _row_sums(x, g)
        dyg = tl.sum(dy * g, axis=0)
    else:
        dot = 0.0
        xx = 0.0
        gg = 0.0
        dyg = 0.0
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            cmask = cols < D
            x = tl.load(x_row + cols, mask=cmask, other=0.0).to(tl.float32)
            dy = tl.load(dy_row + cols, mask=cmask, other=0.0).to(tl.float32)
            g = tl.load(g_row + cols, mask=cmask, other=0.0)
            block_dot, block_xx, block_gg = _row_sums(x, g)
            dot += block_dot
            xx += block_xx
            gg += block_gg
            dyg += tl.sum(dy * g, axis=0)
    cos, defined, safe = _cosine(dot, xx, gg, eps)
    p = lam * dyg
    coef_g = tl.where(defined, -p / safe, 0.0)
    coef_x = tl.where(defined, p * cos / tl.maximum(xx, 1e-30), 0.0)
    if ONE_BLOCK:
        grad_g = tl.load(gg_row + cols, mask=cmask, other=0.0)
        dx = dy + coef_x * x + coef_g * g + grad_g
        tl.store(dx_row + cols, dx.to(DX.dtype.element_ty), mask=cmask)
    else:
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            cmask = cols < D
            x = tl.load(x_row + cols, mask=cmask, other=0.0).to(tl.float32)
            dy = tl.load(dy_row + cols, mask=cmask, other=0.0).to(tl.float32)
            g = tl.load(g_row + cols, mask=cmask, other=0.0)
            grad_g = tl.load(gg_row + cols, mask=cmask, other=0.0)
            dx = dy + coef_x * x + coef_g * g + grad_g
            tl.store(dx_row + cols, dx.to(DX.dtype.element_ty), mask=cmask)


def _partial_means(x, cu_seqlens, max_seqlen):
    """Per image and chunk of CHUNK rows: partial means ``[S, n_splits, D]``."""
    S, D = cu_seqlens.numel() - 1, x.shape[1]
    n_splits = max(triton.cdiv(max_seqlen, CHUNK), 1)
    partials = torch.empty(S, n_splits, D, device=x.device, dtype=torch.float32)
    _segment_colsum[(S, n_splits, triton.cdiv(D, CHUNK_BLOCK_D))](
        x, partials, cu_seqlens, D, x.stride(0), n_splits,
        CHUNK=CHUNK, BLOCK_R=CHUNK_BLOCK_R, BLOCK_D=CHUNK_BLOCK_D, STEP_R=2 * CHUNK_BLOCK_R, num_warps=4,
    )  # fmt: skip
    return partials, n_splits


def forward(x: torch.Tensor, lam: float, cu_seqlens: torch.Tensor, seg_ids: torch.Tensor, max_seqlen: int):
    """Returns ``(y, g)``: the output in x's dtype and the float32 per-image means ``[S, D]``."""
    T, D = x.shape
    S = cu_seqlens.numel() - 1
    y = torch.empty_like(x)
    if T == 0 or D == 0:
        return y, x.new_zeros(S, D, dtype=torch.float32)
    partials, n_splits = _partial_means(x, cu_seqlens, max_seqlen)
    if n_splits == 1:
        g = partials.view(S, D)
    else:
        g = torch.empty(S, D, device=x.device, dtype=torch.float32)
        _sum_partials[(S, triton.cdiv(D, SPLIT_BLOCK_D))](
            partials, g, D, n_splits, BLOCK_S=SPLIT_BLOCK_S, BLOCK_D=SPLIT_BLOCK_D, num_warps=4
        )
    block, num_warps = _row_launch(D, FWD_WIDE_ROW)
    _inject_rows[(T,)](
        x, y, g, seg_ids, D, x.stride(0), y.stride(0), float(lam), EPS,
        BLOCK_D=block, ONE_BLOCK=block >= D, num_warps=num_warps,
    )  # fmt: skip
    return y, g


def backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    g: torch.Tensor,
    lam: float,
    cu_seqlens: torch.Tensor,
    seg_ids: torch.Tensor,
    max_seqlen: int,
) -> torch.Tensor:
    """``dL/dx`` for ``dy = dL/dy``; ``g`` is the forward's float32 means. Two launches when every image has
    at most BWD_CHUNK tokens, else three; no other device work."""
    T, D = x.shape
    S = cu_seqlens.numel() - 1
    dx = torch.empty_like(x)
    if T == 0 or D == 0:
        return dx
    if dy.stride(-1) != 1:
        dy = dy.contiguous()
    n_splits = max(triton.cdiv(max_seqlen, BWD_CHUNK), 1)
    grad_g = torch.empty(S, D, device=x.device, dtype=torch.float32)
    finish = n_splits == 1
    partials = grad_g if finish else torch.empty(S, n_splits, D, device=x.device, dtype=torch.float32)
    gamma = grad_g if finish else torch.empty(S, n_splits, device=x.device, dtype=torch.float32)
    _bwd_chunk_sums[(S, n_splits)](
        x, dy, g, cu_seqlens, partials, gamma, grad_g, D, x.stride(0), dy.stride(0), n_splits, float(lam), EPS,
        FINISH=finish, CHUNK=BWD_CHUNK, BLOCK_D=BWD_BLOCK_D, num_warps=BWD_CHUNK_WARPS,
    )  # fmt: skip
    if not finish:
        _bwd_finish_grad_g[(S, triton.cdiv(D, SPLIT_BLOCK_D))](
            partials, gamma, g, cu_seqlens, grad_g, D, n_splits,
            BLOCK_S=SPLIT_BLOCK_S, BLOCK_D=SPLIT_BLOCK_D, GG_BLOCK=BWD_BLOCK_D, num_warps=4,
        )  # fmt: skip
    block, num_warps = _row_launch(D, BWD_WIDE_ROW)
    _bwd_rows[(T,)](
        x, dy, dx, g, grad_g, seg_ids, D, x.stride(0), dy.stride(0), dx.stride(0), float(lam), EPS,
        BLOCK_D=block, ONE_BLOCK=block >= D, num_warps=num_warps,
    )  # fmt: skip
    return dx
