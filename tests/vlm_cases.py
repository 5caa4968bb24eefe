"""Tiny random VLMs of each supported family, with a batch of two samples of different image sizes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from agci import compat
from agci.registry import OLDER_RELEASES

CONFIGS = json.loads((Path(__file__).parent / "fixtures" / "tiny_configs.json").read_text())
PAD = 0
OLDER = OLDER_RELEASES  # the releases `make test-versions` overlays (from the registry); anything else is "newest"


def version_label() -> str:
    import transformers

    return transformers.__version__ if transformers.__version__ in OLDER else "newest"


def families_here() -> list[str]:
    """The families whose tests run on the installed transformers: the registry's ``tested`` says where."""
    from agci.patches.families import FAMILIES

    return [t for t, f in FAMILIES.items() if version_label() in f.tested]


def family_params() -> list:
    """``families_here()`` for ``pytest.mark.parametrize``: a family whose own model fails on the installed
    transformers (``Family.broken``) is skipped with the transformers bug as the reason."""
    import pytest
    import transformers

    from agci.patches.families import FAMILIES

    out = []
    for t in families_here():
        broken = FAMILIES[t].broken
        if FAMILIES[t].broken_in(transformers.__version__):
            reason = f"transformers {transformers.__version__}'s own {t} fails (a transformers bug): {broken.error}"
            out.append(pytest.param(t, marks=pytest.mark.skip(reason=reason)))
        else:
            out.append(t)
    return out


@dataclass
class Case:
    model_type: str
    model: torch.nn.Module
    image_token: int
    samples: list[dict] = field(default_factory=list)  # per-sample inputs (batch of one)
    tiles: list[int] | None = None  # InternVL: tiles per image, in batch order
    image_tokens: list[int] | None = None  # Idefics3, SmolVLM: tokens per image over all of the batch's entries

    def per_image(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-tile (InternVL) or per-sample (Idefics3) features split into per-image ones; others pass through."""
        if self.image_tokens is not None:
            return list(torch.cat([f.reshape(-1, f.shape[-1]) for f in features]).split(self.image_tokens))
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
        if "token_type_ids" in self.samples[0]:  # PaliGemma: 0 over the prompt (its prefix), as its processor gives
            out["token_type_ids"] = torch.zeros_like(out["input_ids"])
        for key in self.samples[0]:
            if key not in out and key != "mm_token_type_ids":
                out[key] = torch.cat(_padded_views([s[key] for s in self.samples]))
        if "mm_token_type_ids" in self.samples[0]:
            out["mm_token_type_ids"] = (out["input_ids"] == self.image_token).int()
        return out

    def stock_features(self, batch: dict) -> list[torch.Tensor]:
        """What the family's hook gets from the stock model for ``batch``, per entry: get_image_features' output
        or (Llama 4) the projector's, unpatched."""
        from agci.patches.discovery import inner_model
        from agci.patches.families import FAMILIES

        inner = inner_model(self.model)[0]
        with torch.no_grad():
            if FAMILIES[self.model_type].hook == "multi_modal_projector":
                import inspect

                get = _unwrapped(type(inner).get_image_features)
                extra = {}  # up to transformers 5.6 a required argument, which the forward reads from the config
                if "vision_feature_select_strategy" in inspect.signature(get).parameters:
                    extra["vision_feature_select_strategy"] = inner.config.vision_config.vision_feature_select_strategy
                vision = get(inner, **self.image_inputs(batch), **extra)
                vision = getattr(vision, "last_hidden_state", vision)  # 4.57 returns the tensor
                projector = inner.multi_modal_projector
                return [_unwrapped(type(projector).forward)(projector, vision.reshape(-1, vision.shape[-1]))]
            original = _unwrapped(type(inner).get_image_features)
            return compat.image_features_per_image(original(inner, **self.image_inputs(batch)))

    def image_inputs(self, batch: dict) -> dict:
        """The keyword arguments of get_image_features in ``batch``."""
        text_keys = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
        return {k: v for k, v in batch.items() if k not in text_keys}


def _unwrapped(method):
    return getattr(method, "__agci_original__", method)


def _padded_views(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Idefics3-style [1, views, C, H, W] pixel values padded with all-zero views to the batch's most."""
    if tensors[0].ndim != 5 or len({t.shape[1] for t in tensors}) == 1:
        return tensors
    most = max(t.shape[1] for t in tensors)
    return [torch.nn.functional.pad(t, (0, 0, 0, 0, 0, 0, 0, most - t.shape[1])) for t in tensors]


def _ids(*parts) -> torch.Tensor:
    return torch.tensor([[1, *parts, 5, 6, 7]])


def build(model_type: str, seed: int = 0, **config_overrides) -> Case:
    """The family's tiny random model and batch (its row in ``family_cases.CASES``), from its tiny config with
    ``config_overrides``."""
    from family_cases import CASES

    torch.manual_seed(seed)
    return CASES[model_type].build(model_type, dict(CONFIGS[model_type], **config_overrides))


# ----- the cases built by hand (the first six families and Llama 4); the others are built from their features


def llava_case(model_type: str, d: dict) -> Case:
    import transformers

    model = transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(**d))
    samples = [{"input_ids": _ids(*[100] * 4), "pixel_values": torch.randn(1, 3, 28, 28)} for _ in range(2)]
    return Case(model_type, model.eval(), 100, samples)


def llava_next_case(model_type: str, d: dict) -> Case:
    import transformers

    model = transformers.LlavaNextForConditionalGeneration(transformers.LlavaNextConfig(**d))
    samples = [
        {
            "input_ids": _ids(*[100] * n),
            "pixel_values": torch.randn(1, 5, 3, 28, 28),
            "image_sizes": torch.tensor([hw]),
        }
        for n, hw in ((14, [40, 60]), (24, [30, 30]))
    ]
    return Case(model_type, model.eval(), 100, samples)


def qwen_vl_case(model_class: str, patch_dim: int, model_type: str, d: dict, mm_token_types: bool = False) -> Case:
    """Qwen2.5-VL and Qwen3-VL: ``model_class`` from its config, flattened patches of ``patch_dim`` values;
    ``mm_token_types``: the samples carry mm_token_type_ids where transformers here takes them (Qwen3-VL)."""
    import transformers

    cls = getattr(transformers, model_class)
    model = cls(cls.config_class(**d))
    samples = []
    for w in (4, 6):
        s = {
            "input_ids": _ids(122, *[120] * w, 123),
            "pixel_values": torch.randn(4 * w, patch_dim),
            "image_grid_thw": torch.tensor([[1, 4, w]]),
        }
        if mm_token_types and compat.qwen3_vl_takes_mm_token_type_ids():
            s["mm_token_type_ids"] = (s["input_ids"] == 120).int()
        samples.append(s)
    return Case(model_type, model.eval(), 120, samples)


def gemma3n_case(model_type: str, d: dict) -> Case:
    import transformers

    model = transformers.Gemma3nForConditionalGeneration(transformers.Gemma3nConfig(**d))
    # 64 px through timm's test_convnext: a 2x2 grid, 4 tokens between <boi>=126 and <eoi>=128
    samples = [{"input_ids": _ids(126, *[129] * 4, 128), "pixel_values": torch.randn(1, 3, 64, 64)} for _ in range(2)]
    return Case(model_type, model.eval(), 129, samples)


def internvl_case(model_type: str, d: dict) -> Case:
    import transformers

    model = transformers.InternVLForConditionalGeneration(transformers.InternVLConfig(**d))
    # 3 tiles (12 tokens) and 1 tile (4 tokens), each image between <img>=121 and </img>=122
    samples = [{"input_ids": _ids(121, *[120] * 4 * t, 122), "pixel_values": torch.randn(t, 3, 56, 56)} for t in (3, 1)]
    return Case(model_type, model.eval(), 120, samples, [3, 1])


def qwen_grid(patch: int, grids, channels: int = 3, temporal: int = 2) -> dict:
    """Flattened patches of images of ``grids`` (h, w in patches), Qwen-style."""
    pixels = torch.randn(sum(h * w for h, w in grids), channels * temporal * patch * patch)
    return {"pixel_values": pixels, "image_grid_thw": torch.tensor([[1, h, w] for h, w in grids])}


def padded(sizes, side: int) -> dict:
    """Images of ``sizes`` (h, w) padded to side x side, with their sizes (Mistral3)."""
    pixels = torch.zeros(len(sizes), 3, side, side)
    for i, (h, w) in enumerate(sizes):
        pixels[i, :, :h, :w] = torch.randn(3, h, w)
    return {"pixel_values": pixels, "image_sizes": torch.tensor(sizes)}


IMAGE_TOKEN, BEFORE, AFTER = 120, 122, 123


def gemma4_images() -> tuple[dict, dict]:
    """Gemma 4's own image processor (patches with their positions); 8 px patches, 2 x 2 pooling."""
    from PIL import Image
    from transformers import Gemma4ImageProcessor

    processor = Gemma4ImageProcessor(patch_size=8, max_soft_tokens=70, pooling_kernel_size=2)

    def encode(sizes):  # noise: one flat colour gives identical tokens, on which AGCI has nothing to do (cos = 1)
        images = [Image.fromarray(torch.randint(0, 256, (h, w, 3), dtype=torch.uint8).numpy()) for w, h in sizes]
        out = processor(images, return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_position_ids": out["image_position_ids"]}

    return encode([(32, 16), (24, 24)]), encode([(16, 32)])


FAKE, GLOBAL, ROW = 110, 111, 112  # <fake_token_around_image>, <global-img>, <row_1_col_1> (then 113, ...)


def _view_ids(views: list[int], tokens_per_view: int) -> list[int]:
    """input_ids of images of ``views`` views as Idefics3's processor writes them: each crop after its row/col
    token, then the global view after <global-img>."""
    ids = []
    for n in views:
        for crop in range(n - 1):
            ids += [FAKE, ROW + crop, *[IMAGE_TOKEN] * tokens_per_view]
        ids += [FAKE, GLOBAL, *[IMAGE_TOKEN] * tokens_per_view, FAKE, 5]
    return ids


def built_from_features(model_type: str, config: dict) -> Case:
    """A family built from its registry classes: each image's placeholder run is as long as the features the
    stock get_image_features returns for it, between two marker tokens (as processors write them)."""
    import importlib
    import inspect

    from family_cases import CASES

    from agci.patches.families import FAMILIES

    family, row = FAMILIES[model_type], CASES[model_type]
    module = importlib.import_module(family.module)
    outer = getattr(module, family.outer_class)
    model = outer(outer.config_class(**config)).eval()
    for param in model.parameters():  # Gemma 3's projector starts at zero: AGCI would have nothing to act on
        if param.dim() > 1 and not param.detach().abs().sum():
            torch.nn.init.normal_(param, std=0.02)
    takes_types = "mm_token_type_ids" in inspect.signature(model.forward).parameters
    samples, image_tokens = [], []
    for i, images in enumerate(row.images()):
        with torch.no_grad():
            features = compat.image_features_per_image(model.model.get_image_features(**images))
        if row.views is not None:
            views = row.views[i]
            tokens = sum(f.numel() // f.shape[-1] for f in features)  # per sample or per view, 2-D to 4-D
            per_view = tokens // sum(views)
            ids = _view_ids(views, per_view)
            image_tokens += [n * per_view for n in views]
        else:
            sizes = [f.shape[0] for f in features]
            if "image_position_ids" in images:  # Gemma 4 (up to 5.6 one [N, D] for all images): sizes from positions
                pooling = model.config.vision_config.pooling_kernel_size
                sizes = [int((p != -1).all(-1).sum()) // pooling**2 for p in images["image_position_ids"]]
                image_tokens += sizes
            ids = [t for n in sizes for t in (BEFORE, *[IMAGE_TOKEN] * n, AFTER)]
        sample = {"input_ids": _ids(*ids), **images}
        if takes_types:
            sample["mm_token_type_ids"] = (sample["input_ids"] == IMAGE_TOKEN).int()
        if row.prefix_lm:  # prefix-LM attention: without it the stock model is not batch-invariant
            sample["token_type_ids"] = torch.zeros_like(sample["input_ids"])
        samples.append(sample)
    return Case(model_type, model, IMAGE_TOKEN, samples, image_tokens=image_tokens or None)


LLAMA4_MARKER, TILE_X, TILE_Y = 123, 124, 125  # <|image|> (before each global view), <|tile_x/y_separator|>


def _llama4_ids(grids: list[tuple[int, int]], per_tile: int) -> list[int]:
    """input_ids of images of ``grids`` (rows, cols of crops) as Llama4Processor writes them: between
    <|image_start|> and <|image_end|>, the crops row by row (when more than one), then <|image|> and the global
    view (the only tile of a one-crop image)."""
    ids = []
    for rows, cols in grids:
        ids.append(BEFORE_L4)
        if rows * cols > 1:
            for _ in range(rows):
                for x in range(cols):
                    ids += [IMAGE_TOKEN] * per_tile + ([TILE_X] if x < cols - 1 else [])
                ids.append(TILE_Y)
        ids += [LLAMA4_MARKER, *[IMAGE_TOKEN] * per_tile, AFTER_L4]
    return ids


BEFORE_L4, AFTER_L4 = 121, 122  # <|image_start|>, <|image_end|> (boi/eoi in the tiny config)


def llama4_case(model_type: str, config: dict) -> Case:
    """Sample 0: an image of 1 x 2 crops (plus its global view) and a one-tile image; sample 1: 2 x 1 crops.
    Tiles are 32 px, 4 tokens each after the pixel shuffle; pixel_values holds every tile of the batch."""
    import transformers

    model = transformers.Llama4ForConditionalGeneration(transformers.Llama4Config(**config)).eval()
    per_tile = (config["vision_config"]["image_size"] // config["vision_config"]["patch_size"]) ** 2 // 4
    samples, image_tokens = [], []
    for grids in ([(1, 2), (1, 1)], [(2, 1)]):
        tiles = [r * c + (r * c > 1) for r, c in grids]
        image_tokens += [t * per_tile for t in tiles]
        samples.append(
            {"input_ids": _ids(*_llama4_ids(grids, per_tile)), "pixel_values": torch.randn(sum(tiles), 3, 32, 32)}
        )
    return Case(model_type, model, IMAGE_TOKEN, samples, image_tokens=image_tokens)
