"""Loading a supported VLM with AGCI on, and turning prompts and images into its inputs.

One path for every tool that runs a checkpoint (the probes, the lmms-eval model): the config is read
and the model type checked first, then the processor (which must have a chat template), then the
weights through ``AutoAGCIModelForImageTextToText``, so that bad input is refused before any weight
is loaded. Prompts go through the model's own processor and chat template, left padded.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class LoadedVLM:
    """A patched model, its processor, and the lock that guards the processor's tokenizer."""

    model: torch.nn.Module
    processor: object
    name: str
    # held around every use of the processor's tokenizer, which may not be used from two threads at once
    # (a fast tokenizer raises "Already borrowed"); agci.bias.model_runs.prefetched encodes on a worker thread
    tokenizer_lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)


def load_config(path: str | Path, trust_remote_code: bool = False):
    """The checkpoint's config, refused (ValueError naming the supported types) unless agci supports it, or
    (naming the key) when an AGCI key holds a bad value."""
    from .configs import read_lambda, read_scope, read_videos
    from .inputs import read_config
    from .patches.discovery import check_model_type

    config = read_config(path, trust_remote_code)
    check_model_type(config.model_type, where=f"{path}: ")
    try:
        read_lambda(config)
        read_scope(config)
        read_videos(config)
    except ValueError as exc:
        raise ValueError(f"{path}/config.json: {exc}") from exc
    return config


def load_processor(path: str | Path, trust_remote_code: bool = False, **processor_kwargs):
    """The checkpoint's processor, with a chat template (else ValueError) and a left-padding tokenizer."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code, **processor_kwargs)
    if getattr(processor, "chat_template", None) is None:
        raise ValueError(
            f"{path}: the processor has no chat template, so prompts cannot be built the way the model was "
            "trained; add chat_template.jinja (or chat_template in processor_config.json) to the checkpoint"
        )
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def load_vlm(
    path: str | Path,
    *,
    global_context_broadcast_lambda: float | None = None,
    dtype: str = "auto",
    device: str | None = None,
    device_map: str | None = None,
    attn: str | None = None,
    trust_remote_code: bool = False,
    processor_kwargs: dict | None = None,
    config=None,
) -> LoadedVLM:
    """Model (AGCI applied, in eval mode) and processor from a local folder or hub id.

    ``global_context_broadcast_lambda`` overrides config.json (None: the checkpoint's value). ``dtype``:
    ``auto`` or a torch dtype name. ``device`` moves the model unless ``device_map`` places it.
    ``config``: one already read with :func:`load_config`."""
    from .patches.auto import AutoAGCIModelForImageTextToText

    config = config if config is not None else load_config(path, trust_remote_code)
    processor = load_processor(path, trust_remote_code, **(processor_kwargs or {}))
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype)
    if attn:
        kwargs["attn_implementation"] = attn
    if device_map:
        kwargs["device_map"] = device_map
    model = AutoAGCIModelForImageTextToText.from_pretrained(
        path, config=config, global_context_broadcast_lambda=global_context_broadcast_lambda, **kwargs
    ).eval()
    if device and not device_map:
        model.to(device)
    return LoadedVLM(model, processor, str(path))


def chat_messages(
    text: str, n_images: int = 1, answer: str | None = None, system_prompt: str | None = None
) -> list[dict]:
    """A user turn of ``n_images`` images then ``text``; the system prompt before it and the assistant's
    answer after it when given."""
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
    messages = [{"role": "user", "content": content}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def model_inputs(model: torch.nn.Module, batch) -> dict:
    """A processor's output ready for ``model``: on its device, floats in its dtype, without the
    ``token_type_ids`` that some tokenizers return for models whose forward (and generate) refuses them,
    and without ``labels`` (PaliGemma's processor returns them; they are for training)."""
    batch = dict(batch)
    batch.pop("labels", None)
    if "token_type_ids" in batch and "token_type_ids" not in inspect.signature(model.forward).parameters:
        batch.pop("token_type_ids")
    param = next(model.parameters())
    return {
        k: v.to(param.device, param.dtype) if v.is_floating_point() else v.to(param.device) for k, v in batch.items()
    }


def processor_inputs(vlm: LoadedVLM, texts: list[str], images: list[list]) -> dict:
    """Model inputs for a batch of prompts (already chat-templated), each with its list of images (an empty
    list for none), left padded."""
    kwargs = {"text": texts, "return_tensors": "pt", "padding": True}
    if any(images):
        kwargs["images"] = images  # one list per prompt: Gemma3n's processor (transformers <= 5.6) needs it
    with vlm.tokenizer_lock:
        batch = vlm.processor(**kwargs)
    return model_inputs(vlm.model, batch)
