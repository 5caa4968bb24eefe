"""Tiny random VLMs of each supported family, with a batch of two samples of different image sizes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from agci import compat

CONFIGS = json.loads((Path(__file__).parent / "fixtures" / "tiny_configs.json").read_text())
PAD = 0


@dataclass
class Case:
    model_type: str
    model: torch.nn.Module
    image_token: int
    samples: list[dict] = field(default_factory=list)  # per-sample inputs (batch of one)
    tiles: list[int] | None = None  # InternVL: tiles per image, in batch order

    def per_image(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-tile features (InternVL) joined into per-image ones; others pass through."""
        if self.tiles is None:
            return features
        out, i = [], 0
        for t in self.tiles:
            out.append(torch.cat(features[i : i + t]))
            i += t
        return out

    def batch(self, padding_side: str = "left") -> dict:
        """The samples as one padded batch."""
        longest = max(s["input_ids"].shape[1] for s in self.samples)
        ids, mask = [], []
        for s in self.samples:
            pad = torch.full((1, longest - s["input_ids"].shape[1]), PAD, dtype=torch.long)
            ones = torch.ones_like(s["input_ids"])
            parts = [pad, s["input_ids"]] if padding_side == "left" else [s["input_ids"], pad]
            mparts = [torch.zeros_like(pad), ones] if padding_side == "left" else [ones, torch.zeros_like(pad)]
            ids.append(torch.cat(parts, 1))
            mask.append(torch.cat(mparts, 1))
        out = {"input_ids": torch.cat(ids), "attention_mask": torch.cat(mask)}
        for key in self.samples[0]:
            if key not in out and key != "mm_token_type_ids":
                out[key] = torch.cat([s[key] for s in self.samples])
        if "mm_token_type_ids" in self.samples[0]:
            out["mm_token_type_ids"] = (out["input_ids"] == self.image_token).int()
        return out


def _ids(*parts) -> torch.Tensor:
    return torch.tensor([[1, *parts, 5, 6, 7]])


def build(model_type: str, seed: int = 0, **config_overrides) -> Case:
    import transformers

    torch.manual_seed(seed)
    d = dict(CONFIGS[model_type], **config_overrides)
    tiles = None
    if model_type == "llava":
        model = transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(**d))
        samples = [{"input_ids": _ids(*[100] * 4), "pixel_values": torch.randn(1, 3, 28, 28)} for _ in range(2)]
        token = 100
    elif model_type == "llava_next":
        model = transformers.LlavaNextForConditionalGeneration(transformers.LlavaNextConfig(**d))
        samples = [
            {
                "input_ids": _ids(*[100] * n),
                "pixel_values": torch.randn(1, 5, 3, 28, 28),
                "image_sizes": torch.tensor([hw]),
            }
            for n, hw in ((14, [40, 60]), (24, [30, 30]))
        ]
        token = 100
    elif model_type in ("qwen2_5_vl", "qwen3_vl"):
        if model_type == "qwen2_5_vl":
            model = transformers.Qwen2_5_VLForConditionalGeneration(transformers.Qwen2_5_VLConfig(**d))
            patch_dim = 1176
        else:
            model = transformers.Qwen3VLForConditionalGeneration(transformers.Qwen3VLConfig(**d))
            patch_dim = 1536
        samples = []
        for w in (4, 6):
            s = {
                "input_ids": _ids(122, *[120] * w, 123),
                "pixel_values": torch.randn(4 * w, patch_dim),
                "image_grid_thw": torch.tensor([[1, 4, w]]),
            }
            if model_type == "qwen3_vl" and compat.qwen3_vl_takes_mm_token_type_ids():
                s["mm_token_type_ids"] = (s["input_ids"] == 120).int()
            samples.append(s)
        token = 120
    elif model_type == "gemma3n":
        model = transformers.Gemma3nForConditionalGeneration(transformers.Gemma3nConfig(**d))
        # 64 px through timm's test_convnext: a 2x2 grid, 4 tokens between <boi>=126 and <eoi>=128
        samples = [
            {"input_ids": _ids(126, *[129] * 4, 128), "pixel_values": torch.randn(1, 3, 64, 64)} for _ in range(2)
        ]
        token = 129
    elif model_type == "internvl":
        model = transformers.InternVLForConditionalGeneration(transformers.InternVLConfig(**d))
        # 3 tiles (12 tokens) and 1 tile (4 tokens), each image between <img>=121 and </img>=122
        samples = [
            {"input_ids": _ids(121, *[120] * 4 * t, 122), "pixel_values": torch.randn(t, 3, 56, 56)} for t in (3, 1)
        ]
        token, tiles = 120, [3, 1]
    else:
        raise ValueError(model_type)
    return Case(model_type, model.eval(), token, samples, tiles)
