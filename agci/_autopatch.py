"""``AGCI_AUTOPATCH=1``: patch every supported family in this interpreter as its modeling module loads.

``agci_autopatch.pth`` (installed into site-packages with agci) imports this module at interpreter
start-up when the variable is set, so processes that a launcher starts anew (torchrun, accelerate,
LLaMA-Factory's re-launch) get AGCI as well. Nothing heavy is imported at start-up: an import hook
patches a family right after transformers loads its modeling module, and once ``transformers.modeling_utils``
loads, every model built warns when its config carries lambda where agci does not act on it (an unsupported
model type, or under ``text_config``).
"""

from __future__ import annotations

import importlib.abc
import os
import sys

from .registry import FAMILIES

ENV = "AGCI_AUTOPATCH"
_KEY_CHECK = "the check of the config key"
# module -> what to patch once it is imported: a model type, or the key check (transformers' PreTrainedModel)
_WATCHED = {family.module: model_type for model_type, family in FAMILIES.items()}
_WATCHED["transformers.modeling_utils"] = _KEY_CHECK


def _patch(model_type: str) -> None:
    try:
        from .patches.key_checks import watch_lambda_key
        from .patches.lifecycle import patch

        if model_type == _KEY_CHECK:
            watch_lambda_key()
        else:
            patch(model_type)
    except Exception as exc:  # noqa: BLE001 - start-up must go on, but loudly
        print(f"agci: {ENV}=1 but patching {model_type} failed: {exc!r}", file=sys.stderr)


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _WATCHED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_then_patch(module):
            exec_module(module)
            _patch(_WATCHED[name])

        spec.loader.exec_module = exec_then_patch
        return spec


def install() -> None:
    """Patch the families already imported and hook the others; idempotent."""
    if not any(isinstance(f, _PatchAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchAfterImport())
    for module, model_type in _WATCHED.items():
        if module in sys.modules:
            _patch(model_type)


if os.environ.get(ENV) == "1":
    install()
