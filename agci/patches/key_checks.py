"""The config key where nothing reads it: a warning when such a model is built (an unsupported model type, or the
key under a sub-config), a refusal where AGCI is asked for by name, and ``agci.using_lambda`` warning on a model
that agci has not patched."""

from __future__ import annotations

import functools
import sys
import warnings
import weakref

import torch

from .. import configs
from ..configs import LAMBDA_KEY, misplaced_lambda, validate_lambda
from ..registry import FAMILIES, SUPPORTED_MODEL_TYPES
from .handles import _HANDLES, PatchHandle, _is_wrapped
from .hooks import hooked_method

_WARNED: dict[int, set[str]] = {}  # id of a config or model -> the warnings given about it


def _warn_once(about, message: str, stacklevel: int) -> None:
    if message in _WARNED.get(id(about), ()):
        return
    if id(about) not in _WARNED:
        weakref.finalize(about, _WARNED.pop, id(about), None)
    _WARNED.setdefault(id(about), set()).add(message)
    warnings.warn(message, stacklevel=stacklevel + 1)


def _misplaced_message(where: str, value) -> str:
    return (
        f"{LAMBDA_KEY}={value!r} is under {where} of the config, where agci does not read it; put it at the top "
        f"level of config.json (agci set-lambda CHECKPOINT {value!r}) or pass {LAMBDA_KEY}={value!r} to apply_agci "
        "or AutoAGCIModelForImageTextToText"
    )


def check_lambda_placement(config) -> None:
    """Refuse (ValueError) a lambda under a sub-config while the top level has none (see ``misplaced_lambda``)."""
    misplaced = misplaced_lambda(config)
    if misplaced is not None:
        raise ValueError(_misplaced_message(*misplaced))


def _built_inside_another_model(model) -> bool:
    """True while ``model`` is built by the ``__init__`` of another model (a vision tower, a language model)."""
    from transformers import PreTrainedModel

    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "__init__":
            owner = frame.f_locals.get("self")
            if owner is not model and isinstance(owner, PreTrainedModel):
                return True
        frame = frame.f_back
    return False


def _check_lambda_key(model) -> None:
    """Warn (once per config) when a model is built whose config carries lambda where agci will not act on it:
    a model type agci does not support, or a sub-config instead of the top level. Outermost models only."""
    config = getattr(model, "config", None)
    if config is None:
        return
    messages = []
    value = getattr(config, LAMBDA_KEY, None)
    model_type = getattr(config, "model_type", None)
    if value is not None and value != 0 and model_type not in FAMILIES:
        messages.append(
            f"agci: {type(model).__name__} (model type {model_type!r}) has {LAMBDA_KEY}={value!r} in its config, "
            f"but agci does not support {model_type!r}, so AGCI is off for it; use one of the supported types "
            f"({', '.join(SUPPORTED_MODEL_TYPES)}) or remove the key"
        )
    misplaced = misplaced_lambda(config)
    if misplaced is not None:
        messages.append(f"agci: {type(model).__name__} runs without AGCI: {_misplaced_message(*misplaced)}")
    if messages and not _built_inside_another_model(model):
        for message in messages:
            _warn_once(config, message, stacklevel=4)


def _wrap_post_init(original):
    @functools.wraps(original)
    def post_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        _check_lambda_key(self)

    post_init.__agci_original__ = original
    return post_init


def watch_lambda_key_with(handle: PatchHandle) -> None:
    """Put the key check on transformers' ``PreTrainedModel.post_init`` (once), recorded in ``handle``."""
    from transformers import PreTrainedModel

    if not _is_wrapped(PreTrainedModel, "post_init"):
        handle._set(PreTrainedModel, "post_init", _wrap_post_init(PreTrainedModel.post_init))


def watch_lambda_key() -> PatchHandle:
    """Check the config of every transformers model built from now on for a lambda that agci would ignore (see
    ``_check_lambda_key``); ``patch()`` does it too. Undone by ``unpatch()`` or the returned handle's ``undo()``."""
    handle = PatchHandle()
    watch_lambda_key_with(handle)
    _HANDLES.add(handle)
    return handle


def is_patched(model) -> bool:
    """Whether AGCI acts on ``model``: a supported VLM inside it whose hooked method is wrapped (by class or on
    the instance)."""
    for model_type, family in FAMILIES.items():
        if family.module not in sys.modules:  # a model of the family has its module imported
            continue
        cls, name = hooked_method(model_type)
        for target in model.modules():
            if isinstance(target, cls) and (_is_wrapped(type(target), name) or name in target.__dict__):
                return True
    return False


def using_lambda(model, lam: float):
    """``agci.using_lambda``: :func:`agci.configs.using_lambda`, with a warning (once per model) when ``model`` is
    a torch module that agci has not patched, where lambda would change nothing."""
    value = validate_lambda(lam)
    if value and isinstance(model, torch.nn.Module) and not is_patched(model):
        message = (
            f"agci.using_lambda: this {type(model).__name__} is not patched, so lambda changes nothing; call "
            "agci.apply_agci(model) first, or agci.patch() before building the model"
        )
        _warn_once(model, message, stacklevel=2)
    return configs.using_lambda(model, value)
