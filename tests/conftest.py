import os

import pytest
import torch

# Without a GPU, the Triton kernels run under the interpreter on CPU tensors. It is read when the
# kernels are defined, so it must be set before agci.kernels.triton_agci is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

EPS = 1e-8


def per_image_formula(x: torch.Tensor, lam: float, lengths: list[int]) -> torch.Tensor:
    """The method written out image by image in float64: the oracle for every implementation."""
    outs = []
    for tokens in x.double().split(lengths):
        if tokens.shape[0] == 0:
            outs.append(tokens)
            continue
        g = tokens.mean(0)
        denom = tokens.norm(dim=1) * g.norm()
        cos = torch.where(denom > EPS, (tokens @ g) / denom.clamp_min(EPS), torch.zeros_like(denom))
        outs.append(tokens + lam * (1 - cos)[:, None] * g)
    return torch.cat(outs)


@pytest.fixture
def clean_patches():
    """No class-level agci patch before or after the test (``agci.unpatch()`` both ways)."""
    import agci

    agci.unpatch()
    yield
    agci.unpatch()


@pytest.fixture
def device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
