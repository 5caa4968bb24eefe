"""Every fact about transformers versions that agci relies on lives here.

agci supports transformers 4.57.x and 5.x (``SUPPORTED_TRANSFORMERS``); older versions are refused,
so nothing here branches for them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

SUPPORTED_TRANSFORMERS = ">=4.57,<6"


def transformers_version() -> tuple[int, int]:
    import transformers

    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int(minor)


def transformers_at_least(version: str) -> bool:
    """The installed transformers is ``version`` ("5.3", "4.57") or newer (a family's ``since``)."""
    wanted = tuple(int(p) for p in version.split(".")[:2])
    return transformers_version() >= wanted


def check_transformers_supported() -> None:
    major, minor = transformers_version()
    if (major, minor) < (4, 57) or major >= 6:
        import transformers

        raise RuntimeError(
            f"agci's patches support transformers {SUPPORTED_TRANSFORMERS} (4.57.x and 5.x); found "
            f"{transformers.__version__}. Install a supported version, e.g. pip install 'transformers>=4.57,<6'."
        )


def returns_output_dataclass() -> bool:
    """5.x: ``get_image_features`` returns an output dataclass whose ``pooler_output`` holds the features;
    4.57 returns them directly (Qwen3-VL: a 2-tuple ``(per_image, deepstack)``)."""
    return transformers_version()[0] >= 5


def qwen_processors_need_qwen2_tokenizer() -> bool:
    """4.57's Qwen-VL processors accept only ``Qwen2TokenizerFast``; 5.x's take any fast tokenizer."""
    return transformers_version()[0] < 5


def qwen3_vl_takes_mm_token_type_ids() -> bool:
    """5.x's Qwen3-VL forward reads ``mm_token_type_ids`` (1 at image tokens), which its processor returns."""
    return transformers_version()[0] >= 5


def embedding_of(output) -> torch.Tensor:
    """The embedding from ``get_text_features`` / ``get_image_features`` of CLIP-like models: a tensor
    before 5.0, an output whose ``pooler_output`` holds it since."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def layer_output(output) -> torch.Tensor:
    """Hidden states from calling one encoder layer: a tuple before 5.0, a tensor since."""
    return output[0] if isinstance(output, tuple) else output


def image_features_per_image(output) -> list[torch.Tensor]:
    """The per-image ``[n_i, D]`` tensors from ``get_image_features``, whatever the version returned."""
    features = _features_of(output)
    if isinstance(features, torch.Tensor):
        return list(features.unbind(0)) if features.ndim == 3 else [features]
    return list(features)


def map_image_features(output, fn: Callable[[Any], Any]):
    """Return ``output`` with its per-image features replaced by ``fn(features)``; the structure is kept
    (dataclass, 4.57 Qwen3-VL pair, list, tuple or stacked tensor). Deepstack features are left alone."""
    if hasattr(output, "pooler_output"):
        output.pooler_output = fn(output.pooler_output)
        return output
    if _is_qwen3_vl_pair(output):
        return (fn(output[0]), output[1])
    return fn(output)


def _features_of(output):
    if hasattr(output, "pooler_output"):
        return output.pooler_output
    if _is_qwen3_vl_pair(output):
        return output[0]
    return output


def _is_qwen3_vl_pair(output) -> bool:
    """4.57 Qwen3-VL returns ``(per-image features, deepstack features)`` from ``get_image_features``."""
    return (
        isinstance(output, tuple)
        and len(output) == 2
        and isinstance(output[1], list | tuple)
        and _is_features(output[0])
    )


def _is_features(value) -> bool:
    return isinstance(value, torch.Tensor) or (
        isinstance(value, list | tuple) and all(isinstance(t, torch.Tensor) for t in value)
    )
