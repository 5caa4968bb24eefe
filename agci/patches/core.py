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
import sys
import threading
import types
import warnings
import weakref

import torch

from .. import compat, configs
from ..configs import LAMBDA_KEY, misplaced_lambda, read_lambda, read_scope, read_videos, validate_lambda, write_lambda
from .families import FAMILIES, SUPPORTED_MODEL_TYPES, Family

_VIDEO = threading.local()  # set while get_video_features runs, so that its call into get_image_features is skipped
_PROJECTING = threading.local()  # (model, input_ids) while the forward of a model hooked at its projector runs


def inject(features, lam: float, batch_wide: bool = False, lengths: list[int] | None = None):
    """AGCI on features as ``get_image_features`` returns them: a list/tuple of ``[n_i, D]`` tensors (same
    type back) or a stacked ``[n, T, D]`` tensor, one image per entry or row; with ``lengths``, the tokens of
    each image, in order, over all entries (families whose entries are tiles or whole samples).
    ``batch_wide``: one mean over all of them, with the reference's formula (scope "reference" of a family
    whose reference code mixes the batch)."""
    from ..kernels import global_context_broadcast
    from ..kernels.reference import broadcast_eager_formula

    if isinstance(features, torch.Tensor):
        flat = features.reshape(-1, features.shape[-1])
        if batch_wide:
            return broadcast_eager_formula(flat, lam).view(features.shape)
        if lengths is not None:
            return global_context_broadcast(flat, lam, lengths).view(features.shape)
        return global_context_broadcast(features, lam)  # [N, D] is one image, [n, T, D] n images
    parts = list(features)
    if not parts:
        return features
    sizes = [p.shape[0] for p in parts]
    packed = torch.cat(parts)
    if batch_wide:
        out = broadcast_eager_formula(packed, lam).to(packed.dtype)
    else:
        out = global_context_broadcast(packed, lam, sizes if lengths is None else lengths)
    return type(features)(out.split(sizes)) if isinstance(features, tuple) else list(out.split(sizes))


def _runs(row: list[int], token_id: int) -> list[tuple[int, int]]:
    """(start, length) of each unbroken run of ``token_id`` in one row of input_ids."""
    runs: list[tuple[int, int]] = []
    for i, t in enumerate(row):
        if t != token_id:
            continue
        if runs and sum(runs[-1]) == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def global_view_lengths(input_ids: torch.Tensor | None, token_id: int, sizes: list[int]) -> list[int]:
    """Tokens of each image when ``sizes[b]`` tokens come per sample (Idefics3, SmolVLM): in each row, an
    image is its crop runs of ``token_id`` up to and including its global view, the run that follows the
    same marker token as the row's last run. Without input_ids, or when the runs do not add up, each
    sample's tokens count as one image (with a warning in the second case)."""
    if input_ids is None or input_ids.shape[0] != len(sizes):
        return [s for s in sizes if s]
    out = []
    for row, size in zip(input_ids.tolist(), sizes, strict=True):
        runs = _runs(row, token_id)
        if not size and not runs:
            continue
        marker = row[runs[-1][0] - 1] if runs and runs[-1][0] > 0 else None
        images, current = [], 0
        for start, length in runs:
            current += length
            if start > 0 and row[start - 1] == marker:
                images.append(current)
                current = 0
        if current or sum(images) != size:
            warnings.warn(
                f"agci: the image-token runs of a sample ({[n for _, n in runs]}) do not end in global views that "
                f"add up to its {size} image tokens; the sample's images share one global context",
                stacklevel=4,
            )
            images = [size]
        out += images
    return out


def tiles_per_image(input_ids: torch.Tensor | None, token_id: int, tokens_per_tile: int, n_tiles: int) -> list[int]:
    """Tiles of each image, in order: an image is one unbroken run of ``token_id`` in ``input_ids``.

    Without ``input_ids`` (features asked for outside a forward or generate), or when the runs do not
    match the tiles, every tile counts as its own image (with a warning in the second case)."""
    if input_ids is None:
        return [1] * n_tiles
    mask = torch.nn.functional.pad(input_ids == token_id, (0, 1)).flatten().to("cpu", torch.int8)
    edges = mask.diff(prepend=mask.new_zeros(1))
    runs = ((edges == -1).nonzero() - (edges == 1).nonzero()).flatten().tolist()
    if any(r % tokens_per_tile for r in runs) or sum(runs) != n_tiles * tokens_per_tile:
        warnings.warn(
            f"agci: the image-token runs in input_ids ({runs}) do not match {n_tiles} tiles of {tokens_per_tile} "
            "tokens; each tile gets its own global context",
            stacklevel=4,
        )
        return [1] * n_tiles
    return [r // tokens_per_tile for r in runs]


def image_lengths(family: Family, config, features, input_ids: torch.Tensor | None) -> list[int] | None:
    """Tokens per image over all entries of ``features``, by the family's grouping rule (None: one image
    per entry, as returned)."""
    token_id = getattr(config, family.image_token_attr)
    if family.grouping == "tile_runs" and isinstance(features, torch.Tensor) and features.ndim == 3:
        per_tile = features.shape[1]
        return [t * per_tile for t in tiles_per_image(input_ids, token_id, per_tile, features.shape[0])]
    if family.grouping == "global_view" and isinstance(features, list | tuple):
        return global_view_lengths(input_ids, token_id, [f.shape[0] for f in features])
    if family.grouping == "global_view" and isinstance(features, torch.Tensor) and input_ids is not None:
        # every sample's views stacked in one tensor (Aya Vision; Idefics3 up to transformers 5.6)
        per_row = (input_ids == token_id).sum(1).tolist()
        if sum(per_row) == features.numel() // features.shape[-1]:
            return global_view_lengths(input_ids, token_id, per_row)
    return None


def pooled_patch_lengths(position_ids: torch.Tensor, pooling: int) -> list[int]:
    """Tokens per image from patch positions ((-1, -1) marks padding), ``pooling`` x ``pooling`` patches per
    token: Gemma 4 before transformers split its features per image."""
    return ((position_ids != -1).all(-1).sum(-1) // pooling**2).tolist()


@contextlib.contextmanager
def _stashed_input_ids(module, input_ids):
    previous = module.__dict__.get("_agci_input_ids")
    module.__dict__["_agci_input_ids"] = input_ids
    try:
        yield
    finally:
        module.__dict__["_agci_input_ids"] = previous


def _input_ids_of(args, kwargs):
    ids = kwargs.get("input_ids", args[0] if args else None)
    return ids if isinstance(ids, torch.Tensor) else None


def _wrap_forward_keeping_ids(original):
    """Inner model forward: keep input_ids where get_image_features can find them (families whose grouping
    reads them)."""

    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        with _stashed_input_ids(self, _input_ids_of(args, kwargs)):
            return original(self, *args, **kwargs)

    forward.__agci_original__ = original
    return forward


def _wrap_generate_keeping_ids(original):
    """Outer model generate: 5.x may compute image features before the first forward (InternVL)."""

    @functools.wraps(original)
    def generate(self, *args, **kwargs):
        with _stashed_input_ids(_inner_model(self)[0], _input_ids_of(args, kwargs)):
            return original(self, *args, **kwargs)

    generate.__agci_original__ = original
    return generate


def _wrap_image_features(original, family: Family):
    @functools.wraps(original)
    def get_image_features(self, *args, **kwargs):
        if getattr(_VIDEO, "active", False):
            return original(self, *args, **kwargs)
        lam = read_lambda(self.config)
        if lam == 0.0:
            return original(self, *args, **kwargs)
        batch_wide = read_scope(self.config) == "reference" and family.reference_mean == "batch"
        wants_tuple = kwargs.get("return_dict") is False and compat.returns_output_dataclass()
        if wants_tuple:
            kwargs["return_dict"] = True
        output = original(self, *args, **kwargs)

        def apply(features):
            lengths = None
            if family.reads_input_ids:
                lengths = image_lengths(family, self.config, features, self.__dict__.get("_agci_input_ids"))
            elif family.sizes_argument and isinstance(features, torch.Tensor) and features.ndim == 2:
                positions = kwargs.get(family.sizes_argument, args[1] if len(args) > 1 else None)
                lengths = pooled_patch_lengths(positions, self.config.vision_config.pooling_kernel_size)
            return inject(features, lam, batch_wide, lengths)

        output = compat.map_image_features(output, apply)
        return output.to_tuple() if wants_tuple else output

    get_image_features.__agci_original__ = original
    return get_image_features


def _wrap_feeding_projector(original):
    """Forward (and generate) of a model hooked at its multi_modal_projector: the projector, called inside, finds
    the model (its config) and the input_ids here. generate too: since transformers 5.25 it projects the images
    before the first forward (get_image_features applies the projector there)."""

    @functools.wraps(original)
    def method(self, *args, **kwargs):
        previous = getattr(_PROJECTING, "context", None)
        _PROJECTING.context = (self, _input_ids_of(args, kwargs))
        try:
            return original(self, *args, **kwargs)
        finally:
            _PROJECTING.context = previous

    method.__agci_original__ = original
    return method


def _wrap_projector(original, family: Family):
    """The projector's forward: AGCI on its output (every image token of the batch: [N, D] as Llama 4's forward
    projects them, [tiles, T, D] from its get_image_features since transformers 5.25), grouped into images by the
    family's rule. Outside the model's forward and generate (no model to read lambda from, no input_ids) the
    projector is left alone."""

    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        context = getattr(_PROJECTING, "context", None)
        if context is None:
            return output
        model, input_ids = context
        lam = read_lambda(model.config)
        if lam == 0.0:
            return output
        batch_wide = read_scope(model.config) == "reference" and family.reference_mean == "batch"
        lengths = image_lengths(family, model.config, output, input_ids)
        return inject(output, lam, batch_wide, lengths)

    forward.__agci_original__ = original
    return forward


def _wrap_video_features(original):
    """Videos are left alone (also where get_video_features calls get_image_features, as in Qwen3-VL)
    unless ``global_context_broadcast_videos`` is true: then each video gets its own context, whatever the
    scope (the reference code has no video path to follow)."""

    @functools.wraps(original)
    def get_video_features(self, *args, **kwargs):
        previous = getattr(_VIDEO, "active", False)
        _VIDEO.active = True
        try:
            output = original(self, *args, **kwargs)
        finally:
            _VIDEO.active = previous
        lam = read_lambda(self.config)
        if lam == 0.0 or not read_videos(self.config):
            return output
        return compat.map_image_features(output, lambda f: inject(f, lam))

    get_video_features.__agci_original__ = original
    return get_video_features


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


def hooked_method(model_type: str) -> tuple[type, str]:
    """(class, method name) that the family's hook wraps: the inner model's get_image_features, or the projector's
    forward."""
    if FAMILIES[model_type].hook == "multi_modal_projector":
        return hook_class(model_type), "forward"
    return family_classes(model_type)[0], "get_image_features"


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


def _wrappers(family: Family, inner: type) -> list[tuple[str, str, object]]:
    """(``"inner"``, ``"outer"`` or ``"hook"`` (the module of ``hook_class``), method name, wrapper factory) for
    one family; the first is the hook itself (what tells that a class or instance is patched)."""
    if family.hook == "multi_modal_projector":
        projector = functools.partial(_wrap_projector, family=family)
        return [("hook", "forward", projector), ("inner", "forward", _wrap_feeding_projector),
                ("outer", "generate", _wrap_feeding_projector)]  # fmt: skip
    out = [("inner", "get_image_features", functools.partial(_wrap_image_features, family=family))]
    if "get_video_features" in inner.__dict__:
        out.append(("inner", "get_video_features", _wrap_video_features))
    if family.reads_input_ids:
        out += [("inner", "forward", _wrap_forward_keeping_ids), ("outer", "generate", _wrap_generate_keeping_ids)]
    return out


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
        for where, name, wrap in _wrappers(FAMILIES[model_type], inner):
            cls = classes[where]
            handle._set(cls, name, wrap(getattr(cls, name)))
        handle._set(inner, "__init__", _wrap_init(inner.__init__))
        handle._set(outer, LAMBDA_KEY, _lambda_property())  # undo() puts back an apply_agci property
    _watch_lambda_key(handle)
    _HANDLES.add(handle)
    return handle


def unpatch() -> None:
    """Undo every class-level patch."""
    for handle in list(_HANDLES):
        handle.undo()


# The key where nothing reads it: a warning when a model is built, and a refusal where AGCI is asked for by name.

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


def _watch_lambda_key(handle: PatchHandle) -> None:
    from transformers import PreTrainedModel

    if not _is_wrapped(PreTrainedModel, "post_init"):
        handle._set(PreTrainedModel, "post_init", _wrap_post_init(PreTrainedModel.post_init))


def watch_lambda_key() -> PatchHandle:
    """Check the config of every transformers model built from now on for a lambda that agci would ignore (see
    ``_check_lambda_key``); ``patch()`` does it too. Undone by ``unpatch()`` or the returned handle's ``undo()``."""
    handle = PatchHandle()
    _watch_lambda_key(handle)
    _HANDLES.add(handle)
    return handle


def is_patched(model) -> bool:
    """Whether AGCI acts on ``model``: a supported VLM inside it whose hooked method is wrapped (by class or on
    the instance)."""
    for family in FAMILIES.values():
        module = sys.modules.get(family.module)  # a model of the family has its module imported
        cls = getattr(module, family.hook_class or family.inner_class, None)
        name = "forward" if family.hook_class else "get_image_features"
        if cls is None:
            continue
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


def _inner_model(model: torch.nn.Module):
    inner_classes = {}
    for model_type in present_families():
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
    ``model.global_context_broadcast_lambda`` is a property, which Python looks up on the class: the outer
    class carries it (a plain proxy to each instance's config) while any of its instances is patched; it
    goes when the last one is reverted (:func:`revert_agci`) or garbage-collected. Returns ``model``."""
    inner, model_type = _inner_model(model)
    check_runs(model_type)
    if global_context_broadcast_lambda is not None:
        write_lambda(inner.config, global_context_broadcast_lambda)
    read_lambda(inner.config)
    check_lambda_placement(inner.config)
    wrappers = _wrappers(FAMILIES[model_type], type(inner))
    hooked = hook_class(model_type)
    hook_modules = [m for m in inner.modules() if isinstance(m, hooked)] if hooked else []
    first = hook_modules[0] if wrappers[0][0] == "hook" and hook_modules else inner
    if _is_wrapped(type(first), wrappers[0][1]) or wrappers[0][1] in first.__dict__:
        return model  # patched already, by class or earlier on this instance
    _, outer = family_classes(model_type)
    outer_instance = next((m for m in model.modules() if isinstance(m, outer)), None)
    for where, name, wrap in wrappers:
        # the hooked modules: every projector inside (PEFT's modules_to_save keeps a copy beside the original)
        targets = {"inner": [inner], "outer": [outer_instance], "hook": hook_modules}[where]
        for target in targets:
            if target is not None:
                target.__dict__[name] = types.MethodType(wrap(getattr(type(target), name)), target)
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
        for name in ("get_image_features", "get_video_features", "forward", "generate"):
            if hasattr(module.__dict__.get(name), "__agci_original__"):  # bound methods show their function's
                del module.__dict__[name]
        _untrack_instance(type(module), id(module))
    return model
