"""Wrapping ``get_image_features`` of the inner VLM model: class-level, per instance, reversible.

The wrapper calls the original method, then applies AGCI to the per-image features it returns, with
the lambda read from ``self.config`` at call time (the outer config object, shared with the inner
model). Nothing else of transformers is touched: the language model receives the injected features
through the model's own scatter into the input embeddings.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import threading
import types

import torch

from ..configs import LAMBDA_KEY, validate_lambda
from . import versions
from .families import FAMILIES, SUPPORTED_MODEL_TYPES

SCOPE_KEY = "global_context_broadcast_scope"
SCOPES = ("image", "batch")


_VIDEO = threading.local()  # set while get_video_features runs, so that its call into get_image_features is skipped


def read_lambda(config) -> float:
    return validate_lambda(getattr(config, LAMBDA_KEY, 0.0) or 0.0)


def read_scope(config) -> str:
    scope = getattr(config, SCOPE_KEY, "image") or "image"
    if scope not in SCOPES:
        raise ValueError(f"{SCOPE_KEY} must be one of {SCOPES}, got {scope!r}")
    return scope


def inject(features, lam: float, scope: str = "image"):
    """AGCI on per-image features as ``get_image_features`` returns them: a list/tuple of ``[n_i, D]``
    tensors (same type back) or a stacked ``[n, T, D]`` tensor (one image per row)."""
    from ..kernels import global_context_broadcast
    from ..kernels.reference import broadcast_eager_formula

    if isinstance(features, torch.Tensor):
        if scope == "batch":
            flat = features.reshape(-1, features.shape[-1])
            return broadcast_eager_formula(flat, lam).view(features.shape)
        return global_context_broadcast(features if features.ndim == 3 else features[None], lam).view(features.shape)
    parts = list(features)
    if not parts:
        return features
    lengths = [p.shape[0] for p in parts]
    packed = torch.cat(parts)
    if scope == "batch":  # the reference's behaviour: one mean over every image of the batch
        out = broadcast_eager_formula(packed, lam).to(packed.dtype)
    else:
        out = global_context_broadcast(packed, lam, lengths)
    return type(features)(out.split(lengths)) if isinstance(features, tuple) else list(out.split(lengths))


def _wrap_image_features(original):
    @functools.wraps(original)
    def get_image_features(self, *args, **kwargs):
        if getattr(_VIDEO, "active", False):
            return original(self, *args, **kwargs)
        lam = read_lambda(self.config)
        if lam == 0.0:
            return original(self, *args, **kwargs)
        scope = read_scope(self.config)
        wants_tuple = kwargs.get("return_dict") is False and versions.returns_output_dataclass()
        if wants_tuple:
            kwargs["return_dict"] = True
        output = versions.map_image_features(original(self, *args, **kwargs), lambda f: inject(f, lam, scope))
        return output.to_tuple() if wants_tuple else output

    get_image_features.__agci_original__ = original
    return get_image_features


def _wrap_video_features(original):
    @functools.wraps(original)
    def get_video_features(self, *args, **kwargs):
        previous = getattr(_VIDEO, "active", False)
        _VIDEO.active = True
        try:
            return original(self, *args, **kwargs)
        finally:
            _VIDEO.active = previous

    get_video_features.__agci_original__ = original
    return get_video_features


def _wrap_init(original):
    @functools.wraps(original)
    def __init__(self, config, *args, **kwargs):
        read_lambda(config)  # refuse bad values in config.json when the model is built, not in a forward
        read_scope(config)
        original(self, config, *args, **kwargs)

    __init__.__agci_original__ = original
    return __init__


class _LambdaProperty(property):
    """``model.global_context_broadcast_lambda``: reads and writes ``model.config`` (one source of truth)."""

    __agci_original__ = None


def _lambda_property() -> _LambdaProperty:
    def fget(self):
        return read_lambda(self.config)

    def fset(self, value):
        self.config.global_context_broadcast_lambda = validate_lambda(value)

    return _LambdaProperty(fget, fset, doc=_LambdaProperty.__doc__)


def family_classes(model_type: str) -> tuple[type, type]:
    if model_type not in FAMILIES:
        raise ValueError(
            f"model type {model_type!r} is not supported by agci; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    versions.check_transformers_supported()
    family = FAMILIES[model_type]
    module = importlib.import_module(family.module)
    return getattr(module, family.inner_class), getattr(module, family.outer_class)


class PatchHandle:
    """What ``patch`` changed, in order; ``undo()`` (or ``agci.unpatch()``) puts every original back."""

    def __init__(self):
        self.changes: list[tuple[type, str, object]] = []

    def _set(self, cls: type, name: str, value) -> None:
        self.changes.append((cls, name, cls.__dict__.get(name, _MISSING)))
        setattr(cls, name, value)

    def undo(self) -> None:
        for cls, name, original in reversed(self.changes):
            if original is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, original)
        self.changes.clear()
        _HANDLES.discard(self)

    @property
    def model_types(self) -> list[str]:
        return sorted({t for t, f in FAMILIES.items() for c, *_ in self.changes if c.__name__ == f.inner_class})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.undo()


_MISSING = object()
_HANDLES: set[PatchHandle] = set()


def _is_wrapped(cls: type, name: str) -> bool:
    return hasattr(cls.__dict__.get(name), "__agci_original__")


def patch(model_types=None) -> PatchHandle:
    """Make every model of the given types (default: all supported) honour the config key.

    Class-level and idempotent: types already patched are left as they are. Returns a handle whose
    ``undo()`` restores exactly what this call changed."""
    if model_types is None:
        model_types = SUPPORTED_MODEL_TYPES
    elif isinstance(model_types, str):
        model_types = [model_types]
    handle = PatchHandle()
    for model_type in model_types:
        inner, outer = family_classes(model_type)
        if _is_wrapped(inner, "get_image_features"):
            continue
        handle._set(inner, "get_image_features", _wrap_image_features(inner.get_image_features))
        if "get_video_features" in inner.__dict__:
            handle._set(inner, "get_video_features", _wrap_video_features(inner.get_video_features))
        handle._set(inner, "__init__", _wrap_init(inner.__init__))
        if not _is_wrapped(outer, LAMBDA_KEY):
            handle._set(outer, LAMBDA_KEY, _lambda_property())
    _HANDLES.add(handle)
    return handle


def unpatch() -> None:
    """Undo every class-level patch."""
    for handle in list(_HANDLES):
        handle.undo()


def _inner_model(model: torch.nn.Module):
    inner_classes = {}
    for model_type in SUPPORTED_MODEL_TYPES:
        with contextlib.suppress(ImportError, AttributeError):
            inner_classes[family_classes(model_type)[0]] = model_type
    for module in model.modules():
        for cls, model_type in inner_classes.items():
            if isinstance(module, cls):
                return module, model_type
    names = sorted({type(m).__name__ for m in model.modules()})[:8]
    raise ValueError(
        f"no supported VLM found inside {type(model).__name__} (modules include {names}); "
        f"agci supports model types {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


def apply_agci(model: torch.nn.Module, global_context_broadcast_lambda: float | None = None) -> torch.nn.Module:
    """Patch one model instance (also inside PEFT, DDP or accelerate wrappers) and optionally set lambda.

    The inner model's ``get_image_features`` is wrapped on the instance; other instances are untouched.
    Returns ``model``."""
    inner, model_type = _inner_model(model)
    if global_context_broadcast_lambda is not None:
        inner.config.global_context_broadcast_lambda = validate_lambda(global_context_broadcast_lambda)
    read_lambda(inner.config)
    if _is_wrapped(type(inner), "get_image_features") or "get_image_features" in inner.__dict__:
        return model  # patched already, by class or earlier on this instance
    wrapped = _wrap_image_features(type(inner).get_image_features)
    inner.get_image_features = types.MethodType(wrapped, inner)
    if "get_video_features" in type(inner).__dict__:
        inner.get_video_features = types.MethodType(_wrap_video_features(type(inner).get_video_features), inner)
    _, outer = family_classes(model_type)
    if not _is_wrapped(outer, LAMBDA_KEY):
        setattr(outer, LAMBDA_KEY, _lambda_property())  # a plain proxy to each instance's config
    return model


def revert_agci(model: torch.nn.Module) -> torch.nn.Module:
    """Remove the instance-level patch of ``apply_agci`` (the config value is kept)."""
    inner, _ = _inner_model(model)
    for name in ("get_image_features", "get_video_features"):
        inner.__dict__.pop(name, None)
    return model
