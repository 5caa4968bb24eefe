"""One row per registry family: what the tests know about it. Adding a family is its registry record
(agci/registry.py), its tiny config (fixtures/tiny_configs.json) and one row here.

A row names how its tiny model and batch are built (:func:`vlm_cases.build`: by hand for the first six families and
Llama 4, else from the registry's classes with the row's images), the processor its tiny checkpoint is saved with
(:func:`tiny_checkpoints.save_tiny`), and the per-family facts tests branch on. vlm_cases and tiny_checkpoints read
this table inside their functions (it names their builders, so it imports them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import tiny_checkpoints as tc
import torch
import vlm_cases as vc


@dataclass(frozen=True)
class FamilyCase:
    # (model type, config dict) -> vlm_cases.Case; the default builds the registry's classes and puts a placeholder
    # run as long as each image's features between two markers
    build: Callable = vc.built_from_features
    images: Callable[[], tuple[dict, dict]] | None = None  # the image inputs of sample 0 and 1 (for the default build)
    views: tuple[list[int], list[int]] | None = None  # Idefics3-style: views (crops + global) per image, per sample
    prefix_lm: bool = False  # the batch carries token_type_ids (0 over the prompt), as PaliGemma's processor gives
    processor: Callable | None = None  # (config dict, transformers) -> (processor, model, eos id) of its checkpoint
    no_processor: str | None = None  # why no tiny checkpoint with a processor is saved (where processor is None)
    seed: bool = False  # one of the first six families: its processor tests run on the older releases too
    fixed_size: bool = False  # every image gives the same number of tokens
    reference_mixes_batch: bool = False  # the authors' code takes one mean over the batch (read from their code)
    prompt_needs_image: bool = False  # its processor refuses a prompt without an image
    lmms_eval_command: bool = False  # the real lmms-eval command runs for it (test_eval; about 30 s a family)
    projector: str | None = None  # the projector's parameter names (made trainable in the PEFT test)


def _qwen_images(patch: int):
    """Qwen-style images: two of different sizes in sample 0, one in sample 1, ``patch`` px patches."""
    return lambda: (vc.qwen_grid(patch, [(4, 4), (4, 6)]), vc.qwen_grid(patch, [(4, 8)]))


def _pixels(first: tuple, second: tuple):
    return lambda: ({"pixel_values": torch.randn(*first)}, {"pixel_values": torch.randn(*second)})


def _onevision_images():
    return (
        {"pixel_values": torch.randn(2, 5, 3, 28, 28), "image_sizes": torch.tensor([[40, 60], [30, 30]])},
        {"pixel_values": torch.randn(1, 5, 3, 28, 28), "image_sizes": torch.tensor([[56, 28]])},
    )


def _kimi_images():
    return tuple(
        {"pixel_values": torch.randn(sum(h * w for h, w in g), 3, 14, 14),
         "image_grid_thw": torch.tensor([[1, h, w] for h, w in g])} for g in ([(4, 4), (4, 6)], [(4, 8)])
    )  # fmt: skip


_CROPS = ([3, 1], [2])  # Idefics3, SmolVLM, Aya Vision: 3 + 1 views in sample 0, 2 in sample 1

CASES: dict[str, FamilyCase] = {
    "llava": FamilyCase(
        build=vc.llava_case,
        processor=tc.llava_processor,
        seed=True,
        fixed_size=True,
        lmms_eval_command=True,
        projector="multi_modal_projector",
    ),
    "llava_next": FamilyCase(
        build=vc.llava_next_case,
        processor=functools.partial(tc.llava_processor, next_=True),
        seed=True,
        reference_mixes_batch=True,
        lmms_eval_command=True,
    ),
    "qwen2_5_vl": FamilyCase(
        build=functools.partial(vc.qwen_vl_case, "Qwen2_5_VLForConditionalGeneration", 1176),
        processor=tc.qwen_processor("Qwen2_5_VLProcessor", "Qwen2_5_VLForConditionalGeneration"),
        seed=True,
        reference_mixes_batch=True,
        projector="visual.merger",
    ),
    "qwen3_vl": FamilyCase(
        build=functools.partial(vc.qwen_vl_case, "Qwen3VLForConditionalGeneration", 1536, mm_token_types=True),
        processor=tc.qwen_processor("Qwen3VLProcessor", "Qwen3VLForConditionalGeneration"),
        seed=True,
        reference_mixes_batch=True,
        lmms_eval_command=True,
    ),
    "gemma3n": FamilyCase(
        build=vc.gemma3n_case, processor=tc.gemma3n_processor, seed=True, fixed_size=True, lmms_eval_command=True
    ),
    "internvl": FamilyCase(
        build=vc.internvl_case,
        processor=tc.internvl_processor,
        seed=True,
        reference_mixes_batch=True,
        lmms_eval_command=True,
    ),
    "qwen2_vl": FamilyCase(
        images=_qwen_images(14), processor=tc.qwen_processor("Qwen2VLProcessor", "Qwen2VLForConditionalGeneration")
    ),
    "qwen3_vl_moe": FamilyCase(
        images=_qwen_images(16), processor=tc.qwen_processor("Qwen3VLProcessor", "Qwen3VLMoeForConditionalGeneration")
    ),
    "qwen3_5": FamilyCase(
        images=_qwen_images(16),
        processor=tc.qwen_processor("Qwen3VLProcessor", "Qwen3_5ForConditionalGeneration", byte_level=True),
    ),
    "qwen3_5_moe": FamilyCase(
        images=_qwen_images(16),
        processor=tc.qwen_processor("Qwen3VLProcessor", "Qwen3_5MoeForConditionalGeneration", byte_level=True),
    ),
    "glm4v": FamilyCase(
        images=_qwen_images(14),
        processor=functools.partial(
            tc.glm_processor, processor_name="Glm4vProcessor", model_name="Glm4vForConditionalGeneration"
        ),
    ),
    "glm46v": FamilyCase(
        images=_qwen_images(14),
        processor=functools.partial(
            tc.glm_processor, processor_name="Glm46VProcessor", model_name="Glm46VForConditionalGeneration"
        ),
    ),
    "kimi_k25": FamilyCase(images=_kimi_images, processor=tc.kimi_k25_processor, lmms_eval_command=True),
    "gemma3": FamilyCase(
        images=_pixels((2, 3, 32, 32), (1, 3, 32, 32)), processor=tc.gemma3_processor, fixed_size=True
    ),
    "gemma4": FamilyCase(images=vc.gemma4_images, processor=tc.gemma4_processor, lmms_eval_command=True),
    "paligemma": FamilyCase(
        images=_pixels((2, 3, 32, 32), (1, 3, 32, 32)),
        prefix_lm=True,
        processor=tc.paligemma_processor,
        fixed_size=True,
        prompt_needs_image=True,
    ),
    "mistral3": FamilyCase(
        images=lambda: (vc.padded([(32, 64), (64, 64)], 64), vc.padded([(64, 48)], 64)),
        processor=tc.mistral3_processor,
    ),
    "llava_onevision": FamilyCase(images=_onevision_images, processor=tc.llava_onevision_processor),
    "idefics3": FamilyCase(
        images=_pixels((1, 4, 3, 32, 32), (1, 2, 3, 32, 32)),
        views=_CROPS,
        processor=tc.idefics3_processor,
        lmms_eval_command=True,
    ),
    "smolvlm": FamilyCase(
        images=_pixels((1, 4, 3, 32, 32), (1, 2, 3, 32, 32)),
        views=_CROPS,
        processor=functools.partial(tc.idefics3_processor, smolvlm=True),
    ),
    # Aya Vision: every tile of the batch in one [tiles, C, H, W]
    "aya_vision": FamilyCase(
        images=_pixels((4, 3, 32, 32), (2, 3, 32, 32)), views=_CROPS, processor=tc.aya_vision_processor
    ),
    "llava_next_video": FamilyCase(images=_onevision_images, processor=tc.llava_next_video_processor),
    "llama4": FamilyCase(
        build=vc.llama4_case,
        no_processor="Llama4Processor builds offline with a tiny tokenizer (tests/test_patches.py checks its token "
        "layout; the vLLM tests' checkpoint has it, VllmCase.processor), but the probes' similarity reads "
        "get_image_features, which returns features from before Llama 4's projector up to transformers 5.24 (5.24.0 "
        "cannot run the model; 5.25 gives the projector's output as pooler_output): not done yet",
    ),
}
