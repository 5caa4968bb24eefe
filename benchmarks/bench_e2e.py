"""End-to-end prefill cost of AGCI: lambda 0.5 against lambda 0 in the same run, same model, same inputs.

The model is Qwen2.5-VL with Qwen2.5-VL-7B's dimensions (vision: hidden 1280, 16 heads, patch 14,
merge 2; text: hidden 3584, 28 heads, 4 KV heads, MLP 18944) and random weights. Only a few vision
and decoder layers are built, which makes the overhead ratio an upper bound: a full model does more
work around the same op. One image of ``--tokens`` visual tokens plus a short prompt.

    python benchmarks/bench_e2e.py                        # CPU: 1 layer each, 256 visual tokens
    python benchmarks/bench_e2e.py --layers 4 --tokens 4096 --dtype bf16    # GPU
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import agci  # noqa: E402
from agci.configs import format_lambda  # noqa: E402


def build(layers: int, dtype: torch.dtype, device: str):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        vision_config={"depth": layers, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                       "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                       "fullatt_block_indexes": [layers - 1], "window_size": 112},
        text_config={"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": layers,
                     "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                     "max_position_embeddings": 32768,
                     "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}},
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype).eval()
    return model


def inputs_for(model, tokens: int, device: str, dtype: torch.dtype) -> dict:
    side = int(math.isqrt(tokens))
    if side * side != tokens:
        raise SystemExit(f"--tokens must be a square number (a side x side grid of merged patches), got {tokens}")
    grid = torch.tensor([[1, 2 * side, 2 * side]], device=device)  # patches before the 2x2 merge
    pixel_values = torch.randn(4 * tokens, 3 * 2 * 14 * 14, device=device, dtype=dtype)
    cfg = model.config
    ids = [151644, 872, cfg.vision_start_token_id, *[cfg.image_token_id] * tokens, cfg.vision_end_token_id, 3838, 374]
    input_ids = torch.tensor([ids], device=device)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values": pixel_values,
            "image_grid_thw": grid}  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=256, help="visual tokens of the image (a square number)")
    ap.add_argument("--dtype", default=None, help="fp32 or bf16 (default: bf16 on GPU, fp32 on CPU)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or ("bf16" if cuda else "fp32")]
    model = build(args.layers, dtype, device)
    agci.apply_agci(model)
    inputs = inputs_for(model, args.tokens, device, dtype)

    def prefill(lam: float) -> float:
        with agci.using_lambda(model, lam), torch.no_grad():
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(**inputs)
            if cuda:
                torch.cuda.synchronize()
            return (time.perf_counter() - t0) * 1e3

    logits = {}
    for lam in (0.0, 0.5):  # warm-up, and proof that lambda reached the forward
        with agci.using_lambda(model, lam), torch.no_grad():
            logits[lam] = model(**inputs).logits.float()
    changed = (logits[0.5] - logits[0.0]).abs().max().item()
    if not changed > 0:
        raise SystemExit("lambda 0.5 gave the same logits as lambda 0: AGCI did not run")
    times = {0.0: [], 0.5: []}
    for rep in range(args.reps):  # interleaved, first one then the other first, so drift and order hit both alike
        for lam in (0.0, 0.5) if rep % 2 == 0 else (0.5, 0.0):
            times[lam].append(prefill(lam))
    base, agci_ms = statistics.median(times[0.0]), statistics.median(times[0.5])
    # The op alone on a tensor of the visual tokens' shape: what AGCI adds, free of run-to-run noise.
    tokens = torch.randn(args.tokens, model.config.text_config.hidden_size, device=device, dtype=dtype)
    op_times = []
    for _ in range(20):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        agci.global_context_broadcast(tokens, 0.5)
        if cuda:
            torch.cuda.synchronize()
        op_times.append((time.perf_counter() - t0) * 1e3)
    op_ms = statistics.median(op_times[5:])
    dev_name = (
        torch.cuda.get_device_name() if cuda else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    )
    import transformers

    result = {
        "device": dev_name, "date": dt.date.today().isoformat(), "torch": torch.__version__,
        "transformers": transformers.__version__, "dtype": str(dtype).replace("torch.", ""),
        "layers": args.layers, "visual_tokens": args.tokens, "reps": args.reps,
        "impl": agci.kernels.resolve_impl("auto", inputs["pixel_values"]),
        "overhead_ratio": round(agci_ms / base, 4), "max_logit_change": changed,
        "ratio_of_minimums": round(min(times[0.5]) / min(times[0.0]), 4),
        "lambda0_max_over_min": round(max(times[0.0]) / min(times[0.0]), 4),
        "op_share_of_prefill": round(op_ms / base, 6),
    }  # fmt: skip
    if cuda:  # absolute times only from a GPU
        result.update({"median_ms_lambda0": round(base, 3), "median_ms_lambda05": round(agci_ms, 3),
                       "spread_lambda0_ms": [round(min(times[0.0]), 2), round(max(times[0.0]), 2)],
                       "op_alone_ms": round(op_ms, 4)})  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"e2e_{'gpu' if cuda else 'cpu'}_{args.layers}l_{args.tokens}t"
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    _plot(times, base, result, out / f"{name}.png")
    print(json.dumps(result, indent=1))
    return 0


def _plot(times: dict, base: float, result: dict, path: Path) -> None:
    """Each repetition's prefill time relative to lambda 0's median, for both lambdas."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    for lam, colour in ((0.0, "tab:grey"), (0.5, "tab:blue")):
        ax.plot([t / base for t in times[lam]], "o-", color=colour, label=f"lambda {format_lambda(lam)}")
    ax.axhline(1, color="black", lw=0.8)
    ax.set_xlabel("repetition (interleaved)")
    ax.set_ylabel("prefill time / median at lambda 0")
    ax.set_title(f"{result['device']}, {result['layers']} layers, {result['visual_tokens']} visual tokens: "
                 f"median ratio {result['overhead_ratio']:.3f}", fontsize=8)  # fmt: skip
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
