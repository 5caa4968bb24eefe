"""The AGCI op: input checks, implementation choice and the torch custom op around the Triton kernels.

``global_context_broadcast`` is the public entry point. The Triton path is registered as the custom
op ``torch.ops.agci.global_context_broadcast`` (with its backward as a second op), so that
``torch.compile`` sees one node; the reference path is plain PyTorch that autograd and Inductor see through.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import os
from collections.abc import Sequence

import torch

from ..configs import validate_lambda
from . import reference

IMPL_ENV = "AGCI_IMPL"
IMPLS = ("auto", "reference", "triton")
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

__all__ = ["global_context_broadcast", "triton_available", "resolve_impl", "IMPL_ENV", "IMPLS"]


_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available(device: torch.device | str | None = None) -> bool:
    """True when the Triton kernels can run on ``device``: CUDA with Triton installed, or any device
    under ``TRITON_INTERPRET=1``."""
    if not _TRITON_INSTALLED:
        return False
    device = torch.device(device) if device is not None else None
    if _interpreting():
        return True
    return device is not None and device.type == "cuda"


def resolve_impl(impl: str, x: torch.Tensor) -> str:
    """Turn ``impl`` ("auto", "reference", "triton") into the implementation that will run on ``x``.

    ``AGCI_IMPL`` in the environment replaces "auto". "auto" picks Triton for CUDA tensors of a
    dtype the kernels support when Triton is installed, otherwise the reference."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        forced = os.environ.get(IMPL_ENV, "auto").strip().lower() or "auto"
        if forced not in IMPLS:
            raise ValueError(f"{IMPL_ENV} must be one of {IMPLS}, got {forced!r}; unset it to let agci choose")
        impl = forced
    if impl == "auto":
        use_triton = x.is_cuda and x.dtype in TRITON_DTYPES and triton_available(x.device)
        return "triton" if use_triton else "reference"
    if impl == "triton":
        if not _TRITON_INSTALLED:
            raise RuntimeError("impl='triton' needs Triton: pip install 'agci[triton]', or use impl='reference'")
        if not triton_available(x.device):
            raise RuntimeError(
                f"impl='triton' needs a CUDA tensor (got one on {x.device}); set TRITON_INTERPRET=1 to run the "
                "kernels on CPU for testing, or use impl='reference'"
            )
        if x.dtype not in TRITON_DTYPES:
            raise TypeError(
                f"the Triton kernels take {', '.join(map(str, TRITON_DTYPES))}, got {x.dtype}; use impl='reference'"
            )
    return impl


def _check_tensor(x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of visual tokens, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor (visual token features), got dtype {x.dtype}")
    if x.ndim not in (2, 3):
        raise ValueError(
            f"x must be [N, D] (one image), [B, N, D] (B images of N tokens) or packed [T, D] with seqlens; "
            f"got shape {tuple(x.shape)}"
        )
    return x


def _check_seqlens(seqlens: Sequence[int] | torch.Tensor, total: int) -> list[int]:
    if isinstance(seqlens, torch.Tensor):
        if seqlens.is_floating_point() or seqlens.is_complex() or seqlens.dtype == torch.bool or seqlens.ndim != 1:
            raise TypeError(
                f"seqlens must be a 1-D integer tensor or a list of ints, got {seqlens.dtype} {tuple(seqlens.shape)}"
            )
        values = seqlens.tolist()
    else:
        values = list(seqlens)
        if not all(type(v) is int for v in values):  # slow path: numpy ints and other integer types
            for v in values:
                if isinstance(v, bool) or not hasattr(v, "__index__") or isinstance(v, torch.Tensor):
                    raise TypeError(f"seqlens must hold integer token counts, got {v!r}")
            values = [v.__index__() for v in values]
    if min(values, default=0) < 0:
        raise ValueError(f"seqlens must be token counts >= 0, got {values}")
    if sum(values) != total:
        raise ValueError(
            f"seqlens must sum to the number of tokens T={total} (x is packed [T, D]); they sum to {sum(values)}"
        )
    return values


def global_context_broadcast(
    x: torch.Tensor,
    lam: float,
    seqlens: Sequence[int] | torch.Tensor | None = None,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """Adaptive Global Context Injection on visual tokens.

    For each image with tokens ``X`` (``[n, D]``): ``g = mean(X)``, ``w_i = 1 - cos(X_i, g)``,
    ``Y_i = X_i + lam * w_i * g``. Each image gets its own ``g``.

    Args:
        x: ``[N, D]`` (one image), ``[B, N, D]`` (B images of N tokens) or packed ``[T, D]`` with
            ``seqlens``. Any floating dtype; sums are taken in float32 (float64 for float64 input).
        lam: ``global_context_broadcast_lambda``, a finite float >= 0; 0 returns a copy of ``x``.
        seqlens: per-image token counts of a packed ``[T, D]`` input (list or integer tensor), like
            flash-attn's varlen API. A tensor is read on the host (one device sync).
        impl: "auto" (Triton for CUDA tensors when available, else the reference), "reference" or
            "triton". ``AGCI_IMPL`` in the environment replaces "auto".

    Returns:
        A new tensor of ``x``'s shape and dtype.
    """
    lam = validate_lambda(lam, name="lam")
    x = _check_tensor(x)
    if x.ndim == 3 and seqlens is not None:
        raise ValueError("seqlens goes with a packed [T, D] input; a [B, N, D] input already gives N tokens per image")
    lengths = _check_seqlens(seqlens, x.shape[0]) if seqlens is not None else None
    if lam == 0.0 or x.numel() == 0:
        return x.clone()
    impl = resolve_impl(impl, x)

    if impl == "reference":
        if x.ndim == 3:
            return reference.broadcast_uniform(x, lam)
        if lengths is None or (len(set(lengths)) == 1 and lengths[0] > 0):
            # Equal lengths: a [B, N, D] view needs no gather (and avoids an Inductor CPU bug with
            # index_add over one segment in torch 2.13).
            n = lengths[0] if lengths else x.shape[0]
            return reference.broadcast_uniform(x.view(-1, n, x.shape[-1]), lam).view(x.shape)
        counts = torch.tensor(lengths, device=x.device, dtype=torch.long)
        seg_ids = torch.repeat_interleave(torch.arange(len(lengths), device=x.device), counts, output_size=x.shape[0])
        return reference.broadcast_packed(x, lam, seg_ids, counts)

    if lengths is None:
        lengths = [x.shape[1]] * x.shape[0] if x.ndim == 3 else [x.shape[0]]
    # Dynamo traces through the cache, so under torch.compile call the function itself.
    layout = _segment_layout.__wrapped__ if torch.compiler.is_compiling() else _segment_layout
    cu_seqlens, seg_ids = layout(tuple(lengths), x.device)
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    from . import custom_ops

    return custom_ops.broadcast(x2, lam, cu_seqlens, seg_ids, max(lengths, default=0)).view(x.shape)


@functools.lru_cache(maxsize=64)
def _segment_layout(lengths: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``cu_seqlens`` (int32, S+1) and the image index of every token (int32, T) on ``device``.

    Cached: a model called on images of the same sizes pays for the host-to-device copy once."""
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    seg_ids = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), cu.diff())
    return cu.to(device, non_blocking=True), seg_ids.to(device, non_blocking=True)
