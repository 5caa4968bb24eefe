"""The forward's Triton kernels (launched by :mod:`agci.kernels.triton_agci`, whose docstring describes the
layout), and the jit helpers the backward's kernels share: the split sums, the row statistics and the cosine."""

from __future__ import annotations

import triton
import triton.language as tl


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
