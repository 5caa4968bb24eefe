"""lmms-eval's entry point (group ``lmms_eval.models``): the names agci registers.

One name per family (``agci_<model_type>``, from the registry), ``agci_llava`` for LLaVA-1.5 and
LLaVA-NeXT alike (its name before the registry), and ``agci``, which serves every supported family and
reads which from the checkpoint's config. lmms-eval loads every entry point at start-up and skips the
rest when one fails, so this module imports only lmms-eval's manifest class; the model code loads when a
name is asked for."""

from __future__ import annotations

from ..registry import FAMILIES, SUPPORTED_MODEL_TYPES

GENERIC = "agci"
MODEL_NAMES: dict[str, tuple[str, ...]] = {
    GENERIC: SUPPORTED_MODEL_TYPES,
    **{f.lmms_eval_name: (t,) for t, f in FAMILIES.items()},
    "agci_llava": ("llava", "llava_next"),
}


def class_name(model_name: str) -> str:
    """The class in agci.eval.lmms_model that serves ``model_name``."""
    return "AGCI" if model_name == GENERIC else f"AGCI_{model_name.removeprefix('agci_')}"


def model_name_for(model_type: str) -> str | None:
    """The family's own agci lmms-eval model name (None when agci does not support the type)."""
    family = FAMILIES.get(model_type)
    return family.lmms_eval_name if family else None


def manifests():
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(model_id=name, simple_class_path=f"agci.eval.lmms_model.{class_name(name)}")
        for name in MODEL_NAMES
    ]
