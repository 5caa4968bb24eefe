"""Encoder wrappers: one class per resampler kind that turns (images, texts) into the query outputs of every
resampler layer, a ``(batch, layers, queries, hidden)`` tensor, and loads its checkpoint.

BLIP-2's stage-1 Q-Former (``Blip2ForImageTextRetrieval``: text and queries share self-attention, only queries
attend to the image) and InstructBLIP's Q-Former (text = the instruction) are built in; another Q-Former-like
module (an Idefics2 perceiver, say) needs one small class registered with ``register_encoder``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

ENCODERS: dict[str, type] = {}


def register_encoder(model_type: str):
    def wrap(cls):
        ENCODERS[model_type] = cls
        return cls

    return wrap


class ResamplerEncoder:
    """The contract: ``encode(images, texts)`` -> ``(B, layers, queries, hidden)`` of query outputs;
    ``resampler_parameters()`` are what joint fine-tuning trains."""

    model_type: str = ""
    model_class: str = ""  # the transformers class that load_encoder builds the checkpoint with

    def __init__(self, model, processor):
        self.model, self.processor = model.eval(), processor

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, images: Sequence, texts: Sequence[str] | None) -> torch.Tensor:
        raise NotImplementedError

    def resampler_parameters(self) -> list[torch.nn.Parameter]:
        raise NotImplementedError

    def _image_and_queries(self, images) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frozen vision-encoder output, its attention mask, and the learned queries expanded to the batch."""
        pixels = self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        with torch.no_grad():  # the vision encoder stays frozen in every setting of the study
            image_embeds = self.model.vision_model(pixel_values=pixels.to(self.device, self.model.dtype))[0]
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        return image_embeds, image_mask, self.model.query_tokens.expand(image_embeds.shape[0], -1, -1)

    def _text(self, tokenizer, texts, queries) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids of ``texts`` and the attention mask over queries followed by those tokens."""
        tok = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True)
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        ones = torch.ones(queries.shape[:-1], dtype=mask.dtype, device=self.device)
        return ids, torch.cat([ones, mask], 1)

    @staticmethod
    def _query_layers(out, n_queries: int) -> torch.Tensor:
        return torch.stack([h[:, :n_queries] for h in out.hidden_states[1:]], 1)


@register_encoder("blip-2")
class Blip2QFormer(ResamplerEncoder):
    """BLIP-2 stage 1: with text, queries and text tokens share self-attention (the ITM path)."""

    model_type = "blip-2"
    model_class = "Blip2ForImageTextRetrieval"

    def encode(self, images, texts=None) -> torch.Tensor:
        m = self.model
        image_embeds, image_mask, queries = self._image_and_queries(images)
        if texts is None:
            out = m.qformer(query_embeds=queries, encoder_hidden_states=image_embeds,
                            encoder_attention_mask=image_mask, output_hidden_states=True)  # fmt: skip
        else:
            ids, mask = self._text(self.processor.tokenizer, texts, queries)
            out = m.qformer(query_embeds=m.embeddings(input_ids=ids, query_embeds=queries),
                            query_length=queries.shape[1], attention_mask=mask, encoder_hidden_states=image_embeds,
                            encoder_attention_mask=image_mask, output_hidden_states=True)  # fmt: skip
        return self._query_layers(out, queries.shape[1])

    def resampler_parameters(self):
        return [self.model.query_tokens, *self.model.qformer.parameters(), *self.model.embeddings.parameters()]


@register_encoder("instructblip")
class InstructBlipQFormer(ResamplerEncoder):
    """InstructBLIP: the instruction (the task's text) is the Q-Former's text input."""

    model_type = "instructblip"
    model_class = "InstructBlipForConditionalGeneration"

    def encode(self, images, texts=None) -> torch.Tensor:
        image_embeds, image_mask, queries = self._image_and_queries(images)
        ids, mask = self._text(self.processor.qformer_tokenizer, texts or [""] * len(images), queries)
        out = self.model.qformer(input_ids=ids, attention_mask=mask, query_embeds=queries,
                                 encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask,
                                 output_hidden_states=True)  # fmt: skip
        return self._query_layers(out, queries.shape[1])

    def resampler_parameters(self):
        return [self.model.query_tokens, *self.model.qformer.parameters()]


def torch_dtype(name: str) -> torch.dtype:
    """``float32``, ``bfloat16``, ``float16`` ... as a torch dtype; refused in words otherwise."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}; use float32, bfloat16 or float16")
    return dtype


def encoder_type(path: str | Path) -> str:
    """The checkpoint's model type, from its config alone (no weights read); refused without an encoder wrapper."""
    from ..inputs import read_config

    model_type = read_config(path).model_type
    if model_type not in ENCODERS:
        raise ValueError(
            f"{path}: model type {model_type!r} has no resampler encoder wrapper; built in: {', '.join(ENCODERS)} "
            "(add one with agci.resampler_probes.encoders.register_encoder)"
        )
    return model_type


def load_encoder(path: str | Path, device: str = "cpu", dtype: str = "float32") -> ResamplerEncoder:
    """The registered encoder wrapper of a checkpoint's model type (BLIP-2 stage-1 retrieval and InstructBLIP
    are built in), with the checkpoint loaded through the wrapper's ``model_class``."""
    import transformers

    model_type = encoder_type(path)
    encoder = ENCODERS[model_type]
    cls = getattr(transformers, encoder.model_class, None)
    if cls is None:
        raise ValueError(
            f"the encoder wrapper {encoder.__name__} of {model_type!r} names model_class {encoder.model_class!r}, "
            "which transformers does not have; set it to the transformers class that loads the checkpoint"
        )
    model = cls.from_pretrained(path, dtype=torch_dtype(dtype)).to(device)
    return encoder(model, transformers.AutoProcessor.from_pretrained(path))
