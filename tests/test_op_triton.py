"""The fused Triton kernels against the reference and the per-image formula.

Without CUDA they run under TRITON_INTERPRET=1 on CPU tensors at small odd shapes (conftest sets
it); on a GPU the same tests run compiled, and test_op_gpu.py adds the real sizes.
"""

import pytest
import torch
from conftest import per_image_formula, relative_error

import agci

pytestmark = pytest.mark.interpret

# D not a power of two, one-token images, an empty image, several chunks per image (CHUNK=128 rows in the
# forward's mean, BWD_CHUNK=16 in the backward's sums) and a row wider than one block (ROW_BLOCK_MAX is
# patched below).
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


def _grads(x, lam, lengths, dy, impl):
    xi = x.clone().requires_grad_()
    y = agci.global_context_broadcast(xi, lam, lengths, impl=impl)
    y.backward(dy)
    return y.detach(), xi.grad


@pytest.mark.parametrize("chunk,block_d", [(16, 256), (4, 8), (2, 4), (8, 32)])
def test_backward_layouts_give_the_exact_gradient(chunk, block_d, device, monkeypatch):
    # Chunks of the fused coefficient + column-sum kernel smaller than the images, column blocks narrower than
    # D with a ragged last block, one-token and empty images, a zero token: against float64 autograd.
    from agci.kernels import triton_agci

    monkeypatch.setattr(triton_agci, "BWD_CHUNK", chunk)
    monkeypatch.setattr(triton_agci, "BWD_BLOCK_D", block_d)
    lengths = [9, 1, 0, 5, 17]
    x = _x(lengths, 19, torch.float32, device)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device)
    _, grad = _grads(x, 0.8, lengths, dy, "triton")
    x64 = x.double().requires_grad_()
    per_image_formula(x64, 0.8, lengths).backward(dy.double())
    torch.testing.assert_close(grad.double(), x64.grad, rtol=1e-4, atol=1e-5)


def test_directional_derivative_matches_finite_differences(device):
    # gradcheck in the kernels' own precision: <dL/dx, v> against central differences of <dy, f(x)>.
    lengths = [6, 20, 1]
    x = _x(lengths, 11, torch.float32, device)
    x[2] = 0.5  # smooth there: at a zero token the cosine jumps from "undefined, 0" to a value
    gen = torch.Generator().manual_seed(3)
    dy, v = (torch.randn(x.shape, generator=gen).to(device) for _ in range(2))
    _, grad = _grads(x, 0.6, lengths, dy, "triton")
    h = 1e-2

    def f(z):
        return (agci.global_context_broadcast(z, 0.6, lengths, impl="triton").double() * dy.double()).sum()

    numeric = (f(x + h * v) - f(x - h * v)) / (2 * h)
    analytic = (grad.double() * v.double()).sum()
    assert abs(numeric - analytic) <= 2e-3 * max(1.0, abs(analytic))


def test_lambda_zero_is_the_identity_with_the_identity_gradient(device):
    x = _x([4, 7], 9, torch.float32, device)
    dy = torch.randn_like(x)
    y, grad = _grads(x, 0.0, [4, 7], dy, "triton")
    assert torch.equal(y, x) and torch.equal(grad, dy)


def test_one_mean_over_the_batch_matches_the_reference_formula(device):
    # Scope "reference" of the families that mix the batch: one image spanning every token, against the
    # reference repository's formula (F.cosine_similarity) in float64, forward and backward.
    from agci.kernels.reference import broadcast_eager_formula

    x = _x([40], 13, torch.float32, device)
    x[2] = 1.0  # no zero token: F.cosine_similarity clamps norms differently there
    dy = torch.randn_like(x)
    y, grad = _grads(x, 0.5, [40], dy, "triton")
    x64 = x.double().requires_grad_()
    broadcast_eager_formula(x64, 0.5).backward(dy.double())
    torch.testing.assert_close(y.double(), broadcast_eager_formula(x.double(), 0.5), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), x64.grad, rtol=1e-4, atol=1e-5)


def test_other_images_do_not_change_an_images_gradient_bitwise(device):
    # The backward's chunks start at each image's first row too; an image of at most BWD_CHUNK tokens alone
    # takes the one-chunk path (finished in the first kernel) and must give the same bits.
    lengths = [70, 12, 9]
    x = _x(lengths, 13, torch.float32, device)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(device)
    _, full = _grads(x, 0.4, lengths, dy, "triton")
    full = full.split(lengths)
    starts = [0, 70, 82]
    for i, n in enumerate(lengths):
        sl = slice(starts[i], starts[i] + n)
        _, alone = _grads(x[sl], 0.4, [n], dy[sl], "triton")
        assert torch.equal(alone, full[i]), i


def test_bfloat16_backward_with_many_chunks(device):
    lengths = [50, 3]
    x = _x(lengths, 24, torch.bfloat16, device)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(4)).to(device, torch.bfloat16)
    _, grad = _grads(x, 0.7, lengths, dy, "triton")
    x64 = x.double().requires_grad_()
    per_image_formula(x64, 0.7, lengths).backward(dy.double())
    assert grad.dtype == torch.bfloat16 and relative_error(grad, x64.grad) < 2e-2


class _Counted:
    def __init__(self, kernel, log, name):
        self.kernel, self.log, self.name = kernel, log, name

    def __getitem__(self, grid):
        from torch.utils._python_dispatch import _disable_current_modes

        self.log.append(self.name)

        def launch(*args, **kwargs):
            with _disable_current_modes():  # the interpreter's own tensor copies are not the op's work
                return self.kernel[grid](*args, **kwargs)

        return launch


@pytest.mark.parametrize("lengths,fwd,bwd", [([5, 16], 2, 2), ([17, 2], 2, 3), ([129], 3, 3)])
def test_launch_counts_and_no_other_device_work(lengths, fwd, bwd, device, monkeypatch):
    # Forward: mean (+ the partials' sum past CHUNK rows) and the rows. Backward: the fused coefficients +
    # column sums (+ the partials' sum past BWD_CHUNK rows) and the rows; only allocations around them.
    from torch.utils._python_dispatch import TorchDispatchMode

    from agci.kernels import triton_agci

    log = []
    for name in ("_segment_colsum", "_sum_partials", "_inject_rows", "_bwd_chunk_sums", "_bwd_finish_grad_g",
                 "_bwd_rows"):  # fmt: skip
        monkeypatch.setattr(triton_agci, name, _Counted(getattr(triton_agci, name), log, name))

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    x = _x(lengths, 6, torch.float32, device)
    dy = torch.randn_like(x)
    cu, seg = agci.kernels._segment_layout(tuple(lengths), x.device)
    y, g = triton_agci.forward(x, 0.5, cu, seg, max(lengths))
    assert len(log) == fwd, log
    log.clear()
    with Ops() as mode:
        triton_agci.backward(dy, x, g, 0.5, cu, seg, max(lengths))
    assert len(log) == bwd, log
    assert set(mode.ops) <= {"empty", "empty_like"}, mode.ops


def test_custom_op_passes_opcheck(device):
    # Schema, fake tensor, autograd registration and AOT dispatch of torch.ops.agci.global_context_broadcast.
    from agci.kernels import custom_ops

    lengths = [3, 20]
    x = _x(lengths, 5, torch.float32, device).requires_grad_()
    cu, seg = agci.kernels._segment_layout(tuple(lengths), x.device)
    torch.library.opcheck(custom_ops.global_context_broadcast_op, (x, 0.5, cu, seg, max(lengths)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_largest_lambda_accepted_keeps_half_precision_finite(dtype, device):
    # the worst case at agci.configs.MAX_LAMBDA: entries of 32, a token pointing away from the mean (1 - cos = 2)
    from agci.configs import MAX_LAMBDA

    x = torch.full((64, 16), 32.0, device=device)
    x[0] = -32.0
    out = agci.global_context_broadcast(x.to(dtype), MAX_LAMBDA, impl="triton")
    assert out.isfinite().all() and out.float().abs().max() == 61952
    with pytest.raises(ValueError, match="lam must be <= 1000"):
        agci.global_context_broadcast(x.to(dtype), MAX_LAMBDA * 1.5, impl="triton")
