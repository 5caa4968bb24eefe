"""lmms-eval's entry point (group ``lmms_eval.models``): the names agci registers.

lmms-eval loads every entry point at start-up and skips the rest when one fails, so this module
imports only lmms-eval's manifest class; the model code loads when a name is asked for."""

from __future__ import annotations

MODEL_NAMES: dict[str, tuple[str, ...]] = {
    "agci_qwen2_5_vl": ("qwen2_5_vl",),
    "agci_qwen3_vl": ("qwen3_vl",),
    "agci_gemma3n": ("gemma3n",),
    "agci_internvl": ("internvl",),
    "agci_llava": ("llava", "llava_next"),
}

_CLASSES = {
    "agci_qwen2_5_vl": "AGCIQwen2_5_VL",
    "agci_qwen3_vl": "AGCIQwen3_VL",
    "agci_gemma3n": "AGCIGemma3n",
    "agci_internvl": "AGCIInternVL",
    "agci_llava": "AGCILlava",
}


def model_name_for(model_type: str) -> str | None:
    """The agci lmms-eval model name that serves ``model_type`` (None when none does)."""
    return next((name for name, types in MODEL_NAMES.items() if model_type in types), None)


def manifests():
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(model_id=name, simple_class_path=f"agci.eval.lmms_model.{cls}") for name, cls in _CLASSES.items()
    ]
