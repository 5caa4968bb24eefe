"""Every fact about transformers versions that agci relies on lives here."""

from __future__ import annotations

import torch

SUPPORTED_TRANSFORMERS = ">=4.57,<6"


def transformers_version() -> tuple[int, int]:
    import transformers

    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int(minor)


def image_features_per_image(output) -> list[torch.Tensor]:
    """The per-image ``[n_i, D]`` tensors from ``get_image_features``.

    4.57 returns a list/tuple of tensors or one ``[n, T, D]`` tensor; 5.x returns an output dataclass
    whose ``pooler_output`` holds the same thing.
    """
    features = getattr(output, "pooler_output", output)
    if isinstance(features, torch.Tensor):
        return list(features.unbind(0)) if features.ndim == 3 else [features]
    return list(features)
