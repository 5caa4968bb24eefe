"""Epoch time of a frozen linear probe on cached Q-Former features against re-encoding every epoch.

A random BLIP-2 stage-1 model with a real-width Q-Former (12 layers, 32 queries, hidden 768) on a small
vision tower, so the CPU run takes a minute; the ratio, not the absolute time, is the result (absolute
times only from a GPU run, with the device named). Writes JSON, markdown and a PNG to
benchmarks/results/.

    python benchmarks/bench_resampler_cache.py [--items 256] [--epochs 3] [--device cpu] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"


def build(device: str):
    import transformers as tf

    from agci.resampler_probes.encoders import Blip2QFormer

    vision = {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 4, "num_attention_heads": 6,
              "image_size": 224, "patch_size": 14}  # fmt: skip
    qformer = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
               "num_attention_heads": 12, "encoder_hidden_size": 384, "use_qformer_text_input": True}  # fmt: skip
    text = {"model_type": "opt", "num_hidden_layers": 1, "hidden_size": 64, "ffn_dim": 128, "num_attention_heads": 2,
            "word_embed_proj_dim": 64}  # fmt: skip
    config = tf.Blip2Config(vision_config=vision, qformer_config=qformer, num_query_tokens=32, text_config=text)
    model = tf.Blip2ForImageTextRetrieval(config).to(device)
    processor = tf.Blip2Processor(
        image_processor=tf.BlipImageProcessor(size={"height": 224, "width": 224}),
        tokenizer=_tokenizer(), num_query_tokens=32,
    )  # fmt: skip
    return Blip2QFormer(model, processor)


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(200)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]")


def _cpu() -> str:
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--layer", type=int, default=11, help="0-based Q-Former layer the probe reads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", help="file name stem (default: resampler_cache_cpu / _gpu)")
    args = parser.parse_args(argv)
    from PIL import Image

    from agci.resampler_probes.features import FeatureCache, extract

    torch.manual_seed(0)
    encoder = build(args.device)
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) for _ in range(args.items)]
    items = [{"id": i, "text": f"w{i % 200} w{(7 * i) % 200} w3"} for i in range(args.items)]
    labels = torch.tensor([i % 2 for i in range(args.items)], dtype=torch.float32)
    width = 32 * 768

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def epoch(get) -> float:
        probe = torch.nn.Linear(width, 1).to(args.device)
        opt = torch.optim.AdamW(probe.parameters(), lr=1e-4, weight_decay=0.01)
        sync()
        start = time.perf_counter()
        for i in range(0, args.items, args.batch_size):
            idx = list(range(i, min(i + args.batch_size, args.items)))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                probe(get(idx)).squeeze(-1), labels[idx].to(args.device)
            )
            loss.backward()
            opt.step()
            opt.zero_grad()
        sync()
        return time.perf_counter() - start

    def encode(idx):
        with torch.no_grad():
            feats = encoder.encode([pictures[i] for i in idx], [items[i]["text"] for i in idx])
        return feats[:, args.layer].flatten(1)

    with tempfile.TemporaryDirectory() as tmp:
        sync()
        start = time.perf_counter()
        extract(encoder, items, lambda it: pictures[it["id"]], Path(tmp), batch_size=args.batch_size)
        sync()
        extract_seconds = time.perf_counter() - start
        cached = FeatureCache(Path(tmp)).layer(args.layer).to(args.device)
        cached_epochs = [epoch(lambda idx: cached[idx]) for _ in range(args.epochs)]
    encode_epochs = [epoch(encode) for _ in range(args.epochs)]
    cached_s, encode_s = float(np.median(cached_epochs)), float(np.median(encode_epochs))
    import transformers

    result = {
        "benchmark": "frozen probe epoch: cached features vs re-encoding",
        "items": args.items, "epochs": args.epochs, "batch_size": args.batch_size, "layer": args.layer,
        "model": "random BLIP-2 stage 1: Q-Former 12 x 768, 32 queries; ViT 4 x 384 at 224 px",
        "ratio_encode_over_cached": round(encode_s / cached_s, 1),
        "extraction_over_cached_epoch": round(extract_seconds / cached_s, 1),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else _cpu(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }  # fmt: skip
    if args.device.startswith("cuda"):  # absolute times only from a GPU run
        result.update(cached_epoch_s=round(cached_s, 4), encode_epoch_s=round(encode_s, 4))
    kind = "gpu" if args.device.startswith("cuda") else "cpu"
    stem = args.tag or f"resampler_cache_{kind}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(
        f"| setting | epoch time vs cached |\n|---|---|\n| cached features | 1.0x |\n"
        f"| re-encoding every epoch | {result['ratio_encode_over_cached']}x |\n"
        f"| one extraction (paid once) | {result['extraction_over_cached_epoch']}x |\n\n{result['device']}\n"
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(["cached", "re-encoding"], [1.0, result["ratio_encode_over_cached"]])
    ax.set_ylabel("epoch time (cached = 1)")
    ax.set_title(f"Frozen probe epoch, {kind.upper()}")
    fig.tight_layout()
    fig.savefig(args.out / f"{stem}.png", dpi=120)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
