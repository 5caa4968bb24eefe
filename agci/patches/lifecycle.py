"""Putting the hooks on and taking them off: class-level (``patch``, idempotent, undone by its handle) or on one
instance (``apply_agci``, undone by ``revert_agci``), and the ``model.global_context_broadcast_lambda`` property."""

from __future__ import annotations

import functools
import types
import weakref

import torch

from ..configs import LAMBDA_KEY, read_lambda, read_scope, read_videos, write_lambda
from ..registry import FAMILIES
from .discovery import check_runs, family_classes, hook_class, inner_model, installed_families
from .handles import _HANDLES, PatchHandle, _is_wrapped
from .hooks import WRAPPED_NAMES, hook_kind, hooked_method
from .key_checks import check_lambda_placement, watch_lambda_key_with


def _wrap_init(original):
    @functools.wraps(original)
    def __init__(self, config, *args, **kwargs):
        read_lambda(config)  # refuse bad values in config.json when the model is built, not in a forward
        read_scope(config)
        read_videos(config)
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
        write_lambda(self.config, value)

    return _LambdaProperty(fget, fset, doc=_LambdaProperty.__doc__)


def patch(model_types=None) -> PatchHandle:
    """Make every model of the given types (default: all supported that the installed transformers has)
    honour the config key.

    Class-level and idempotent: types already patched are left as they are. Returns a handle whose
    ``undo()`` restores exactly what this call changed."""
    if model_types is None:
        model_types = installed_families()
    elif isinstance(model_types, str):
        model_types = [model_types]
    handle = PatchHandle()
    for model_type in model_types:
        inner, outer = family_classes(model_type)
        check_runs(model_type)
        if _is_wrapped(*hooked_method(model_type)):
            continue
        classes = {"inner": inner, "outer": outer, "hook": hook_class(model_type)}
        for wrapper in hook_kind(model_type).wrappers(FAMILIES[model_type], inner):
            cls = classes[wrapper.where]
            handle._set(cls, wrapper.name, wrapper.wrap(getattr(cls, wrapper.name)))
        handle._set(inner, "__init__", _wrap_init(inner.__init__))
        handle._set(outer, LAMBDA_KEY, _lambda_property())  # undo() puts back an apply_agci property
    watch_lambda_key_with(handle)
    _HANDLES.add(handle)
    return handle


def unpatch() -> None:
    """Undo every class-level patch."""
    for handle in list(_HANDLES):
        handle.undo()


def apply_agci(model: torch.nn.Module, global_context_broadcast_lambda: float | None = None) -> torch.nn.Module:
    """Patch one model instance (also inside PEFT, DDP or accelerate wrappers) and optionally set lambda.

    The inner model's ``get_image_features`` is wrapped on the instance; other instances are untouched.
    ``model.global_context_broadcast_lambda`` is a property, which Python looks up on the class: the outer
    class carries it (a plain proxy to each instance's config) while any of its instances is patched; it
    goes when the last one is reverted (:func:`revert_agci`) or garbage-collected. Returns ``model``."""
    inner, model_type = inner_model(model)
    check_runs(model_type)
    if global_context_broadcast_lambda is not None:
        write_lambda(inner.config, global_context_broadcast_lambda)
    read_lambda(inner.config)
    check_lambda_placement(inner.config)
    wrappers = hook_kind(model_type).wrappers(FAMILIES[model_type], type(inner))
    hooked = hook_class(model_type)
    hook_modules = [m for m in inner.modules() if isinstance(m, hooked)] if hooked else []
    on_inner = next(w.name for w in wrappers if w.where == "inner")  # every hook kind wraps the inner model too
    if _is_wrapped(type(inner), on_inner) or on_inner in inner.__dict__:
        return model  # patched already, by class or earlier on this instance
    _, outer = family_classes(model_type)
    outer_instance = next((m for m in model.modules() if isinstance(m, outer)), None)
    for wrapper in wrappers:
        # the hooked modules: every projector inside (PEFT's modules_to_save keeps a copy beside the original)
        targets = {"inner": [inner], "outer": [outer_instance], "hook": hook_modules}[wrapper.where]
        for target in targets:
            if target is not None:
                method = wrapper.wrap(getattr(type(target), wrapper.name))
                target.__dict__[wrapper.name] = types.MethodType(method, target)
    if outer_instance is not None:
        _track_instance(outer, outer_instance)
    return model


# outer class -> (the lambda property apply_agci put on it, {id of a patched instance: its finalizer})
_INSTANCE_PROPERTIES: dict[type, tuple[_LambdaProperty, dict[int, weakref.finalize]]] = {}


def _track_instance(outer: type, instance) -> None:
    if not _is_wrapped(outer, LAMBDA_KEY):  # a class-level patch() brings its own property
        _INSTANCE_PROPERTIES[outer] = (_lambda_property(), {})
        setattr(outer, LAMBDA_KEY, _INSTANCE_PROPERTIES[outer][0])
    entry = _INSTANCE_PROPERTIES.get(outer)
    if entry is not None and id(instance) not in entry[1]:
        entry[1][id(instance)] = weakref.finalize(instance, _untrack_instance, outer, id(instance))


def _untrack_instance(outer: type, key: int) -> None:
    """An instance was reverted or collected; the last one takes the class's lambda property with it."""
    entry = _INSTANCE_PROPERTIES.get(outer)
    if entry is None or key not in entry[1]:
        return
    prop, live = entry
    live.pop(key).detach()
    if not live:
        del _INSTANCE_PROPERTIES[outer]
        if outer.__dict__.get(LAMBDA_KEY) is prop:  # not replaced by a class-level patch()
            delattr(outer, LAMBDA_KEY)


def revert_agci(model: torch.nn.Module) -> torch.nn.Module:
    """Remove the instance-level patch of ``apply_agci`` (the config value is kept), and the outer class's
    lambda property once no instance of it is patched."""
    for module in model.modules():
        for name in WRAPPED_NAMES:  # the names every hook kind may put on an instance
            if hasattr(module.__dict__.get(name), "__agci_original__"):  # bound methods show their function's
                del module.__dict__[name]
        _untrack_instance(type(module), id(module))
    return model
