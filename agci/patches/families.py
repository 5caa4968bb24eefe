"""The supported model families: where their classes live (no torch or transformers import here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    model_type: str
    module: str
    inner_class: str
    outer_class: str
    # InternVL: features come per tile; an image is one unbroken run of this token in input_ids.
    tile_token_attr: str | None = None


_M = "transformers.models."
FAMILIES = {
    f.model_type: f
    for f in (
        Family("llava", _M + "llava.modeling_llava", "LlavaModel", "LlavaForConditionalGeneration"),
        Family("llava_next", _M + "llava_next.modeling_llava_next", "LlavaNextModel",
               "LlavaNextForConditionalGeneration"),
        Family("qwen2_5_vl", _M + "qwen2_5_vl.modeling_qwen2_5_vl", "Qwen2_5_VLModel",
               "Qwen2_5_VLForConditionalGeneration"),
        Family("qwen3_vl", _M + "qwen3_vl.modeling_qwen3_vl", "Qwen3VLModel", "Qwen3VLForConditionalGeneration"),
        Family("gemma3n", _M + "gemma3n.modeling_gemma3n", "Gemma3nModel", "Gemma3nForConditionalGeneration"),
        Family("internvl", _M + "internvl.modeling_internvl", "InternVLModel", "InternVLForConditionalGeneration",
               tile_token_attr="image_token_id"),
    )
}  # fmt: skip
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)
