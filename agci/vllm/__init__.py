"""AGCI on vLLM: a ``vllm.general_plugins`` entry point (see pyproject.toml) that vLLM loads in each of its processes.

It reads the same config.json key as the transformers path (or ``--hf-overrides``), refuses at start-up a setting it
cannot carry out (:mod:`agci.vllm.checks`), and serves each family that :attr:`agci.registry.Family.vllm` names
through a subclass of vLLM's own model class that applies the op to each image item's embeddings
(:mod:`agci.vllm.models`). Nothing here is imported by the rest of agci.
"""

from __future__ import annotations

_REGISTERED = False


def register() -> None:
    """The entry point: register agci's model classes with vLLM and check every model config it builds. vLLM calls
    it once in each process it starts; a second call in one process does nothing."""
    global _REGISTERED
    if _REGISTERED:
        return
    _REGISTERED = True
    from . import checks, models

    checks.install()
    models.register_all()
