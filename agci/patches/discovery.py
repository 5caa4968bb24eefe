"""Finding a family in the installed transformers: its classes, whether this release has and runs it, and the
supported model inside a user's model (also inside PEFT, DDP or accelerate wrappers)."""

from __future__ import annotations

import contextlib
import importlib

import torch

from .. import compat
from ..registry import FAMILIES, SUPPORTED_MODEL_TYPES


def check_model_type(model_type: str | None, where: str = "") -> None:
    """Raise ValueError naming the supported types when ``model_type`` is not one (``where`` prefixes it)."""
    if model_type not in FAMILIES:
        raise ValueError(
            f"{where}model type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )


def present_families() -> tuple[str, ...]:
    """The supported model types that the installed transformers has (including those it has broken)."""
    return tuple(t for t, f in FAMILIES.items() if compat.transformers_at_least(f.since))


def installed_families() -> tuple[str, ...]:
    """The supported model types that the installed transformers has and runs (what ``patch()`` patches)."""
    import transformers

    return tuple(t for t in present_families() if not FAMILIES[t].broken_in(transformers.__version__))


def family_classes(model_type: str) -> tuple[type, type]:
    """(inner, outer) model classes of ``model_type``; ValueError naming the transformers version that has
    the family when the installed one does not."""
    check_model_type(model_type)
    compat.check_transformers_supported()
    family = FAMILIES[model_type]
    if not compat.transformers_at_least(family.since):
        import transformers

        raise ValueError(
            f"model type {model_type!r} ({family.name}) needs transformers >= {family.since}, found "
            f"{transformers.__version__}: pip install -U 'transformers>={family.since}'"
        )
    module = importlib.import_module(family.module)
    return getattr(module, family.inner_class), getattr(module, family.outer_class)


def hook_class(model_type: str) -> type | None:
    """The class of the module the family's hook wraps, when it is not the inner model (Llama 4's projector)."""
    family = FAMILIES[model_type]
    if family.hook_class is None:
        return None
    return getattr(importlib.import_module(family.module), family.hook_class)


def check_runs(model_type: str) -> None:
    """Raise RuntimeError naming the transformers bug and the fix when the installed transformers is a release
    on which the family's own model fails (``Family.broken``): patched or not, the model could not run."""
    import transformers

    family = FAMILIES[model_type]
    if family.broken_in(transformers.__version__):
        raise RuntimeError(
            f"model type {model_type!r} ({family.name}) does not run on transformers {transformers.__version__}, "
            f"with or without agci: {family.broken.error} (a transformers bug). {family.broken.fix}"
        )


def _find(model: torch.nn.Module, inner_classes: dict[type, str]):
    for module in model.modules():
        for cls, model_type in inner_classes.items():
            if isinstance(module, cls):
                return module, model_type
    return None


def inner_model(model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """(the supported inner model inside ``model``, its model type). The config's model type says which family to
    look for (one modeling module imported); a wrapper without a config (DDP) makes it try every family here."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in FAMILIES and compat.transformers_at_least(FAMILIES[model_type].since):
        found = _find(model, {family_classes(model_type)[0]: model_type})
        if found:
            return found
    inner_classes = {}
    for present in present_families():
        with contextlib.suppress(ImportError, AttributeError):
            inner_classes[family_classes(present)[0]] = present
    found = _find(model, inner_classes)
    if found:
        return found
    names = sorted({type(m).__name__ for m in model.modules()})[:8]
    raise ValueError(
        f"no supported VLM found inside {type(model).__name__} (modules include {names}); "
        f"agci supports model types {', '.join(SUPPORTED_MODEL_TYPES)}"
    )
