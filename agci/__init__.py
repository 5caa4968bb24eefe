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
    from .patches.core import SUPPORTED_MODEL_TYPES, apply_agci, patch, revert_agci, unpatch, using_lambda

_LAZY = {
    "global_context_broadcast": ("agci.kernels", "global_context_broadcast"),
    "LAMBDA_KEY": ("agci.configs", "LAMBDA_KEY"),
    "validate_lambda": ("agci.configs", "validate_lambda"),
    "using_lambda": ("agci.patches.core", "using_lambda"),  # agci.configs.using_lambda, warning on unpatched models
    "patch": ("agci.patches.core", "patch"),
    "unpatch": ("agci.patches.core", "unpatch"),
    "apply_agci": ("agci.patches.core", "apply_agci"),
    "revert_agci": ("agci.patches.core", "revert_agci"),
    "SUPPORTED_MODEL_TYPES": ("agci.patches.core", "SUPPORTED_MODEL_TYPES"),
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
