"""The patches on a GPU, every family of the registry: the model runs the Triton kernels in bf16, the language
model receives the per-image formula, lambda 0 is bitwise the stock model, a sample alone and in a batch get the
same logits, generate works; and one patched model under torch.compile matches eager.

Skipped (with the reason) without CUDA. ``AGCI_GPU_TESTS_ON_CPU=1`` runs the same checks on CPU with the
kernels interpreted (slow: for checking this file itself, e.g. ``-k "llava and not next"``).
"""

import os

import pytest
import torch
from conftest import per_image_formula, relative_error
from vlm_cases import build, families_here

import agci
import agci.kernels
from agci import compat
from agci.patches import discovery

ON_CPU = os.environ.get("AGCI_GPU_TESTS_ON_CPU") == "1" and os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() and not ON_CPU, reason="needs a CUDA GPU: patched models on the Triton path"
    ),
]
FAMILIES = families_here()
DTYPE = torch.bfloat16
# bf16 end to end: the features, the formula's inputs and the language model all round to 8 bits
FORMULA_TOL, LOGITS_TOL = 1e-2, 3e-2


@pytest.fixture(autouse=True)
def _clean_patches(monkeypatch, clean_patches):
    if ON_CPU:
        monkeypatch.setenv("AGCI_IMPL", "triton")


def _to_device(inputs: dict) -> dict:
    out = {}
    for k, v in inputs.items():
        v = v.to(DEVICE)
        out[k] = v.to(DTYPE) if v.is_floating_point() else v
    return out


def _language_model(inner):
    return getattr(inner, "language_model", None) or inner.text_model  # Idefics3: text_model


@pytest.mark.parametrize("model_type", FAMILIES)
def test_patched_family_on_the_triton_path(model_type, monkeypatch):
    case = build(model_type, global_context_broadcast_lambda=0.7)
    model = case.model.to(DEVICE, DTYPE).eval()
    inputs = _to_device(case.batch("left"))
    inner = discovery.inner_model(model)[0]
    original = type(inner).get_image_features
    image_kwargs = case.image_inputs(inputs)
    with torch.no_grad():
        stock_features = case.per_image(compat.image_features_per_image(original(inner, **image_kwargs)))
        with agci.using_lambda(model, 0.0):
            stock_logits = model(**inputs).logits
    chosen = []
    real = agci.kernels.resolve_impl
    monkeypatch.setattr(agci.kernels, "resolve_impl", lambda impl, x: chosen.append(real(impl, x)) or chosen[-1])
    agci.apply_agci(model)

    # 1. the formula at the language model's input, image by image
    seen = {}

    def capture(module, args, kwargs):
        seen.setdefault("embeds", kwargs["inputs_embeds"].detach())

    hook = _language_model(inner).register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    assert chosen and set(chosen) == {"triton"}, chosen
    lengths = [f.shape[0] for f in stock_features]
    expected = per_image_formula(torch.cat(stock_features).float(), 0.7, lengths)
    got = seen["embeds"][inputs["input_ids"] == case.image_token]
    assert got.shape == expected.shape
    assert relative_error(got, expected) < FORMULA_TOL

    with torch.no_grad():
        # 2. lambda 0: bitwise the stock model
        with agci.using_lambda(model, 0.0):
            assert torch.equal(model(**inputs).logits, stock_logits)
        # 3. batch invariance: each sample alone gets its batched logits (bf16 matmuls differ by batch shape)
        batched = model(**inputs).logits[:, -1]
        for i, sample in enumerate(case.samples):
            if "mm_token_type_ids" in sample:
                sample = dict(sample, mm_token_type_ids=(sample["input_ids"] == case.image_token).int())
            alone = model(**_to_device(sample)).logits[0, -1]
            assert relative_error(alone, batched[i]) < LOGITS_TOL, i
        # 4. generate
        chosen.clear()
        out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, use_cache=True)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    assert set(chosen) == {"triton"}, chosen


@pytest.mark.parametrize("model_type", ["llava"])
def test_patched_model_under_torch_compile_matches_eager(model_type):
    torch._dynamo.reset()
    case = build(model_type, global_context_broadcast_lambda=0.7)
    model = case.model.to(DEVICE, DTYPE).eval()
    inputs = _to_device(case.batch("left"))
    agci.apply_agci(model)
    with torch.no_grad():
        eager = model(**inputs).logits
        compiled = torch.compile(model, backend="inductor" if DEVICE == "cuda" else "aot_eager")
        got = compiled(**inputs).logits
        with agci.using_lambda(model, 0.0):
            stock = model(**inputs).logits
    assert relative_error(got, eager) < LOGITS_TOL
    assert relative_error(eager, stock) > 10 * relative_error(got, eager)  # the compiled model did inject
