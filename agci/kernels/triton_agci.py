"""Fused Triton kernels for AGCI on packed tokens ``[T, D]`` split into images by ``cu_seqlens``: their launches
here (block sizes, grids, warps), the kernels in :mod:`.triton_forward` and :mod:`.triton_backward`.

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

from .reference import EPS
from .triton_backward import _bwd_chunk_sums, _bwd_finish_grad_g, _bwd_rows
from .triton_forward import _inject_rows, _segment_colsum, _sum_partials

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
