"""The patches on a GPU: the model runs the Triton kernels (bf16) and matches the per-image formula."""

import pytest
import torch
from conftest import per_image_formula, relative_error
from vlm_cases import build

import agci
from agci import compat
from agci.patches import core

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: patched models on the Triton path"),
]


@pytest.mark.parametrize("model_type", list(agci.SUPPORTED_MODEL_TYPES))
def test_patched_model_on_cuda_uses_triton_and_matches_the_formula(model_type, monkeypatch):
    case = build(model_type, global_context_broadcast_lambda=0.7)
    model = case.model.to("cuda", torch.bfloat16)
    inputs = {k: v.to("cuda") for k, v in case.batch().items()}
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    inner = core._inner_model(model)[0]
    original = type(inner).get_image_features
    kwargs = {k: v for k, v in inputs.items() if k in ("image_sizes", "image_grid_thw")}
    with torch.no_grad():
        stock = case.per_image(compat.image_features_per_image(original(inner, inputs["pixel_values"], **kwargs)))
    chosen = []
    real = agci.kernels.resolve_impl
    monkeypatch.setattr(agci.kernels, "resolve_impl", lambda impl, x: chosen.append(real(impl, x)) or chosen[-1])
    agci.apply_agci(model)
    seen = {}
    hook = inner.language_model.register_forward_pre_hook(
        lambda m, a, k: seen.setdefault("embeds", k["inputs_embeds"].detach()), with_kwargs=True
    )
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    assert chosen and set(chosen) == {"triton"}
    expected = per_image_formula(torch.cat(stock).float(), 0.7, [f.shape[0] for f in stock])
    got = seen["embeds"][inputs["input_ids"] == case.image_token]
    assert relative_error(got, expected) < 1e-2
