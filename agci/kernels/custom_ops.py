"""The Triton kernels behind autograd: ``torch.ops.agci.global_context_broadcast`` (and its backward)
for torch.compile, which then sees one node, and an ``autograd.Function`` with the same kernels for
eager calls, which skips the custom-op dispatch cost.

The custom ops are registered once, on import. The forward returns ``(y, g)``; ``g`` (float32
per-image means) is kept for the backward and is not differentiable.
"""

from __future__ import annotations

import torch

from . import triton_agci


@torch.library.custom_op("agci::global_context_broadcast", mutates_args=())
def global_context_broadcast_op(
    x: torch.Tensor, lam: float, cu_seqlens: torch.Tensor, seg_ids: torch.Tensor, max_seqlen: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return triton_agci.forward(x, lam, cu_seqlens, seg_ids, max_seqlen)


@global_context_broadcast_op.register_fake
def _(x, lam, cu_seqlens, seg_ids, max_seqlen):
    return torch.empty_like(x), x.new_empty(cu_seqlens.shape[0] - 1, x.shape[1], dtype=torch.float32)


@torch.library.custom_op("agci::global_context_broadcast_backward", mutates_args=())
def global_context_broadcast_backward_op(
    dy: torch.Tensor,
    x: torch.Tensor,
    g: torch.Tensor,
    lam: float,
    cu_seqlens: torch.Tensor,
    seg_ids: torch.Tensor,
    max_seqlen: int,
) -> torch.Tensor:
    return triton_agci.backward(dy, x, g, lam, cu_seqlens, seg_ids, max_seqlen)


@global_context_broadcast_backward_op.register_fake
def _(dy, x, g, lam, cu_seqlens, seg_ids, max_seqlen):
    return torch.empty_like(x)


def _save(ctx, inputs, g) -> None:
    """What the backward needs, for both the custom op and the autograd.Function."""
    x, lam, cu_seqlens, seg_ids, max_seqlen = inputs
    ctx.save_for_backward(x, g, cu_seqlens, seg_ids)
    ctx.lam = lam
    ctx.max_seqlen = max_seqlen


def _backward_args(ctx, dy) -> tuple:
    x, g, cu_seqlens, seg_ids = ctx.saved_tensors
    return dy, x, g, ctx.lam, cu_seqlens, seg_ids, ctx.max_seqlen


def _setup_context(ctx, inputs, output):
    _save(ctx, inputs, output[1])
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, dy, _dg):
    return global_context_broadcast_backward_op(*_backward_args(ctx, dy)), None, None, None, None


global_context_broadcast_op.register_autograd(_backward, setup_context=_setup_context)


class _GlobalContextBroadcast(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lam, cu_seqlens, seg_ids, max_seqlen):
        y, g = triton_agci.forward(x, lam, cu_seqlens, seg_ids, max_seqlen)
        _save(ctx, (x, lam, cu_seqlens, seg_ids, max_seqlen), g)
        return y

    @staticmethod
    def backward(ctx, dy):
        return triton_agci.backward(*_backward_args(ctx, dy)), None, None, None, None


def broadcast(x: torch.Tensor, lam: float, cu_seqlens: torch.Tensor, seg_ids: torch.Tensor, max_seqlen: int):
    """AGCI on packed ``x`` with the Triton kernels: the custom op under torch.compile, else autograd.Function."""
    if torch.compiler.is_compiling():
        return global_context_broadcast_op(x, lam, cu_seqlens, seg_ids, max_seqlen)[0]
    return _GlobalContextBroadcast.apply(x, lam, cu_seqlens, seg_ids, max_seqlen)
