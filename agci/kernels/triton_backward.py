"""The backward's Triton kernels (launched by :mod:`agci.kernels.triton_agci`, whose docstring gives the
gradient and the layout). They share the forward's row statistics (``_row_sums``), cosine and split sums."""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_forward import _cosine, _row_sums, _sum_splits


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
