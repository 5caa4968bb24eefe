"""agci: Adaptive Global Context Injection for vision-language models.

Importing agci has no side effects and does not import transformers; the op and the patches load
on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "global_context_broadcast",
    "LAMBDA_KEY",
    "validate_lambda",
    "using_lambda",
    "patch",
    "unpatch",
    "apply_agci",
    "revert_agci",
    "SUPPORTED_MODEL_TYPES",
    "AutoAGCIModelForImageTextToText",
]

if TYPE_CHECKING:
    from .configs import LAMBDA_KEY, validate_lambda
    from .kernels import global_context_broadcast
    from .patches.auto import AutoAGCIModelForImageTextToText
    from .patches.key_checks import using_lambda
    from .patches.lifecycle import apply_agci, patch, revert_agci, unpatch
    from .registry import SUPPORTED_MODEL_TYPES

_LAZY = {
    "global_context_broadcast": ("agci.kernels", "global_context_broadcast"),
    "LAMBDA_KEY": ("agci.configs", "LAMBDA_KEY"),
    "validate_lambda": ("agci.configs", "validate_lambda"),
    "using_lambda": ("agci.patches.key_checks", "using_lambda"),  # configs.using_lambda, warning on unpatched models
    "patch": ("agci.patches.lifecycle", "patch"),
    "unpatch": ("agci.patches.lifecycle", "unpatch"),
    "apply_agci": ("agci.patches.lifecycle", "apply_agci"),
    "revert_agci": ("agci.patches.lifecycle", "revert_agci"),
    "SUPPORTED_MODEL_TYPES": ("agci.registry", "SUPPORTED_MODEL_TYPES"),
    "AutoAGCIModelForImageTextToText": ("agci.patches.auto", "AutoAGCIModelForImageTextToText"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'agci' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
