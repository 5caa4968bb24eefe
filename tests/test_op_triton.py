"""The fused Triton kernels against the reference and the per-image formula.

Without CUDA they run under TRITON_INTERPRET=1 on CPU tensors at small odd shapes (conftest sets
it); on a GPU the same tests run compiled, and test_op_gpu.py adds the real sizes.
"""

import pytest
import torch
from conftest import per_image_formula, relative_error

import agci

pytestmark = pytest.mark.interpret

# D not a power of two, one-token images, an empty image, several chunks per image
# (MEAN_CHUNK=64, BWD_CHUNK=32) and a row wider than one block (ROW_BLOCK_MAX is patched below).
CASES = [([1, 5, 3], 7), ([1, 1, 1, 1], 3), ([70, 1, 0, 33], 19), ([130], 5), ([300, 2], 6)]


def _x(lengths, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(lengths), d, generator=g) + 0.2
    if sum(lengths) > 2:
        x[2] = 0.0  # a zero token
    return x.to(device=device, dtype=dtype)


@pytest.mark.parametrize("lengths,d", CASES)
def test_forward_and_backward_match_reference_fp32(lengths, d, device):
    x = _x(lengths, d, torch.float32, device)
    dy = torch.randn_like(x)
    outs, grads = {}, {}
    for impl in ("reference", "triton"):
        xi = x.clone().requires_grad_()
        y = agci.global_context_broadcast(xi, 0.75, lengths, impl=impl)
        y.backward(dy)
        outs[impl], grads[impl] = y.detach(), xi.grad
    torch.testing.assert_close(outs["triton"], outs["reference"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads["triton"], grads["reference"], rtol=1e-4, atol=1e-5)
    x64 = x.double().requires_grad_()
    per_image_formula(x64, 0.75, lengths).backward(dy.double())
    torch.testing.assert_close(grads["triton"].double(), x64.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype,fwd_tol,bwd_tol", [(torch.bfloat16, 1e-2, 2e-2), (torch.float16, 2e-3, 4e-3)])
def test_low_precision_against_formula(dtype, fwd_tol, bwd_tol, device):
    lengths = [3, 40, 1]
    x = _x(lengths, 33, dtype, device)
    dy = torch.randn(x.shape, device=device).to(dtype)
    xi = x.clone().requires_grad_()
    y = agci.global_context_broadcast(xi, 1.0, lengths, impl="triton")
    y.backward(dy)
    assert y.dtype == dtype and xi.grad.dtype == dtype
    x64 = x.double().requires_grad_()
    y64 = per_image_formula(x64, 1.0, lengths)
    y64.backward(dy.double())
    assert relative_error(y, y64) < fwd_tol
    assert relative_error(xi.grad, x64.grad) < bwd_tol


def test_batched_input_and_wide_rows(device, monkeypatch):
    from agci.kernels import triton_agci

    monkeypatch.setattr(triton_agci, "ROW_BLOCK_MAX", 8)  # force the multi-block row path on D=21
    x = _x([5, 5, 5], 21, torch.float32, device).view(3, 5, 21).requires_grad_()
    y = agci.global_context_broadcast(x, 0.5, impl="triton")
    y.sum().backward()
    x64 = x.detach().double().requires_grad_()
    ref = per_image_formula(x64.view(15, 21), 0.5, [5, 5, 5])
    ref.sum().backward()
    torch.testing.assert_close(y.detach().double().view(15, 21), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)


def test_other_images_do_not_change_an_images_output_bitwise(device):
    # Chunks start at each image's first row, so the sums of an image do not depend on its neighbours.
    lengths = [70, 3, 9]
    x = _x(lengths, 13, torch.float32, device)
    xs = list(x.split(lengths))
    full = agci.global_context_broadcast(x, 0.4, lengths, impl="triton").split(lengths)
    alone = agci.global_context_broadcast(xs[0], 0.4, impl="triton")
    swapped = agci.global_context_broadcast(torch.cat([xs[2], xs[0]]), 0.4, [9, 70], impl="triton").split([9, 70])
    assert torch.equal(alone, full[0])
    assert torch.equal(swapped[1], full[0]) and torch.equal(swapped[0], full[2])


def test_zero_mean_image_is_left_unchanged(device):
    x = torch.tensor([[1.0, -2.0], [-1.0, 2.0], [3.0, 1.0]], device=device)
    y = agci.global_context_broadcast(x, 0.9, [2, 1], impl="triton")
    assert torch.equal(y[:2], x[:2])
    torch.testing.assert_close(y[2], x[2] * (1 + 0.9 * 0.0))  # one token: cos(x, x) = 1, w = 0


def test_non_contiguous_input(device):
    base = _x([8], 12, torch.float32, device)
    x = base[:, ::2]  # stride 2 in the last dimension
    torch.testing.assert_close(
        agci.global_context_broadcast(x, 0.5, impl="triton"),
        agci.global_context_broadcast(x.contiguous(), 0.5, impl="reference"),
        rtol=1e-5,
        atol=1e-5,
    )


def test_float64_is_refused_by_triton_and_served_by_auto(device):
    x = torch.randn(4, 3, dtype=torch.float64, device=device)
    with pytest.raises(TypeError, match="impl='reference'"):
        agci.global_context_broadcast(x, 0.5, impl="triton")
    assert agci.global_context_broadcast(x, 0.5).dtype == torch.float64
