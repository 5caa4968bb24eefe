"""The tiny probe VLM shipped with agci: its processor, its architecture and how it is saved.

A LLaVA (CLIP vision tower at 42 px, 14 px patches -> 9 visual tokens, one per cell of the probe's
3 x 3 grid; a 3-layer Llama) with a word-level tokenizer and a LLaVA-1.5 style chat template, saved as a
normal transformers checkpoint (``agci/bias/assets/tiny-probe-llava``) so that ``agci probe`` loads it
through the same ``AutoProcessor`` / ``AutoAGCIModelForImageTextToText`` path as a real model.
``agci.bias.training.embedded`` trains it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...demo_model import CLIP_MEAN, CLIP_STD
from ..probe_sets import PROMPT
from ..synthetic import TEXTURES, captions

IMAGE_SIZE = 42
PATCH = 14
WHOLE_IMAGE_QUESTION = "What is in the image?"  # the naming task's question, part of the vocabulary
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %} {% else %}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _vocabulary() -> list[str]:
    import re

    text = " ".join([PROMPT, "USER ASSISTANT : Yes No yes no YES NO", *captions(True), *TEXTURES, WHOLE_IMAGE_QUESTION])
    words = sorted(set(re.findall(r"\w+|[^\w\s]", text)))
    return SPECIALS + words


def build_processor():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(_vocabulary())}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("<image>", "isolated"),
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation("isolated"),
        ]
    )
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces, no prefix in this vocabulary
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"}, padding_side="left", model_max_length=512,
    )  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), do_convert_rgb=True,
    )  # fmt: skip
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
        vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE, num_additional_image_tokens=1,
    )  # fmt: skip


def save_portable(model, processor, out: Path) -> None:
    """``save_pretrained`` both, then write the processor files in the forms transformers 4.57 reads too."""
    model.save_pretrained(out)
    processor.save_pretrained(out)
    from safetensors.torch import load_file, save_file

    weights = out / "model.safetensors"  # the hub's LLaVA key layout, which every version maps on load
    tensors = load_file(weights)
    renamed = {
        k.replace("vision_tower.", "vision_tower.vision_model.", 1)
        if k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model.") else k: v
        for k, v in tensors.items()
    }  # fmt: skip
    save_file(renamed, weights, metadata={"format": "pt"})
    tok_path = out / "tokenizer_config.json"
    tok = json.loads(tok_path.read_text())
    tok.update(tokenizer_class="PreTrainedTokenizerFast", additional_special_tokens=["<image>"],
               extra_special_tokens={"image_token": "<image>"})  # fmt: skip
    tok_path.write_text(json.dumps(tok, indent=2) + "\n")
    proc_path = out / "processor_config.json"
    proc = json.loads(proc_path.read_text())
    if "image_processor" in proc:  # 5.x nests it; 4.57 reads preprocessor_config.json
        (out / "preprocessor_config.json").write_text(json.dumps(proc.pop("image_processor"), indent=2) + "\n")
        proc_path.write_text(json.dumps(proc, indent=2) + "\n")


def build_model(processor, seed: int = 0):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    tok = processor.tokenizer
    config = LlavaConfig(
        vision_config={
            "model_type": "clip_vision_model", "hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 3,
            "num_attention_heads": 4, "image_size": IMAGE_SIZE, "patch_size": PATCH, "projection_dim": 96,
        },
        text_config={
            "model_type": "llama", "vocab_size": len(tok), "hidden_size": 128, "intermediate_size": 384,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 256,
            "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "tie_word_embeddings": True,
        },
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config)
