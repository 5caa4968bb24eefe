"""The pure-PyTorch op against the per-image formula: values, gradients, edge cases, bad input."""

import math

import pytest
import torch
from conftest import per_image_formula

import agci
from agci.kernels import reference

LENGTHS = [1, 7, 30, 2]


def _packed(lengths, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(sum(lengths), d, generator=g, dtype=torch.float64).to(dtype) + 0.3


def test_packed_matches_per_image_formula_fp32():
    x = _packed(LENGTHS, 19)
    y = agci.global_context_broadcast(x, 0.7, LENGTHS, impl="reference")
    torch.testing.assert_close(y.double(), per_image_formula(x, 0.7, LENGTHS), rtol=1e-5, atol=1e-6)
    assert y.dtype == x.dtype and y.shape == x.shape


def test_single_image_and_batched_forms_match_packed():
    x = _packed([6, 6, 6], 11)
    packed = agci.global_context_broadcast(x, 0.5, [6, 6, 6], impl="reference")
    batched = agci.global_context_broadcast(x.view(3, 6, 11), 0.5, impl="reference")
    single = agci.global_context_broadcast(x[6:12], 0.5, impl="reference")
    torch.testing.assert_close(batched.view(18, 11), packed, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(single, packed[6:12], rtol=1e-6, atol=1e-6)


def _tokens_sharing_a_direction(lengths, d, dtype, seed=0):
    """Tokens around one common direction, as visual features are: cos(X_i, g) is near 1, so the weight
    w = 1 - cos is small and a cosine rounded in the input dtype shows up in the output."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(d, generator=g, dtype=torch.float64)
    return (common + 0.3 * torch.randn(sum(lengths), d, generator=g, dtype=torch.float64)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(
    "lengths",
    [[1, 4096, 7, 30], [4096]],
    ids=["packed", "one-image"],  # unequal lengths: broadcast_packed; one [N, D] image: broadcast_uniform
)
def test_low_precision_output_is_the_exact_result_rounded_once(dtype, lengths):
    # The bound, from the math: let e be the exact (float64) result of an output element, a the float32
    # result the op computes from the same (exactly upcast) inputs, and r(.) rounding to `dtype`, which
    # picks the representable value nearest its argument. Then
    #     |r(a) - e| <= |r(a) - a| + |a - e| <= |r(e) - a| + |a - e| <= |r(e) - e| + 2 |a - e|,
    # so the op's error is at most the error of casting the exact result (cast_err) plus twice the
    # float32 error (delta), element by element: a factor of 1, not 2, on cast_err. delta is taken 50x
    # the float32 error measured here (about 2e-7 of max |e|) and is checked below; 2 * delta is still
    # under a tenth of cast_err (a bf16/fp16 half-ulp, 2^-9 / 2^-11 relative). Computing in `dtype` (no
    # float32 upcast: the dot products, norms, cosine and weight each rounded) gives 2.0-2.3x cast_err
    # on these tokens (1.9-3.7x over the seeds and lambdas tried): with 4096 tokens in one image, some token's cosine
    # picks up several roundings, and a factor of 2 on cast_err would let fp16 through.
    x = _tokens_sharing_a_direction(lengths, 64, dtype)
    seqlens = lengths if len(lengths) > 1 else None
    exact = per_image_formula(x, 0.8, lengths)  # float64, from the dtype-rounded inputs
    cast_err = (exact.to(dtype).double() - exact).abs().max().item()
    delta = 1e-5 * exact.abs().max().item()

    fp32 = agci.global_context_broadcast(x.float(), 0.8, seqlens, impl="reference")
    assert (fp32.double() - exact).abs().max().item() <= delta, "float32 error exceeds the delta assumed below"

    y = agci.global_context_broadcast(x, 0.8, seqlens, impl="reference")
    assert y.dtype == dtype and y.shape == x.shape
    err = (y.double() - exact).abs().max().item()
    assert err <= cast_err + 2 * delta, (
        f"{dtype} output is {err:.3g} off the float64 result; rounding that result once is {cast_err:.3g} off "
        f"(ratio {err / cast_err:.2f}): the op does not compute in float32"
    )


def test_gradcheck_float64():
    x = _packed([1, 4, 3], 5, torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: agci.global_context_broadcast(t, 0.8, [1, 4, 3], impl="reference"), (x,))
    xb = _packed([4, 4], 6, torch.float64).view(2, 4, 6).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: agci.global_context_broadcast(t, 1.3, impl="reference"), (xb,))


def test_fp32_gradient_matches_autograd_of_formula():
    x = _packed(LENGTHS, 23)
    dy = torch.randn_like(x)
    xr = x.clone().requires_grad_()
    agci.global_context_broadcast(xr, 0.6, LENGTHS, impl="reference").backward(dy)
    x64 = x.double().requires_grad_()
    per_image_formula(x64, 0.6, LENGTHS).backward(dy.double())
    torch.testing.assert_close(xr.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)


def test_lambda_zero_returns_equal_values_in_a_new_tensor():
    x = _packed(LENGTHS, 8)
    y = agci.global_context_broadcast(x, 0.0, LENGTHS)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()


def test_zero_token_and_zero_mean_get_weight_one_and_finite_gradients():
    x = _packed([3, 4], 6)
    x[1] = 0.0  # a zero token
    x[3:7] = torch.tensor([[1.0] * 6, [-1.0] * 6, [2.0] * 6, [-2.0] * 6])  # mean exactly zero
    x = x.requires_grad_()
    y = agci.global_context_broadcast(x, 0.9, [3, 4], impl="reference")
    g0 = x[:3].detach().mean(0)
    torch.testing.assert_close(y[1].detach(), 0.9 * g0)  # w = 1 for the zero token
    torch.testing.assert_close(y[3:7].detach(), x[3:7].detach())  # g = 0 adds nothing
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all()


def test_reordering_adding_and_removing_images_keeps_each_output():
    lengths = [5, 1, 9, 3]
    x = _packed(lengths, 16)
    full = agci.global_context_broadcast(x, 0.4, lengths, impl="reference")
    parts = list(full.split(lengths))
    xs = list(x.split(lengths))
    order = [2, 0, 3, 1]
    shuffled = agci.global_context_broadcast(torch.cat([xs[i] for i in order]), 0.4, [lengths[i] for i in order])
    for out, i in zip(shuffled.split([lengths[i] for i in order]), order, strict=True):
        torch.testing.assert_close(out, parts[i], rtol=1e-6, atol=1e-7)
    alone = agci.global_context_broadcast(xs[2], 0.4, impl="reference")
    torch.testing.assert_close(alone, parts[2], rtol=1e-6, atol=1e-7)


def test_empty_inputs_return_empty_outputs():
    for x, lengths in [
        (torch.empty(0, 8), None),
        (torch.empty(0, 8), []),
        (torch.empty(0, 8), [0, 0]),
        (torch.empty(2, 0, 8), None),
    ]:
        y = agci.global_context_broadcast(x, 0.5, lengths)
        assert y.shape == x.shape


def test_zero_length_image_in_the_middle_is_allowed():
    x = _packed([3, 0, 2], 4)
    y = agci.global_context_broadcast(x, 0.5, [3, 0, 2], impl="reference")
    torch.testing.assert_close(y.double(), per_image_formula(x, 0.5, [3, 0, 2]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "lam,exc,match",
    [
        (-0.1, ValueError, ">= 0"),
        (math.nan, ValueError, "finite"),
        (math.inf, ValueError, "finite"),
        ("0.5", TypeError, "real number"),
        (True, TypeError, "real number"),
        (None, TypeError, "real number"),
    ],
)
def test_bad_lambda_is_refused_with_a_clear_message(lam, exc, match):
    with pytest.raises(exc, match=match):
        agci.global_context_broadcast(torch.randn(3, 4), lam)


def test_bad_seqlens_and_tensors_are_refused():
    x = torch.randn(6, 4)
    with pytest.raises(ValueError, match="sum to the number of tokens T=6"):
        agci.global_context_broadcast(x, 0.5, [2, 3])
    with pytest.raises(ValueError, match=">= 0"):
        agci.global_context_broadcast(x, 0.5, [8, -2])
    with pytest.raises(TypeError, match="integer"):
        agci.global_context_broadcast(x, 0.5, torch.tensor([3.0, 3.0]))
    with pytest.raises(TypeError, match="integer"):
        agci.global_context_broadcast(x, 0.5, [3.0, 3.0])
    with pytest.raises(TypeError, match="floating-point"):
        agci.global_context_broadcast(torch.ones(6, 4, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="got shape"):
        agci.global_context_broadcast(torch.randn(4), 0.5)
    with pytest.raises(ValueError, match="got shape"):
        agci.global_context_broadcast(torch.randn(2, 2, 2, 2), 0.5)
    with pytest.raises(ValueError, match="already gives N tokens"):
        agci.global_context_broadcast(torch.randn(2, 3, 4), 0.5, [3, 3])
    with pytest.raises(TypeError, match="torch.Tensor"):
        agci.global_context_broadcast([[1.0, 2.0]], 0.5)
    with pytest.raises(ValueError, match="impl must be one of"):
        agci.global_context_broadcast(x, 0.5, impl="cuda")


def test_seqlens_as_tensor_or_numpy_ints_equal_list():
    import numpy as np

    x = _packed(LENGTHS, 9)
    a = agci.global_context_broadcast(x, 0.5, LENGTHS)
    assert torch.equal(a, agci.global_context_broadcast(x, 0.5, torch.tensor(LENGTHS)))
    assert torch.equal(a, agci.global_context_broadcast(x, 0.5, np.array(LENGTHS)))
    assert torch.equal(a, agci.global_context_broadcast(x, 0.5, tuple(np.int32(v) for v in LENGTHS)))


def test_eager_formula_of_reference_repo_equals_ours_for_one_image():
    x = _packed([12], 10)
    torch.testing.assert_close(
        reference.broadcast_eager_formula(x, 0.5),
        agci.global_context_broadcast(x, 0.5, impl="reference"),
        rtol=1e-5,
        atol=1e-6,
    )


def test_eps_threshold_is_on_the_product_of_the_norms():
    # 1-D tokens: the norm of X_i is abs(X_i) exactly, and cos is exactly 1 wherever it is taken.
    assert 1e-4 * 1e-4 == reference.EPS  # |X||g| of a lone token 1e-4 is EPS itself: cos taken as 0, w = 1
    lam = 0.5
    x = torch.tensor([[1e-4], [1.2e-4], [1.0], [3.0]], dtype=torch.float64)
    y = agci.global_context_broadcast(x, lam, [1, 1, 2], impl="reference")  # unequal lengths: the packed path
    # 1e-4: weight 1, Y = X + lam * g; 1.2e-4: g is the token itself (a mean over 1, not 2), |X||g| = 1.44e-8
    # > EPS, cos = 1, Y = X; the pair: cos = 1, Y = X
    assert y.flatten().tolist() == [1e-4 + lam * 1e-4, 1.2e-4, 1.0, 3.0]
    alone = agci.global_context_broadcast(x[:1], lam, impl="reference")  # one [N, D] image: the uniform path
    assert alone.item() == 1e-4 + lam * 1e-4


@pytest.mark.parametrize(
    "dtype,expected",
    [(torch.float64, torch.float64), (torch.float32, torch.float32), (torch.bfloat16, torch.float32),
     (torch.float16, torch.float32)],
)  # fmt: skip
def test_compute_dtype_is_float32_except_for_float64(dtype, expected):
    assert reference.compute_dtype(dtype) == expected
