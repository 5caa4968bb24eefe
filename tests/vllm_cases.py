"""Tiny checkpoints that vLLM's CPU build serves, and the prompts the vLLM tests send, per family.

vLLM's CPU attention refuses heads smaller than 64, so the language models here have 2 query heads of 64 (hidden
128) and one KV head; the tiny_configs.json vision towers are kept at one 64-wide head too. Checkpoints are written
in the key layout hub checkpoints use, which vLLM's loaders expect (transformers 5.x saves some towers under other
names and reads both).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from tiny_checkpoints import save_tiny
from vlm_cases import CONFIGS

TEXT = {"hidden_size": 128, "intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 64, "max_position_embeddings": 1024}  # fmt: skip


QWEN = "<|im_start|>user\n{images}{words}<|im_end|>\n<|im_start|>assistant\n"
PLAIN = "USER: {images}{words} ASSISTANT:"
CLIP = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 1}
SIGLIP = {**CLIP, "vision_use_head": False}
TOWER = (("vision_tower.", "vision_tower.vision_model."),)  # transformers 5.x saves CLIP/SigLIP towers unwrapped
NEWLINES = ("\n", "\n\n", "\n\n\n", "\n\n\n\n")
MROPE = {"mrope_section": [8, 12, 12]}  # head_dim 64: 32 rotary pairs
FUSED_EXPERTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
QWEN3_VISION = {"hidden_size": 64, "intermediate_size": 128, "num_heads": 1, "out_hidden_size": 128}
# half-rotary heads of 64 (16 pairs), linear-attention heads of 64
QWEN3_5_TEXT = {"rope_parameters": {"rope_type": "default", "mrope_section": [4, 6, 6], "mrope_interleaved": True,
                                    "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
                "linear_key_head_dim": 64, "linear_value_head_dim": 64}


@dataclass(frozen=True)
class VllmCase:
    model_type: str
    image: str  # the prompt text of one image, as the family's processor expects it
    vision: dict  # config changes of the vision tower
    top: dict | None = None  # config changes at the top level
    renames: tuple[tuple[str, str], ...] = ()  # safetensors key prefixes: as transformers saves -> as the hub has
    text: dict | None = None  # config changes of the language model beyond TEXT
    template: str = QWEN  # the prompt, around {images} and {words}
    # tokens vLLM's processor looks up or inserts (Gemma 3: "\n" up to "\n\n\n\n"; PaliGemma: "\n" at the
    # end), added in place of unused ids (the tiny tokenizers split on whitespace, so would drop them)
    vocab: tuple[str, ...] = ()
    # weights transformers initialises to zeros (Gemma 3's projection: every image token would be 0), made random
    randomized: tuple[str, ...] = ()
    # transformers attends bidirectionally within an image or a prefix (as its processor's token_type_ids say)
    # where vLLM's CPU attention cannot (no mm-prefix support): the token type that makes transformers' attention
    # causal everywhere (Gemma 3: 0, text; PaliGemma: 1, suffix), to give the reference as token_type_ids
    causal_token_type: int | None = None
    max_images: int = 2  # per prompt, as vLLM's model allows
    # key suffixes of tensors whose last two dims the hub layout has the other way round (Qwen3-VL-MoE's fused
    # experts: transformers 5.x saves [E, out, in], hub checkpoints and vLLM's loader [E, in, out])
    transposed: tuple[str, ...] = ()

    def config(self) -> dict:
        d = copy.deepcopy(CONFIGS[self.model_type])
        d["text_config"].update(TEXT)
        d["text_config"].update(self.text or {})
        d["vision_config"].update(self.vision)
        d.update(self.top or {})
        return d

    def prompt(self, n_images: int, words: str = "what is in the image ?") -> str:
        return self.template.format(images=self.image * n_images, words=words)


CASES = {
    c.model_type: c
    for c in (
        VllmCase("llava", "<image>\n", CLIP,
                 renames=TOWER, template=PLAIN),
        VllmCase("qwen2_5_vl", "<|vision_start|><|image_pad|><|vision_end|>",
                 {"hidden_size": 64, "intermediate_size": 128, "num_heads": 1, "out_hidden_size": 128},
                 top={}),
        VllmCase("qwen2_vl", "<|vision_start|><|image_pad|><|vision_end|>",
                 {"embed_dim": 64, "hidden_size": 128, "num_heads": 1},
                 text={"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, **MROPE}}),
        VllmCase("qwen3_vl", "<|vision_start|><|image_pad|><|vision_end|>", QWEN3_VISION,
                 text={"rope_scaling": {"rope_type": "default", "mrope_interleaved": True, **MROPE}}),
        VllmCase("gemma3", "<start_of_image>", SIGLIP, template=PLAIN, vocab=NEWLINES, renames=TOWER,
                 randomized=("multi_modal_projector.mm_input_projection_weight",), causal_token_type=0),
        VllmCase("paligemma", "", {**SIGLIP, "projection_dim": 128}, top={"projection_dim": 128}, template=PLAIN,
                 renames=TOWER, vocab=NEWLINES, causal_token_type=1, max_images=1),
        VllmCase("mistral3", "[IMG]", {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 1,
                                       "head_dim": 64}, template=PLAIN),
        VllmCase("llava_next", "<image>\n", CLIP, renames=TOWER, template=PLAIN),
        VllmCase("llava_onevision", "<image>\n", SIGLIP, renames=TOWER, template=PLAIN),
        VllmCase("idefics3", "<image>", CLIP, template=PLAIN),
        VllmCase("smolvlm", "<image>", CLIP, template=PLAIN),
        VllmCase("internvl", "<IMG_CONTEXT>\n", CLIP, template=PLAIN),
        VllmCase("glm4v", "<|begin_of_image|><|image|><|end_of_image|>",
                 {"hidden_size": 64, "intermediate_size": 128, "num_heads": 1, "out_hidden_size": 128},
                 text={"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                                           "mrope_section": [4, 6, 6]}}, template=PLAIN),
        # transformers embeds ids in the vision vocabulary range with embed_vision, vLLM with the text table: the
        # range starts after <end_of_image> (128) here, so that both embed it the same way
        VllmCase("qwen3_vl_moe", "<|vision_start|><|image_pad|><|vision_end|>", QWEN3_VISION,
                 text={"rope_parameters": {"rope_type": "default", "mrope_interleaved": True, "rope_theta": 10000.0,
                                           **MROPE}, "moe_intermediate_size": 64, "norm_topk_prob": True},
                 transposed=FUSED_EXPERTS),
        VllmCase("qwen3_5", "<|vision_start|><|image_pad|><|vision_end|>", QWEN3_VISION, text=QWEN3_5_TEXT),
        VllmCase("gemma3n", "<image_soft_token>", {"vocab_offset": 129, "vocab_size": 15}, template=PLAIN,
                 vocab=NEWLINES),
    )
}  # fmt: skip


def _rewrite(path: Path, renames, randomized, transposed, seed: int) -> None:
    if not renames and not randomized and not transposed:
        return
    import torch
    from safetensors.torch import load_file, save_file

    generator = torch.Generator().manual_seed(seed)
    for file in path.glob("*.safetensors"):
        tensors = load_file(file)
        renamed = {}
        for key, value in tensors.items():
            if key in randomized:
                value = torch.randn(value.shape, generator=generator).to(value.dtype)
            if key.endswith(transposed):
                value = value.transpose(-1, -2).contiguous()
            for old, new in renames:
                if key.startswith(old):
                    key = new + key[len(old) :]
                    break
            renamed[key] = value
        save_file(renamed, file, metadata={"format": "pt"})
    index = path / "model.safetensors.index.json"
    if index.exists():
        raise NotImplementedError("tiny checkpoints are one file")


def _add_vocab(path: Path, entries) -> None:
    if not entries:
        return
    file = Path(path) / "tokenizer.json"
    tokenizer = json.loads(file.read_text())
    vocab = tokenizer["model"]["vocab"]
    unused = sorted((i, w) for w, i in vocab.items() if w.startswith("<unused"))
    for entry, (i, word) in zip(entries, unused[::-1], strict=False):
        del vocab[word]
        vocab[entry] = i
        tokenizer["added_tokens"].append({"id": i, "content": entry, "single_word": False, "lstrip": False,
                                          "rstrip": False, "normalized": False, "special": False})  # fmt: skip
    file.write_text(json.dumps(tokenizer, ensure_ascii=False))


def save_for_vllm(model_type: str, out: Path, lam: float | None = None, seed: int = 0) -> Path:
    """A tiny ``model_type`` checkpoint with its processor that vLLM's CPU build loads, lambda in config.json."""
    case = CASES[model_type]
    config = case.config()
    if model_type == "qwen2_5_vl":
        config["text_config"]["rope_scaling"] = {"type": "mrope", "mrope_section": [8, 12, 12]}
    save_tiny(model_type, out, lam=lam, seed=seed, config=config)
    _rewrite(Path(out), case.renames, case.randomized, case.transposed, seed)
    _add_vocab(Path(out), case.vocab)
    return Path(out)


def read_config(path: Path) -> dict:
    return json.loads((Path(path) / "config.json").read_text())
