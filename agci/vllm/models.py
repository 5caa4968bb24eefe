"""agci's model classes for vLLM: for each family the registry marks as served on vLLM, a subclass of vLLM's own
class whose image (and, when asked, video) embedding method applies AGCI to each item it returns.

vLLM batches items of several requests into one encoder call and caches each item's embeddings; the op runs per
item, so a request's result does not depend on what it was batched or cached with. The classes are built on first
use (``AgciLlavaForConditionalGeneration`` and so on, by name, for vLLM's lazy model registry).
"""

from __future__ import annotations

import collections
import contextlib
import importlib

from ..configs import read_videos
from ..grouping import inject
from ..registry import FAMILIES, Family, OnVllm
from . import checks

PREFIX = "Agci"
# what AGCI was applied to in this process (a process serves one model): items by modality, and the number of
# items of each call, in order (vLLM puts items of several requests into one call)
ITEMS = collections.Counter()
CALLS: collections.deque[tuple[str, int]] = collections.deque(maxlen=1024)
_CLASSES: dict[str, type] = {}


def _family_of(class_name: str) -> Family:
    for family in FAMILIES.values():
        if isinstance(family.vllm, OnVllm) and class_name == PREFIX + family.vllm.architecture:
            return family
    raise AttributeError(class_name)


def _vllm_class(architecture: str) -> type:
    """vLLM's own class for ``architecture`` (from its built-in table, not the registry that agci overrides)."""
    from vllm.model_executor.models import registry

    module, name = registry._VLLM_MODELS[architecture]
    return getattr(importlib.import_module(registry._resolve_module_name(module)), name)


def _count(out) -> int:
    return out.shape[0] if hasattr(out, "shape") else len(out)


def _inject(out, lam: float, width: int | None):
    """AGCI on each item of ``out``; with ``width``, on its rows' leading ``width`` columns only."""
    if width is None:
        return inject(out, lam)
    import torch

    if isinstance(out, torch.Tensor):
        return torch.cat([inject(out[..., :width], lam), out[..., width:]], dim=-1)
    heads = inject([item[..., :width] for item in out], lam)
    items = [torch.cat([head, item[..., width:]], dim=-1) for head, item in zip(heads, out, strict=True)]
    return tuple(items) if isinstance(out, tuple) else items


def _method_input(args, kwargs):
    """The parsed multimodal input the wrapped method was called with (its one argument)."""
    return args[0] if args else next(iter(kwargs.values()), None)


def _modality(default: str, args, kwargs) -> str:
    """The modality "video" where the method's input says it holds videos (vLLM's parsed inputs carry a
    ``type``; InternVL's one method takes images and videos alike), else ``default``."""
    try:
        kind = _method_input(args, kwargs)["type"]
    except (TypeError, KeyError, IndexError):
        return default
    return "video" if isinstance(kind, str) and "video" in kind else default


def _frames(field: str, args, kwargs) -> list[int]:
    """The number of frames of each item of the method's input (its ``field``: one (frames, h, w) row per item)."""
    return [int(t) for t in _method_input(args, kwargs)[field][:, 0].tolist()]


def _images_only(out, lam: float, frames: list[int]):
    """AGCI on the one-frame items of ``out`` (images); items of several frames (video chunks) as they were."""
    images = [i for i, t in enumerate(frames) if t == 1]
    injected = dict(zip(images, inject([out[i] for i in images], lam), strict=True)) if images else {}
    return [injected.get(i, item) for i, item in enumerate(out)]


def _record(modality: str, n: int) -> None:
    """Count a call of the op on ``n`` items (see ITEMS and CALLS)."""
    if n:
        ITEMS[modality] += n
        CALLS.append((modality, n))


def _wrapped(base: type, method_name: str, default_modality: str, on: OnVllm):
    original = getattr(base, method_name)

    def method(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        modality = _modality(default_modality, args, kwargs)
        if self.agci_lambda == 0 or (modality == "video" and not self.agci_videos) or _count(out) == 0:
            return out
        if on.frames_field:  # images and video chunks in one call: the images only (videos are refused)
            frames = _frames(on.frames_field, args, kwargs)
            _record(modality, frames.count(1))
            return _images_only(out, self.agci_lambda, frames)
        _record(modality, _count(out))
        return _inject(out, self.agci_lambda, getattr(self, on.width_attr) if on.width_attr else None)

    method.__name__ = method_name
    method.__doc__ = f"vLLM's {method_name}, then AGCI on each {default_modality} item (one context per item)."
    return method


def agci_class(family: Family) -> type:
    """The subclass of vLLM's class for ``family`` (built once per process)."""
    name = PREFIX + family.vllm.architecture
    if name in _CLASSES:
        return _CLASSES[name]
    base = _vllm_class(family.vllm.architecture)

    def __init__(self, *, vllm_config, prefix: str = ""):
        base.__init__(self, vllm_config=vllm_config, prefix=prefix)
        model_config = vllm_config.model_config
        found = checks.settings(model_config.hf_config, model_config.architectures, checks.vllm_version())
        self.agci_lambda = found[1] if found else 0.0
        self.agci_videos = bool(found) and read_videos(model_config.hf_config)

    on = family.vllm
    body = {"__init__": __init__, "__module__": __name__, "__qualname__": name,
            on.images_method: _wrapped(base, on.images_method, "image", on)}  # fmt: skip
    if on.videos_method:
        body[on.videos_method] = _wrapped(base, on.videos_method, "video", on)
    cls = _CLASSES[name] = type(name, (base,), body)
    return cls


def __getattr__(name: str) -> type:  # vLLM's lazy registry imports "agci.vllm.models:AgciX"
    if not name.startswith(PREFIX):
        raise AttributeError(name)
    return agci_class(_family_of(name))


def register_all() -> None:
    """Register agci's class for each family served on vLLM, under the architecture name its checkpoints declare
    (lazily: nothing of vLLM's models is imported here)."""
    from vllm import ModelRegistry

    for family in FAMILIES.values():
        if isinstance(family.vllm, OnVllm):
            ModelRegistry.register_model(family.vllm.architecture, f"{__name__}:{PREFIX}{family.vllm.architecture}")


def stats(model=None) -> dict:
    """What AGCI was applied to in this process so far: ``{"items": {"image": n, ...}, "calls": [[modality, n],
    ...]}`` (``LLM.apply_model(stats)`` asks each worker; ``model`` is what it passes)."""
    return {"items": dict(ITEMS), "calls": [list(c) for c in CALLS]}


@contextlib.contextmanager
def stock_classes():
    """vLLM's own classes registered again for the architectures agci serves, while the block runs (in this
    process): an engine built in it runs stock vLLM, to compare with agci in one process. vLLM remembers the class
    of each model path it has loaded, so give such an engine a path no engine of this process has used."""
    from vllm import ModelRegistry

    for family in FAMILIES.values():
        if isinstance(family.vllm, OnVllm):
            own = _vllm_class(family.vllm.architecture)
            ModelRegistry.register_model(family.vllm.architecture, f"{own.__module__}:{own.__name__}")
    try:
        yield
    finally:
        register_all()
