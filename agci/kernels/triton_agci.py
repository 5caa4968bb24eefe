"""Fused Triton kernels for AGCI on packed tokens ``[T, D]`` split into images by ``cu_seqlens``.

Forward (about 2 reads and 1 write of ``T*D``):
  1. ``_segment_colsum`` (unweighted): grid (image, row chunk, column block); each program sums CHUNK
     rows of one image and stores ``sum / n``. Chunks are laid from each image's first row, so an
     image's result does not depend on the other images in the call (bitwise batch invariance).
  2. ``_sum_partials``: adds the partial means of each image (skipped when one chunk suffices).
  3. ``_inject_rows``: one program per token row: dot, norms, weight, and ``x + lam * w * g``.

Backward, with ``c_i = <x_i, g> / (|x_i||g|)``, ``w_i = 1 - c_i`` and ``p_i = lam <dy_i, g>``:
  ``dL/dg = sum_i (lam w_i dy_i - p_i x_i / (|x_i||g|)) + (sum_i p_i c_i) g / |g|^2``
  ``dx_i = dy_i - p_i g / (|x_i||g|) + p_i c_i x_i / |x_i|^2 + (dL/dg) / n``
  (the two middle terms vanish where the cosine is undefined, as in the reference).
  1. ``_bwd_row_coefs``: one program per row: the per-row weights above.
  2. ``_segment_colsum`` (weighted): partial ``dL/dg`` per chunk, and ``sum p_i c_i``.
  3. ``_bwd_finish_grad_g``: per image ``dL/dg / n``.
  4. ``_bwd_rows``: ``dx`` tile by tile.
  About 4 reads of x or dy and 1 write; each kernel is a simple streaming pattern.
All sums are in float32; outputs are written in the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import EPS

CHUNK = 128  # rows per program in the segmented column sums (forward mean, backward dL/dg)
CHUNK_BLOCK_R = 32
CHUNK_BLOCK_D = 128
ROW_BLOCK_MAX = 8192  # widest row kept in registers at once; wider rows are processed in blocks
TILE_M = 8
TILE_D = 256
SPLIT_BLOCK_S = 16  # partial results reduced 16 chunks x 128 columns per load
SPLIT_BLOCK_D = 128


def _row_launch(d: int) -> tuple[int, int]:
    block = min(triton.next_power_of_2(max(d, 1)), ROW_BLOCK_MAX)
    num_warps = 8 if block >= 8192 else 4  # 4 beat 8 and 16 at D 3584-4096 on an H200
    return block, num_warps


@triton.jit
def _segment_colsum(
    A,
    WA,
    B,
    WB,
    PC,
    GAMMA,
    P,
    CU,
    D,
    stride_a,
    stride_b,
    n_splits,
    WEIGHTED: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    STEP_R: tl.constexpr,
):
    """Column sums over CHUNK rows of one image, written to ``P[image, chunk]``.

    Unweighted: ``sum(A) / n`` (partial means). Weighted: ``sum(WA * A + WB * B)`` with per-row weights,
    and the first column block also stores the chunk's sum of the per-row scalars ``PC`` in ``GAMMA``.
    Tiles are accumulated in two dimensions and reduced once, so loads are not serialised by reductions.
    """
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
        rmask = rows < r_end
        mask = rmask[:, None] & cmask[None, :]
        rows64 = rows.to(tl.int64)[:, None]
        a = tl.load(A + rows64 * stride_a + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if WEIGHTED:
            b = tl.load(B + rows64 * stride_b + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            wa = tl.load(WA + rows, mask=rmask, other=0.0)
            wb = tl.load(WB + rows, mask=rmask, other=0.0)
            acc += wa[:, None] * a + wb[:, None] * b
        elif STEP_R == 2 * BLOCK_R:  # two row tiles in flight per iteration, as in the weighted case
            rows2 = rows + BLOCK_R
            mask2 = (rows2 < r_end)[:, None] & cmask[None, :]
            a2 = tl.load(A + rows2.to(tl.int64)[:, None] * stride_a + cols[None, :], mask=mask2, other=0.0)
            acc += a + a2.to(tl.float32)
        else:
            acc += a
    total = tl.sum(acc, axis=0)
    slot = seg.to(tl.int64) * n_splits + split
    if WEIGHTED:
        if dblk == 0:
            rs = r_begin + tl.arange(0, CHUNK)
            tl.store(GAMMA + slot, tl.sum(tl.load(PC + rs, mask=rs < r_end, other=0.0), axis=0))
    else:
        total = total / tl.maximum(end - start, 1).to(tl.float32)
    tl.store(P + slot * D + cols, total, mask=cmask)


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
        dot = tl.sum(x * g, axis=0)
        xx = tl.sum(x * x, axis=0)
        gg = tl.sum(g * g, axis=0)
        denom = tl.sqrt(xx) * tl.sqrt(gg)
        cos = tl.where(denom > eps, dot / tl.maximum(denom, eps), 0.0)
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
            dot += tl.sum(x * g, axis=0)
            xx += tl.sum(x * x, axis=0)
            gg += tl.sum(g * g, axis=0)
        denom = tl.sqrt(xx) * tl.sqrt(gg)
        cos = tl.where(denom > eps, dot / tl.maximum(denom, eps), 0.0)
        coef = lam * (1.0 - cos)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            cmask = cols < D
            x = tl.load(x_row + cols, mask=cmask, other=0.0).to(tl.float32)
            g = tl.load(g_row + cols, mask=cmask, other=0.0)
            tl.store(y_row + cols, (x + coef * g).to(Y.dtype.element_ty), mask=cmask)


@triton.jit
def _bwd_row_coefs(
    X, DY, G, GG, SEG, COEF_DY, COEF_G, COEF_X, PC, D, stride_x, stride_dy, lam, eps, BLOCK_D: tl.constexpr
):
    """Per token: the weights of dy and x in dL/dg, the weights of g and x in dx, and p*c (for gamma)."""
    row = tl.program_id(0).to(tl.int64)
    seg = tl.load(SEG + row).to(tl.int64)
    dot = 0.0
    xx = 0.0
    dyg = 0.0
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        cmask = cols < D
        x = tl.load(X + row * stride_x + cols, mask=cmask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride_dy + cols, mask=cmask, other=0.0).to(tl.float32)
        g = tl.load(G + seg * D + cols, mask=cmask, other=0.0)
        dot += tl.sum(x * g, axis=0)
        xx += tl.sum(x * x, axis=0)
        dyg += tl.sum(dy * g, axis=0)
    denom = tl.sqrt(xx) * tl.sqrt(tl.load(GG + seg))
    defined = denom > eps
    safe_denom = tl.maximum(denom, eps)
    cos = tl.where(defined, dot / safe_denom, 0.0)
    p = lam * dyg
    tl.store(COEF_DY + row, lam * (1.0 - cos))
    tl.store(COEF_G + row, tl.where(defined, -p / safe_denom, 0.0))
    tl.store(COEF_X + row, tl.where(defined, p * cos / tl.maximum(xx, 1e-30), 0.0))
    tl.store(PC + row, tl.where(defined, p * cos, 0.0))


@triton.jit
def _bwd_finish_grad_g(PART, GAMMA, G, GG, CU, GRAD_G, D, n_splits, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """``GRAD_G[seg] = (sum of partials + gamma * g / |g|^2) / n``: the gradient each token gets through g."""
    seg = tl.program_id(0)
    n = tl.load(CU + seg + 1) - tl.load(CU + seg)
    splits = tl.arange(0, BLOCK_S)
    gamma = tl.zeros([BLOCK_S], dtype=tl.float32)
    for s0 in range(0, n_splits, BLOCK_S):
        gamma += tl.load(GAMMA + seg * n_splits + s0 + splits, mask=s0 + splits < n_splits, other=0.0)
    gamma_total = tl.sum(gamma, axis=0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    acc = _sum_splits(PART + seg.to(tl.int64) * n_splits * D, n_splits, D, cols, cmask, BLOCK_S, BLOCK_D)
    g = tl.load(G + seg.to(tl.int64) * D + cols, mask=cmask, other=0.0)
    acc += gamma_total * g / tl.maximum(tl.load(GG + seg), 1e-30)
    tl.store(GRAD_G + seg.to(tl.int64) * D + cols, acc / tl.maximum(n, 1).to(tl.float32), mask=cmask)


@triton.jit
def _bwd_rows(
    X,
    DY,
    DX,
    G,
    GRAD_G,
    SEG,
    COEF_G,
    COEF_X,
    T,
    D,
    stride_x,
    stride_dy,
    stride_dx,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < T
    mask = rmask[:, None] & (cols < D)[None, :]
    rows64 = rows.to(tl.int64)
    seg = tl.load(SEG + rows, mask=rmask, other=0).to(tl.int64)
    coef_g = tl.load(COEF_G + rows, mask=rmask, other=0.0)
    coef_x = tl.load(COEF_X + rows, mask=rmask, other=0.0)
    g_off = seg[:, None] * D + cols[None, :]
    g = tl.load(G + g_off, mask=mask, other=0.0)
    grad_g = tl.load(GRAD_G + g_off, mask=mask, other=0.0)
    x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + rows64[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    dx = dy + coef_x[:, None] * x + coef_g[:, None] * g + grad_g
    tl.store(DX + rows64[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)


def _column_sums(a, wa, b, wb, pc, cu_seqlens, max_seqlen, weighted):
    """Per image and chunk of CHUNK rows: partial column sums ``[S, n_splits, D]`` (and per-chunk gamma)."""
    S, D = cu_seqlens.numel() - 1, a.shape[1]
    n_splits = max(triton.cdiv(max_seqlen, CHUNK), 1)
    partials = torch.empty(S, n_splits, D, device=a.device, dtype=torch.float32)
    gamma = torch.empty(S, n_splits, device=a.device, dtype=torch.float32) if weighted else partials
    _segment_colsum[(S, n_splits, triton.cdiv(D, CHUNK_BLOCK_D))](
        a, wa, b, wb, pc, gamma, partials, cu_seqlens, D, a.stride(0), b.stride(0), n_splits,
        WEIGHTED=weighted, CHUNK=CHUNK, BLOCK_R=CHUNK_BLOCK_R, BLOCK_D=CHUNK_BLOCK_D,
        STEP_R=CHUNK_BLOCK_R if weighted else 2 * CHUNK_BLOCK_R, num_warps=4,
    )  # fmt: skip
    return partials, gamma, n_splits


def forward(x: torch.Tensor, lam: float, cu_seqlens: torch.Tensor, seg_ids: torch.Tensor, max_seqlen: int):
    """Returns ``(y, g)``: the output in x's dtype and the float32 per-image means ``[S, D]``."""
    T, D = x.shape
    S = cu_seqlens.numel() - 1
    y = torch.empty_like(x)
    if T == 0 or D == 0:
        return y, x.new_zeros(S, D, dtype=torch.float32)
    partials, _, n_splits = _column_sums(x, x, x, x, x, cu_seqlens, max_seqlen, weighted=False)
    if n_splits == 1:
        g = partials.view(S, D)
    else:
        g = torch.empty(S, D, device=x.device, dtype=torch.float32)
        _sum_partials[(S, triton.cdiv(D, SPLIT_BLOCK_D))](
            partials, g, D, n_splits, BLOCK_S=SPLIT_BLOCK_S, BLOCK_D=SPLIT_BLOCK_D, num_warps=4
        )
    block, num_warps = _row_launch(D)
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
    T, D = x.shape
    S = cu_seqlens.numel() - 1
    dx = torch.empty_like(x)
    if T == 0 or D == 0:
        return dx
    if dy.stride(-1) != 1:
        dy = dy.contiguous()
    g_norm_sq = g.square().sum(-1)
    coef_dy, coef_g, coef_x, pc = torch.empty(4, T, device=x.device, dtype=torch.float32).unbind(0)
    block, num_warps = _row_launch(D)
    _bwd_row_coefs[(T,)](
        x, dy, g, g_norm_sq, seg_ids, coef_dy, coef_g, coef_x, pc, D, x.stride(0), dy.stride(0), float(lam), EPS,
        BLOCK_D=block, num_warps=num_warps,
    )  # fmt: skip
    partials, gamma, n_splits = _column_sums(dy, coef_dy, x, coef_g, pc, cu_seqlens, max_seqlen, weighted=True)
    grad_g = torch.empty(S, D, device=x.device, dtype=torch.float32)
    _bwd_finish_grad_g[(S, triton.cdiv(D, SPLIT_BLOCK_D))](
        partials, gamma, g, g_norm_sq, cu_seqlens, grad_g, D, n_splits,
        BLOCK_S=SPLIT_BLOCK_S, BLOCK_D=SPLIT_BLOCK_D, num_warps=4,
    )  # fmt: skip
    _bwd_rows[(triton.cdiv(T, TILE_M), triton.cdiv(D, TILE_D))](
        x, dy, dx, g, grad_g, seg_ids, coef_g, coef_x, T, D, x.stride(0), dy.stride(0), dx.stride(0),
        BLOCK_M=TILE_M, BLOCK_D=TILE_D, num_warps=4,
    )  # fmt: skip
    return dx
