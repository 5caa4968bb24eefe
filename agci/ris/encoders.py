"""CLIP, SigLIP and SigLIP2 through transformers: every layer's patch tokens, projected into the text
embedding space, and text features (sentence and head noun phrase)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

SUPPORTED = ("clip", "siglip", "siglip2")


@dataclass
class PatchTokens:
    layers: list[torch.Tensor]  # per layer (1-based index = list index + 1): (B, gh * gw, D), no CLS
    grid: list[tuple[int, int]]  # per image (gh, gw)


class Encoder:
    def __init__(self, model, processor, family: str):
        if family not in SUPPORTED:
            raise ValueError(f"model type {family!r} is not supported; supported: {', '.join(SUPPORTED)}")
        self.model, self.processor, self.family = model.eval(), processor, family

    @staticmethod
    def config_of(path: str):
        """The checkpoint's transformers config (no weights read); refused unless its model type is supported."""
        from ..inputs import read_config

        config = read_config(path)
        if config.model_type not in SUPPORTED:
            raise ValueError(
                f"{path}: model type {config.model_type!r} is not supported; supported: {', '.join(SUPPORTED)}"
            )
        return config

    @staticmethod
    def family_of(path: str) -> str:
        """The checkpoint's model type, from its config alone (no weights read); refused unless supported."""
        return Encoder.config_of(path).model_type

    @staticmethod
    def vision_layers_of(path: str) -> int:
        """The number of vision layers of a supported checkpoint, from its config alone (no weights read)."""
        return Encoder.config_of(path).vision_config.num_hidden_layers

    @classmethod
    def load(cls, path: str, device: str = "cpu") -> Encoder:
        from transformers import AutoModel, AutoProcessor

        family = cls.family_of(path)
        return cls(AutoModel.from_pretrained(path).to(device), AutoProcessor.from_pretrained(path), family)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def text_length(self) -> int:
        """Tokens the text model takes: the tokenizer's length, and never more than its position embeddings
        (a tokenizer saved without ``model_max_length`` would otherwise pass longer texts through)."""
        positions = self.model.config.text_config.max_position_embeddings
        return min(self.processor.tokenizer.model_max_length or positions, positions)

    @property
    def num_layers(self) -> int:
        return self.model.config.vision_config.num_hidden_layers

    @property
    def vision(self):
        return self.model.vision_model

    def pixel_inputs(self, images) -> dict:
        batch = self.processor.image_processor(images=list(images), return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    @torch.no_grad()
    def patch_tokens(self, images) -> PatchTokens:
        inputs = self.pixel_inputs(images)
        out = self.vision(**inputs, output_hidden_states=True)
        hidden = list(out.hidden_states[1:])
        if self.family == "clip":
            side = int((hidden[0].shape[1] - 1) ** 0.5)
            return PatchTokens([h[:, 1:] for h in hidden], [(side, side)] * hidden[0].shape[0])
        if self.family == "siglip":
            side = int(hidden[0].shape[1] ** 0.5)
            return PatchTokens(hidden, [(side, side)] * hidden[0].shape[0])
        grid = [tuple(int(x) for x in s) for s in inputs["spatial_shapes"]]  # siglip2: per image, padded
        return PatchTokens(hidden, grid)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens of any layer through the final layer norm (and CLIP's visual projection)."""
        tokens = self.vision.post_layernorm(tokens)
        return self.model.visual_projection(tokens) if self.family == "clip" else tokens

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings."""
        from ..compat import embedding_of

        padding = "max_length" if self.family in ("siglip", "siglip2") else True  # SigLIP was trained padded
        tok = self.processor.tokenizer(list(texts), padding=padding, truncation=True, max_length=self.text_length,
                                       return_tensors="pt")  # fmt: skip
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        if self.family != "clip":
            tok.pop("attention_mask", None)
        return torch.nn.functional.normalize(embedding_of(self.model.get_text_features(**tok)), dim=-1)

    @torch.no_grad()
    def image_features(self, images) -> torch.Tensor:
        """L2-normalised global image embeddings."""
        from ..compat import embedding_of

        return torch.nn.functional.normalize(
            embedding_of(self.model.get_image_features(**self.pixel_inputs(images))), dim=-1
        )
