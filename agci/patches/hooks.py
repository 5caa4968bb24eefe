"""The hook kinds of the transformers engine: each is one object that says which method it hooks, which wrappers it
puts where, and so which names a revert takes off an instance.

A wrapper calls the original method, then applies AGCI (:func:`agci.grouping.inject`) to the per-image features,
with lambda read from the model's config at call time. Nothing else of transformers is touched: the language model
receives the injected features through the model's own scatter into the input embeddings.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import compat
from ..configs import read_lambda, read_scope, read_videos
from ..grouping import image_lengths, inject, placeholder_ids, sizes_argument_lengths
from ..registry import FAMILIES, Family
from .discovery import family_classes, hook_class, inner_model

_VIDEO = threading.local()  # set while get_video_features runs, so that its call into get_image_features is skipped
_PROJECTING = threading.local()  # (model, grouping ids) while the forward of a model hooked at its projector runs


@dataclass(frozen=True)
class Wrapper:
    """One method to wrap: on the inner model's class (``"inner"``), the outer model's (``"outer"``) or the hooked
    module's (``"hook"``: ``Family.hook_class``); ``wrap(original)`` returns the wrapper."""

    where: str
    name: str
    wrap: Callable


# ----- what the grouping rules read during a call: input_ids, or stand-ins recovered from inputs_embeds


class _GroupingIds:
    """What the grouping rules read for one forward, generate or :func:`grouping_input_ids` block: the input_ids,
    or stand-ins found from ``inputs_embeds`` (only when the features are asked for)."""

    def __init__(self, input_ids=None, inputs_embeds=None, model=None, token_id=None):
        self._ids, self._embeds, self._model, self._token_id = input_ids, inputs_embeds, model, token_id

    def get(self) -> torch.Tensor | None:
        if self._ids is None and self._embeds is not None:
            self._ids = placeholder_ids(self._embeds, self._model.get_input_embeddings(), self._token_id)
            self._embeds = None
        return self._ids


def _grouping_ids_of(model, family: Family, args, kwargs) -> _GroupingIds:
    """The input_ids of a forward or generate call (an empty ``[B, 0]`` counts as none, as generate passes when
    given inputs_embeds), else its inputs_embeds to recover them from."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    if isinstance(ids, torch.Tensor) and ids.numel():
        return _GroupingIds(ids)
    embeds = kwargs.get("inputs_embeds")
    if isinstance(embeds, torch.Tensor) and embeds.ndim == 3:
        return _GroupingIds(None, embeds, model, getattr(model.config, family.image_token_attr))
    return _GroupingIds()


@contextlib.contextmanager
def _stashed_input_ids(module, grouping_ids: _GroupingIds):
    previous = module.__dict__.get("_agci_input_ids")
    module.__dict__["_agci_input_ids"] = grouping_ids
    try:
        yield
    finally:
        module.__dict__["_agci_input_ids"] = previous


def _stashed_grouping_ids(module) -> torch.Tensor | None:
    stash = module.__dict__.get("_agci_input_ids")
    return stash.get() if stash is not None else None


@contextlib.contextmanager
def _projecting(model, grouping_ids: _GroupingIds):
    previous = getattr(_PROJECTING, "context", None)
    _PROJECTING.context = (model, grouping_ids)
    try:
        yield
    finally:
        _PROJECTING.context = previous


@contextlib.contextmanager
def grouping_input_ids(model: torch.nn.Module, input_ids: torch.Tensor):
    """Within this block, image features that ``model`` computes outside its forward and generate (a direct
    ``get_image_features`` call, or Llama 4's projector) are grouped into images by ``input_ids``, as the forward
    would group them. Needed only by families whose grouping reads input_ids (``tile_runs``, ``global_view``)."""
    inner, model_type = inner_model(model)
    if FAMILIES[model_type].hook == "multi_modal_projector":
        with _projecting(inner, _GroupingIds(input_ids)):
            yield
    else:
        with _stashed_input_ids(inner, _GroupingIds(input_ids)):
            yield


def _marked(wrapper, original):
    wrapper.__agci_original__ = original  # what tells a wrapped method, and what undo puts back
    return wrapper


# ----- the wrappers


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
                lengths = image_lengths(family, self.config, features, _stashed_grouping_ids(self))
            elif family.sizes_argument and isinstance(features, torch.Tensor) and features.ndim == 2:
                sizes = kwargs.get(family.sizes_argument, args[1] if len(args) > 1 else None)
                lengths = sizes_argument_lengths(family, self.config, sizes)
            return inject(features, lam, batch_wide, lengths)

        output = compat.map_image_features(output, apply)
        return output.to_tuple() if wants_tuple else output

    return _marked(get_image_features, original)


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

    return _marked(get_video_features, original)


def _wrap_within(context: Callable, original, family: Family):
    """``original`` run inside ``context(self, grouping_ids)``: its call's input_ids (or inputs_embeds to recover them
    from) handed to the hook that runs inside it. The contexts: :func:`_stashed_input_ids` (inner model forward, for
    families whose grouping reads input_ids), :func:`_stashed_in_inner_model` (outer generate) and
    :func:`_projecting` (forward and generate of a model hooked at its multi_modal_projector: the projector, called
    inside, finds the model (its config) and the input_ids there; generate too, since transformers 5.25 projects the
    images before the first forward)."""

    @functools.wraps(original)
    def method(self, *args, **kwargs):
        with context(self, _grouping_ids_of(self, family, args, kwargs)):
            return original(self, *args, **kwargs)

    return _marked(method, original)


def _stashed_in_inner_model(model, grouping_ids: _GroupingIds):
    """Outer model generate: 5.x may compute image features before the first forward (InternVL)."""
    return _stashed_input_ids(inner_model(model)[0], grouping_ids)


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
        model, grouping_ids = context
        lam = read_lambda(model.config)
        if lam == 0.0:
            return output
        batch_wide = read_scope(model.config) == "reference" and family.reference_mean == "batch"
        lengths = image_lengths(family, model.config, output, grouping_ids.get())
        return inject(output, lam, batch_wide, lengths)

    return _marked(forward, original)


# ----- the hook kinds


class HookKind:
    """One way of hooking a family (``Family.hook``): the method whose wrapper marks a class or instance as patched,
    and every wrapper the kind puts on a family's classes."""

    name: str
    wrapped_names: tuple[str, ...]  # every method name the kind may wrap: what a revert takes off an instance

    def hooked_method(self, model_type: str) -> tuple[type, str]:
        raise NotImplementedError

    def wrappers(self, family: Family, inner: type) -> list[Wrapper]:
        """The wrappers for one family, the hooked method's first."""
        raise NotImplementedError


class ImageFeaturesHook(HookKind):
    """The inner model's get_image_features (and get_video_features where it has one); families whose grouping
    reads input_ids also keep them from the inner forward and the outer generate."""

    name = "get_image_features"
    wrapped_names = ("get_image_features", "get_video_features", "forward", "generate")

    def hooked_method(self, model_type: str) -> tuple[type, str]:
        return family_classes(model_type)[0], "get_image_features"

    def wrappers(self, family: Family, inner: type) -> list[Wrapper]:
        out = [Wrapper("inner", "get_image_features", functools.partial(_wrap_image_features, family=family))]
        if "get_video_features" in inner.__dict__:
            out.append(Wrapper("inner", "get_video_features", _wrap_video_features))
        if family.reads_input_ids:
            out += [
                Wrapper("inner", "forward", functools.partial(_wrap_within, _stashed_input_ids, family=family)),
                Wrapper("outer", "generate", functools.partial(_wrap_within, _stashed_in_inner_model, family=family)),
            ]
        return out


class ProjectorHook(HookKind):
    """The forward of the module ``Family.hook_class`` (Llama 4's multi_modal_projector), fed the model and its
    input_ids by the model's forward and generate."""

    name = "multi_modal_projector"
    wrapped_names = ("forward", "generate")

    def hooked_method(self, model_type: str) -> tuple[type, str]:
        return hook_class(model_type), "forward"

    def wrappers(self, family: Family, inner: type) -> list[Wrapper]:
        feeding = functools.partial(_wrap_within, _projecting, family=family)
        return [
            Wrapper("hook", "forward", functools.partial(_wrap_projector, family=family)),
            Wrapper("inner", "forward", feeding),
            Wrapper("outer", "generate", feeding),
        ]


HOOK_KINDS: dict[str, HookKind] = {kind.name: kind for kind in (ImageFeaturesHook(), ProjectorHook())}
WRAPPED_NAMES = tuple(dict.fromkeys(n for kind in HOOK_KINDS.values() for n in kind.wrapped_names))


def hook_kind(model_type: str) -> HookKind:
    return HOOK_KINDS[FAMILIES[model_type].hook]


def hooked_method(model_type: str) -> tuple[type, str]:
    """(class, method name) that the family's hook wraps: the inner model's get_image_features, or the projector's
    forward."""
    return hook_kind(model_type).hooked_method(model_type)
