"""AGCI under PEFT LoRA: training steps, gradients through the op, merge_and_unload keeps AGCI."""

import pytest
import torch
from family_cases import CASES
from vlm_cases import build

import agci
from agci.patches import discovery, hooks

peft = pytest.importorskip("peft", reason="peft is part of the dev extra; install agci[dev]")


@pytest.mark.parametrize("model_type", ["llava", "qwen2_5_vl"])
def test_lora_training_step_merge_and_unload_keep_agci(model_type):
    case = build(model_type, global_context_broadcast_lambda=0.5)
    inputs = case.batch("right")
    inner = discovery.inner_model(case.model)[0]
    projector = CASES[model_type].projector
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=None)
    model = peft.get_peft_model(case.model, config)
    for name, param in model.named_parameters():
        if projector in name:
            param.requires_grad_(True)  # a trainable projector, as in full-projector recipes
    agci.apply_agci(model)  # through the PEFT wrapper
    assert "get_image_features" in inner.__dict__

    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    calls = []
    real_inject = hooks.inject

    def counting_inject(*args, **kwargs):
        calls.append(1)
        return real_inject(*args, **kwargs)

    hooks.inject = counting_inject
    try:
        for _ in range(2):
            loss = model(**inputs, labels=labels).loss
            loss.backward()
            grads = [p.grad for n, p in model.named_parameters() if projector in n and p.grad is not None]
            assert grads and any(g.abs().sum() > 0 for g in grads), "no gradient reached the projector"
            optimizer.step()
            optimizer.zero_grad()
    finally:
        hooks.inject = real_inject
    assert len(calls) == 2 and torch.isfinite(loss)

    model.eval()
    with torch.no_grad():
        adapted = model(**inputs).logits
        merged = model.merge_and_unload()
        assert merged.global_context_broadcast_lambda == 0.5
        torch.testing.assert_close(merged(**inputs).logits, adapted, rtol=1e-4, atol=1e-4)
        merged.global_context_broadcast_lambda = 0.0
        assert not torch.allclose(merged(**inputs).logits, adapted, atol=1e-4)
