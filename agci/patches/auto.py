"""``AutoAGCIModelForImageTextToText``: load any supported VLM with AGCI on (instance-level patch)."""

from __future__ import annotations

import copy

from ..configs import read_lambda, read_scope, read_videos, write_lambda
from .discovery import check_model_type, check_runs
from .key_checks import check_lambda_placement
from .lifecycle import apply_agci


def _checked_config(config, global_context_broadcast_lambda):
    """A copy of ``config`` with the override written into it (the caller's config, maybe a live model's, is left
    as it is), checked before any weight is loaded."""
    check_model_type(config.model_type)
    check_runs(config.model_type)  # before any weight is loaded: a release whose own model of the type fails
    config = copy.deepcopy(config)
    if global_context_broadcast_lambda is not None:
        write_lambda(config, global_context_broadcast_lambda)
    read_lambda(config)
    read_scope(config)
    read_videos(config)
    check_lambda_placement(config)
    return config


class AutoAGCIModelForImageTextToText:
    """Like ``transformers.AutoModelForImageTextToText``, with AGCI applied to the loaded instance.

    ``global_context_broadcast_lambda`` overrides the value in config.json; without it the checkpoint's
    value is used (0 when absent). Bad values are refused before any weight is loaded."""

    def __init__(self):
        raise OSError("use AutoAGCIModelForImageTextToText.from_pretrained(...) or .from_config(...)")

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, *model_args, global_context_broadcast_lambda=None, **kwargs
    ):
        from transformers import AutoConfig, AutoModelForImageTextToText

        config = kwargs.pop("config", None)
        if config is None:
            config_kwargs = {
                k: kwargs[k] for k in ("trust_remote_code", "revision", "cache_dir", "token") if k in kwargs
            }
            config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **config_kwargs)
        config = _checked_config(config, global_context_broadcast_lambda)
        model = AutoModelForImageTextToText.from_pretrained(
            pretrained_model_name_or_path, *model_args, config=config, **kwargs
        )
        return apply_agci(model)

    @classmethod
    def from_config(cls, config, global_context_broadcast_lambda=None, **kwargs):
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_config(
            _checked_config(config, global_context_broadcast_lambda), **kwargs
        )
        return apply_agci(model)
