"""Qwen2.5-VL with Qwen2.5-VL-7B-Instruct's dimensions and random weights, for the GPU benchmarks.

``config()`` gives the 7B configuration (vision: 32 layers, hidden 1280, 16 heads, patch 14, merge 2, window
attention with full attention in layers 7, 15, 23, 31; text: 28 layers, hidden 3584, 28 heads, 4 KV heads,
MLP 18944, vocabulary 152064), optionally with fewer layers, or tiny dimensions for CPU smoke tests.
``build()`` makes the model directly on the device in the given dtype. Run as a script, it saves such a
checkpoint with the real processor classes (Qwen2_5_VLProcessor, Qwen2VLImageProcessor, a fast tokenizer built
offline with Qwen's special tokens at their real ids and Qwen's chat template), so that tools loading by path
(``bench_probe.py --model``) run on it with nothing downloaded:

    python benchmarks/qwen7b.py --out /tmp/qwen2.5-vl-7b-random          # GPU: 7B, bf16, ~16.6 GB
    python benchmarks/qwen7b.py --out /tmp/qwen-tiny --tiny --device cpu  # smoke test
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# Qwen2.5-VL's special token ids
IDS = {"<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652, "<|vision_end|>": 151653,
       "<|image_pad|>": 151655, "<|video_pad|>": 151656}  # fmt: skip
VOCAB = 152064


def config(vision_layers: int = 32, text_layers: int = 28, tiny: bool = False):
    from transformers import Qwen2_5_VLConfig

    if tiny:
        vision = {"hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64}
        text = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
                "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}}  # fmt: skip
    else:
        vision = {"hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584}
        text = {"hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28, "num_key_value_heads": 4,
                "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}}  # fmt: skip
    full = [i for i in (7, 15, 23, 31) if i < vision_layers] or [vision_layers - 1]
    return Qwen2_5_VLConfig(
        vision_config={**vision, "depth": vision_layers, "patch_size": 14, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, "fullatt_block_indexes": full, "window_size": 112},
        text_config={**text, "num_hidden_layers": text_layers, "vocab_size": VOCAB, "max_position_embeddings": 32768,
                     "eos_token_id": IDS["<|im_end|>"], "rope_theta": 1000000.0},
        image_token_id=IDS["<|image_pad|>"], video_token_id=IDS["<|video_pad|>"],
        vision_start_token_id=IDS["<|vision_start|>"], vision_end_token_id=IDS["<|vision_end|>"],
    )  # fmt: skip


def build(cfg, dtype: torch.dtype, device: str, seed: int = 0):
    """The model with random weights, made on ``device`` in ``dtype`` (no float32 copy on the host)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(default)
    return model.to(dtype).eval()


def processor(tiny: bool = False):
    """Qwen2.5-VL's processor classes, built offline: the image processor at its defaults (tiny: at most 16
    merged patches per image), a word-level fast tokenizer (tests/tiny_checkpoints.py) with the special tokens
    at Qwen's ids, Qwen's chat template."""
    sys.path.insert(0, str(ROOT / "tests"))
    import transformers as tf
    from tiny_checkpoints import QWEN_TEMPLATE, _tokenizer

    from agci import compat

    qwen_cls = tf.Qwen2TokenizerFast if compat.qwen_processors_need_qwen2_tokenizer() else None
    tok = _tokenizer(IDS, VOCAB, cls=qwen_cls)
    pixels = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 16} if tiny else {}
    return tf.Qwen2_5_VLProcessor(
        image_processor=tf.Qwen2VLImageProcessor(**pixels), tokenizer=tok,
        video_processor=tf.Qwen2VLVideoProcessor(**pixels),
        chat_template=QWEN_TEMPLATE,
    )  # fmt: skip


def save(out: Path, tiny: bool, dtype: torch.dtype, device: str) -> Path:
    model = build(config(tiny=tiny), dtype, device)
    proc = processor(tiny)
    model.generation_config.eos_token_id = IDS["<|im_end|>"]
    model.generation_config.pad_token_id = 0
    # a random model would sometimes generate an image placeholder; trained ones do not
    model.generation_config.suppress_tokens = sorted(set(IDS.values()) - {IDS["<|im_end|>"]})
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tiny", action="store_true", help="tiny dimensions (CPU smoke test), same classes and ids")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    sys.path.insert(0, str(ROOT))
    save(args.out, args.tiny, {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype], args.device)
    size = sum(f.stat().st_size for f in args.out.iterdir()) / 2**30
    print(f"saved {'tiny' if args.tiny else '7B-shaped'} Qwen2.5-VL to {args.out} ({size:.2f} GiB) in "
          f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
