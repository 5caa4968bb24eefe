"""Tiny checkpoints written in the layout hub checkpoints have, for families whose transformers save does not give
it back (vLLM's loaders read the hub layout only).

Kimi K2.5: transformers 5.19 saves the layout back wrongly (its reverse renames meant for the vision tower also hit
the language model: ``language_model.model.blocks.N.self_wqkv``), so the weights are written here from the model's
own state, renamed as moonshotai's checkpoints name them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

KIMI_K25_ARCHITECTURE = "KimiK25ForConditionalGeneration"  # what moonshotai's checkpoints declare, and vLLM registers

# transformers' name -> the hub's (the first pattern that matches)
_KIMI_K25_NAMES = (
    (r"^model\.vision_tower\.layers\.(\d+)\.norm1\.", r"vision_tower.encoder.blocks.\1.norm0."),
    (r"^model\.vision_tower\.layers\.(\d+)\.norm2\.", r"vision_tower.encoder.blocks.\1.norm1."),
    (r"^model\.vision_tower\.layers\.(\d+)\.mlp\.fc1\.", r"vision_tower.encoder.blocks.\1.mlp.fc0."),
    (r"^model\.vision_tower\.layers\.(\d+)\.mlp\.fc2\.", r"vision_tower.encoder.blocks.\1.mlp.fc1."),
    (r"^model\.vision_tower\.layers\.(\d+)\.attn\.proj\.", r"vision_tower.encoder.blocks.\1.wo."),
    (r"^model\.vision_tower\.final_layernorm\.", "vision_tower.encoder.final_layernorm."),
    (r"^model\.vision_tower\.patch_embed\.pos_emb\.position_embeddings$", "vision_tower.patch_embed.pos_emb.weight"),
    (r"^model\.vision_tower\.patch_embed\.", "vision_tower.patch_embed."),
    (r"^model\.language_model\.", "language_model.model."),
    (r"^lm_head\.", "language_model.lm_head."),
    (r"^model\.mm_projector\.in_proj\.", "mm_projector.proj.0."),
    (r"^model\.mm_projector\.out_proj\.", "mm_projector.proj.2."),
    (r"^model\.mm_projector\.", "mm_projector."),
)
_QKV = re.compile(r"^model\.vision_tower\.layers\.(\d+)\.attn\.([qkv])_proj\.(weight|bias)$")


def kimi_k25_hub_state(state: dict) -> dict:
    """transformers' Kimi K2.5 state dict in the hub's names: the tower's q/k/v as one ``wqkv`` (transformers splits
    it, and permutes q and k for its rotary layout, on load), the text model's fused experts one by one."""
    out = {}
    for key, value in state.items():
        qkv = _QKV.match(key)
        if qkv:
            if qkv[2] == "q":
                parts = [state[f"model.vision_tower.layers.{qkv[1]}.attn.{x}_proj.{qkv[3]}"] for x in "qkv"]
                out[f"vision_tower.encoder.blocks.{qkv[1]}.wqkv.{qkv[3]}"] = _cat(parts)
            continue
        if key.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):  # [E, 2I, H] and [E, H, I]
            experts = "language_model.model." + key.removeprefix("model.language_model.").rsplit(".", 1)[0]
            for e, weight in enumerate(value):
                if key.endswith("gate_up_proj"):
                    gate, up = weight.chunk(2, dim=0)
                    out[f"{experts}.{e}.gate_proj.weight"] = gate.clone()
                    out[f"{experts}.{e}.up_proj.weight"] = up.clone()
                else:
                    out[f"{experts}.{e}.down_proj.weight"] = weight.clone()
            continue
        for pattern, name in _KIMI_K25_NAMES:
            if re.match(pattern, key):
                out[re.sub(pattern, name, key)] = value.clone()  # clones: lm_head may share the embedding's storage
                break
        else:
            raise KeyError(f"no hub name for {key}")
    return {k: v.contiguous() for k, v in out.items()}


def _cat(parts):
    import torch

    return torch.cat(parts)


def kimi_k25(path: Path, seed: int) -> None:
    """Rewrite the Kimi K2.5 checkpoint at ``path`` (saved by transformers) as the hub has it: the weights (a model
    built from its config.json with ``seed``), the architecture name, and the image processor's settings also under
    ``media_proc_cfg``, where vLLM's own Kimi image processor reads them."""
    import torch
    import transformers as tf
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = tf.Kimi_K25ForConditionalGeneration(tf.AutoConfig.from_pretrained(path))
    save_file(kimi_k25_hub_state(model.state_dict()), path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "architectures": [KIMI_K25_ARCHITECTURE]}, indent=2))
    file = path / "processor_config.json"
    processor = json.loads(file.read_text())
    image = processor["image_processor"]
    image["media_proc_cfg"] = {
        "patch_size": image["patch_size"], "merge_kernel_size": image["merge_size"],
        "in_patch_limit": image["max_patches"], "patch_limit_on_one_side": image["size"]["max_height"],
        "image_mean": image["image_mean"], "image_std": image["image_std"], "fixed_output_tokens": None,
        "in_patch_limit_each_frame": processor["video_processor"]["max_patches"], "in_patch_limit_video": None,
        "temporal_merge_kernel_size": 4,
    }  # fmt: skip
    file.write_text(json.dumps(processor, indent=2))
