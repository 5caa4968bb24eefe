"""End-to-end prefill cost of AGCI: lambda 0.5 against lambda 0 in the same run, same model, same inputs.

The model is Qwen2.5-VL with Qwen2.5-VL-7B's dimensions and random weights (benchmarks/qwen7b.py). By default
only ``--layers`` vision and decoder layers are built, which makes the overhead ratio an upper bound: a full
model does more work around the same op. ``--real-size`` builds the whole 7B model (32 vision layers, 28
decoder layers) in bf16 on the GPU and measures a ~1k and a ~4k visual-token image plus a short prompt, at
least 20 interleaved repetitions per lambda, and a 128-token greedy generate per lambda. ``--tiny`` uses tiny
dimensions (CPU smoke test of the whole script).

    python benchmarks/bench_e2e.py                        # CPU: 1 layer each, 256 visual tokens
    python benchmarks/bench_e2e.py --layers 4 --tokens 4096 --dtype bf16    # GPU
    python benchmarks/bench_e2e.py --real-size --out DIR  # GPU: the 7B model, 1024 and 4096 tokens, generate
    python benchmarks/bench_e2e.py --tiny --tokens 16,64 --reps 2 --generate 4   # CPU smoke test
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import agci  # noqa: E402
from agci.configs import format_lambda  # noqa: E402


def build(layers: int | None, dtype: torch.dtype, device: str, tiny: bool = False):
    """Qwen2.5-VL-7B-shaped with random weights; ``layers`` None: all of them (32 vision, 28 decoder)."""
    import qwen7b

    cfg = qwen7b.config(*((32, 28) if layers is None else (layers, layers)), tiny=tiny)
    return qwen7b.build(cfg, dtype, device)


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


def measure(model, tokens: int, reps: int, device: str, dtype: torch.dtype, generate: int) -> tuple[dict, dict]:
    """One image of ``tokens`` visual tokens: interleaved prefills at lambda 0 and 0.5 (result, times)."""
    cuda = device == "cuda"
    inputs = inputs_for(model, tokens, device, dtype)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def prefill(lam: float) -> float:
        with agci.using_lambda(model, lam), torch.no_grad():
            sync()
            t0 = time.perf_counter()
            model(**inputs)
            sync()
            return (time.perf_counter() - t0) * 1e3

    logits = {}
    for lam in (0.0, 0.5):  # warm-up, and proof that lambda reached the forward
        with agci.using_lambda(model, lam), torch.no_grad():
            logits[lam] = model(**inputs).logits[:, -8:].float()
    changed = (logits[0.5] - logits[0.0]).abs().max().item()
    if not changed > 0:
        raise SystemExit("lambda 0.5 gave the same logits as lambda 0: AGCI did not run")
    if not all(torch.isfinite(v).all() for v in logits.values()):
        raise SystemExit("non-finite logits: the random model is broken at this size")
    times = {0.0: [], 0.5: []}
    for rep in range(reps):  # interleaved, first one then the other first, so drift and order hit both alike
        for lam in (0.0, 0.5) if rep % 2 == 0 else (0.5, 0.0):
            times[lam].append(prefill(lam))
    base, agci_ms = statistics.median(times[0.0]), statistics.median(times[0.5])
    pair = sorted(a / b for a, b in zip(times[0.5], times[0.0], strict=True))  # per repetition
    # The op alone on a tensor of the visual tokens' shape: what AGCI adds, free of run-to-run noise.
    x = torch.randn(tokens, model.config.text_config.hidden_size, device=device, dtype=dtype)
    op_times = []
    for _ in range(20):
        sync()
        t0 = time.perf_counter()
        agci.global_context_broadcast(x, 0.5)
        sync()
        op_times.append((time.perf_counter() - t0) * 1e3)
    op_ms = statistics.median(op_times[5:])
    q = statistics.quantiles(pair, n=10) if len(pair) > 1 else pair * 9
    result = {
        "visual_tokens": tokens, "reps": reps, "impl": agci.kernels.resolve_impl("auto", x),
        "overhead_ratio": round(agci_ms / base, 4), "max_logit_change": changed,
        "ratio_of_minimums": round(min(times[0.5]) / min(times[0.0]), 4),
        "paired_ratio_p10_p50_p90": [round(q[0], 4), round(statistics.median(pair), 4), round(q[-1], 4)],
        "lambda0_max_over_min": round(max(times[0.0]) / min(times[0.0]), 4),
        "op_share_of_prefill": round(op_ms / base, 6),
    }  # fmt: skip
    if cuda:  # absolute times only from a GPU
        result.update({"median_ms_lambda0": round(base, 3), "median_ms_lambda05": round(agci_ms, 3),
                       "spread_lambda0_ms": [round(min(times[0.0]), 2), round(max(times[0.0]), 2)],
                       "spread_lambda05_ms": [round(min(times[0.5]), 2), round(max(times[0.5]), 2)],
                       "op_alone_ms": round(op_ms, 4)})  # fmt: skip
    if generate:
        result["generate"] = _generate(model, inputs, generate, sync, cuda)
    return result, times


def _generate(model, inputs: dict, new_tokens: int, sync, cuda: bool) -> dict:
    """A greedy generate of exactly ``new_tokens`` tokens per lambda (after a short warm-up)."""
    out = {"new_tokens": new_tokens}
    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
        seconds = {}
        for lam in (0.0, 0.5):
            with agci.using_lambda(model, lam):
                sync()
                t0 = time.perf_counter()
                ids = model.generate(**inputs, **kwargs)
                sync()
                seconds[lam] = time.perf_counter() - t0
            if ids.shape[1] != inputs["input_ids"].shape[1] + new_tokens:
                raise SystemExit(f"generate gave {ids.shape[1] - inputs['input_ids'].shape[1]} new tokens")
    out["ratio_lambda05_over_lambda0"] = round(seconds[0.5] / seconds[0.0], 4)
    if cuda:
        out.update({"seconds_lambda0": round(seconds[0.0], 3), "seconds_lambda05": round(seconds[0.5], 3),
                    "tokens_per_s_lambda05": round(new_tokens / seconds[0.5], 2)})  # fmt: skip
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--tokens", default="256", help="visual tokens of the image, comma-separated (square numbers)")
    ap.add_argument("--dtype", default=None, help="fp32 or bf16 (default: bf16 on GPU, fp32 on CPU)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--generate", type=int, default=0, help="also time a greedy generate of this many tokens")
    ap.add_argument("--real-size", action="store_true",
                    help="the whole 7B model in bf16; tokens 1024,4096, >= 20 reps, a 128-token generate")  # fmt: skip
    ap.add_argument("--tiny", action="store_true", help="tiny dimensions: a CPU smoke test of the script")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--tag", default=None, help="file name stem (default: e2e_<gpu|cpu>_<layers>l_<tokens>t)")
    args = ap.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device == "cuda"
    if args.real_size:
        if args.tokens == "256":
            args.tokens = "1024,4096"
        args.reps, args.generate = max(args.reps, 20), args.generate or 128
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[
        args.dtype or ("bf16" if cuda or args.real_size else "fp32")
    ]
    sizes = [int(t) for t in args.tokens.split(",")]
    t0 = time.perf_counter()
    model = build(None if args.real_size else args.layers, dtype, device, tiny=args.tiny)
    build_s = time.perf_counter() - t0
    agci.apply_agci(model)
    per_size, all_times = [], {}
    for tokens in sizes:
        result, times = measure(model, tokens, args.reps, device, dtype, args.generate if tokens == sizes[0] else 0)
        per_size.append(result)
        all_times[tokens] = times
        print(json.dumps(result), flush=True)
    dev_name = (
        torch.cuda.get_device_name() if cuda else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    )
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cfg = model.config
    result = {
        "device": dev_name, "date": dt.date.today().isoformat(), "torch": torch.__version__,
        "transformers": transformers.__version__, "triton": triton_version,
        "driver": _driver() if cuda else None, "dtype": str(dtype).replace("torch.", ""),
        "model": "Qwen2.5-VL-7B-shaped, random weights" + (" (tiny dimensions)" if args.tiny else ""),
        "vision_layers": cfg.vision_config.depth, "text_layers": cfg.text_config.num_hidden_layers,
        "parameters_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 3), "build_s": round(build_s, 1),
        "sizes": per_size,
    }  # fmt: skip
    if len(per_size) == 1:  # the single-size layout of earlier result files
        result.update({k: v for k, v in per_size[0].items()})
        result["layers"] = args.layers
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    label = "7b" if args.real_size else f"{args.layers}l_{'-'.join(map(str, sizes))}t"
    name = args.tag or f"e2e_{'gpu' if cuda else 'cpu'}_{label}"
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{name}.md").write_text(_markdown(result))
    _plot(all_times, result, out / f"{name}.png")
    print(_markdown(result))
    return 0


def _driver() -> str | None:
    import subprocess

    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip() or None  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None


def _markdown(result: dict) -> str:
    lines = [
        f"# AGCI end to end: {result['model']} on {result['device']}",
        "",
        f"{result['vision_layers']} vision / {result['text_layers']} decoder layers, {result['parameters_b']} B "
        f"parameters, {result['dtype']}; torch {result['torch']}, transformers {result['transformers']}, triton "
        f"{result['triton']}, driver {result['driver']}, {result['date']}. Prefill = one forward of one image "
        "plus a short prompt; lambda 0.5 against 0, interleaved.",
        "",
        "| visual tokens | reps | impl | median ratio | paired ratio p10 / p50 / p90 | lambda-0 max/min | "
        "median ms (0 / 0.5) | op alone ms | generate ratio (tokens/s) |",
        "|---:|---:|---|---:|---|---:|---|---:|---|",
    ]
    for r in result["sizes"]:
        gen = r.get("generate")
        gen_cell = f"{gen['ratio_lambda05_over_lambda0']} ({gen.get('tokens_per_s_lambda05', '-')})" if gen else "-"
        ms = f"{r['median_ms_lambda0']} / {r['median_ms_lambda05']}" if "median_ms_lambda0" in r else "-"
        lines.append(
            f"| {r['visual_tokens']} | {r['reps']} | {r['impl']} | {r['overhead_ratio']} | "
            f"{' / '.join(map(str, r['paired_ratio_p10_p50_p90']))} | {r['lambda0_max_over_min']} | {ms} | "
            f"{r.get('op_alone_ms', '-')} | {gen_cell} |"
        )
    return "\n".join(lines) + "\n"


def _plot(all_times: dict, result: dict, path: Path) -> None:
    """Each repetition's prefill time relative to lambda 0's median, for both lambdas, one panel per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_times), figsize=(6 * len(all_times), 3), squeeze=False)
    for ax, (tokens, times), r in zip(axes[0], all_times.items(), result["sizes"], strict=True):
        base = statistics.median(times[0.0])
        for lam, colour in ((0.0, "tab:grey"), (0.5, "tab:blue")):
            ax.plot([t / base for t in times[lam]], "o-", color=colour, label=f"lambda {format_lambda(lam)}")
        ax.axhline(1, color="black", lw=0.8)
        ax.set_xlabel("repetition (interleaved)")
        ax.set_ylabel("prefill time / median at lambda 0")
        ax.set_title(f"{result['device']}, {result['text_layers']} layers, {tokens} visual tokens: "
                     f"median ratio {r['overhead_ratio']:.3f}", fontsize=8)  # fmt: skip
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
