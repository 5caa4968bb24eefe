"""Pure-PyTorch AGCI: the oracle for the kernels and the CPU path.

For the tokens ``X`` of one image: ``g = mean(X)``, ``w_i = 1 - cos(X_i, g)`` and
``Y_i = X_i + lam * w_i * g``. Mean, dot products and norms are computed in float32 (float64 for
float64 inputs). Where ``|X_i| * |g| <= EPS`` the cosine is taken as 0 (weight 1) and no gradient
flows through it, so zero tokens and zero means never give NaN.
"""

from __future__ import annotations

import torch

EPS = 1e-8


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _inject(xf: torch.Tensor, g: torch.Tensor, g_norm: torch.Tensor, lam: float) -> torch.Tensor:
    """``xf + lam * (1 - cos(xf, g)) * g`` row-wise; ``g`` and ``g_norm`` broadcast against ``xf``."""
    dot = (xf * g).sum(-1)
    denom = torch.linalg.vector_norm(xf, dim=-1) * g_norm
    defined = denom > EPS
    cos = torch.where(defined, dot / denom.clamp_min(EPS), torch.zeros_like(dot))
    return xf + lam * (1.0 - cos).unsqueeze(-1) * g


def broadcast_uniform(x: torch.Tensor, lam: float) -> torch.Tensor:
    """AGCI on ``[B, N, D]``: each of the B images has N tokens."""
    xf = x.to(compute_dtype(x.dtype))
    g = xf.mean(dim=1, keepdim=True)
    g_norm = torch.linalg.vector_norm(g, dim=-1)
    return _inject(xf, g, g_norm, lam).to(x.dtype)


def broadcast_packed(x: torch.Tensor, lam: float, seg_ids: torch.Tensor, seqlens: torch.Tensor) -> torch.Tensor:
    """AGCI on packed ``[T, D]`` tokens; ``seg_ids[t]`` is the image of token t, ``seqlens`` the counts."""
    xf = x.to(compute_dtype(x.dtype))
    sums = xf.new_zeros(seqlens.shape[0], x.shape[-1]).index_add_(0, seg_ids, xf)
    g = sums / seqlens.clamp_min(1).to(xf.dtype).unsqueeze(-1)
    g_norm = torch.linalg.vector_norm(g, dim=-1)
    return _inject(xf, g[seg_ids], g_norm[seg_ids], lam).to(x.dtype)


def broadcast_eager_formula(x: torch.Tensor, lam: float) -> torch.Tensor:
    """The reference repository's formula as written: one mean over all rows of ``x`` per call,
    ``F.cosine_similarity`` in the input dtype. Kept for benchmarks and for scope ``"reference"`` of the
    families whose reference code mixes the batch."""
    g = x.mean(dim=0, keepdim=True)
    w = 1 - torch.nn.functional.cosine_similarity(x, g, dim=-1)
    return x + lam * w.unsqueeze(-1) * g
