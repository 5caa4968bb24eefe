"""The supported model families: where their classes live (no torch or transformers import here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    model_type: str
    module: str
    inner_class: str
    outer_class: str
    # Scope "reference" (the authors' code): "batch" = one mean over every image of a get_image_features
    # call, "image" = one mean per image. The note says what that reproduces and what it does not.
    reference_mean: str
    reference_note: str
    # InternVL: features come per tile; an image is one unbroken run of this token in input_ids.
    tile_token_attr: str | None = None

    def __post_init__(self):
        if self.reference_mean not in ("batch", "image"):
            raise ValueError(f"{self.model_type}: reference_mean must be 'batch' or 'image'")


_M = "transformers.models."
_BATCH_NOTE = "one mean over all images of the batch (after torch.cat of the image embeds): reproduced"
FAMILIES = {
    f.model_type: f
    for f in (
        Family("llava", _M + "llava.modeling_llava", "LlavaModel", "LlavaForConditionalGeneration",
               reference_mean="image",
               reference_note="no reference code (the paper used the original LLaVA code): the paper's per-image "
               "formula (the same as scope image)"),
        Family("llava_next", _M + "llava_next.modeling_llava_next", "LlavaNextModel",
               "LlavaNextForConditionalGeneration", reference_mean="batch",
               reference_note=_BATCH_NOTE + ", except that the reference's mean also takes the image_newline "
               "tokens, which transformers adds after get_image_features (the one known deviation)"),
        Family("qwen2_5_vl", _M + "qwen2_5_vl.modeling_qwen2_5_vl", "Qwen2_5_VLModel",
               "Qwen2_5_VLForConditionalGeneration", reference_mean="batch", reference_note=_BATCH_NOTE),
        Family("qwen3_vl", _M + "qwen3_vl.modeling_qwen3_vl", "Qwen3VLModel", "Qwen3VLForConditionalGeneration",
               reference_mean="batch", reference_note=_BATCH_NOTE),
        Family("gemma3n", _M + "gemma3n.modeling_gemma3n", "Gemma3nModel", "Gemma3nForConditionalGeneration",
               reference_mean="image",
               reference_note="[B, N, D], mean over dim 1, one per image: reproduced (the same as scope image)"),
        Family("internvl", _M + "internvl.modeling_internvl", "InternVLModel", "InternVLForConditionalGeneration",
               reference_mean="batch",
               reference_note="one mean over all tiles of the batch: reproduced; the reference also uses lambda "
               "0.5 whenever lambda > 0, which agci does not: set lambda 0.5 to reproduce its numbers",
               tile_token_attr="image_token_id"),
    )
}  # fmt: skip
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)
