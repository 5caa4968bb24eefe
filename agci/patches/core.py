"""The transformers patches in one namespace, as before they were split by idea: the grouping rules and ``inject``
(:mod:`agci.grouping`, engine-neutral), finding a family's classes (:mod:`.discovery`), the hook kinds and their
wrappers (:mod:`.hooks`), and putting them on and off (:mod:`.lifecycle`). ``import agci.patches.core`` keeps
working; new code imports from those modules."""

from ..grouping import (  # noqa: F401
    global_view_lengths,
    image_lengths,
    inject,
    placeholder_ids,
    pooled_patch_lengths,
    sizes_argument_lengths,
    tiles_per_image,
    token_runs,
)
from ..registry import FAMILIES, SUPPORTED_MODEL_TYPES, Family  # noqa: F401
from .discovery import (  # noqa: F401
    check_model_type,
    check_runs,
    family_classes,
    hook_class,
    inner_model,
    installed_families,
    present_families,
)
from .handles import PatchHandle  # noqa: F401
from .hooks import HOOK_KINDS, grouping_input_ids, hook_kind, hooked_method  # noqa: F401
from .key_checks import check_lambda_placement, is_patched, using_lambda, watch_lambda_key  # noqa: F401
from .lifecycle import apply_agci, patch, revert_agci, unpatch  # noqa: F401
