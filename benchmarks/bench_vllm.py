"""AGCI's cost when a VLM is served by vLLM: throughput (requests/s, output tokens/s) and time to first token
with the plugin off (stock vLLM), at lambda 0 and at lambda 0.5, on the same checkpoint, in one run.

The three engines are up at once, in this process (an idle one takes no CPU), and take turns, round by round in a
shuffled order, each round a fresh set of requests (new images, so that no embedding is reused from the encoder or
prefix cache). Each configuration's median is reported as a ratio to the plugin-off median, with the spread (min-max
ratio over rounds). On a CPU only the ratios mean anything; absolute numbers are written with the device and
versions on a GPU.

    python benchmarks/bench_vllm.py [--model PATH --prompt TEXT] [--requests 64] [--rounds 10] [--max-tokens 64]

Default model: a tiny LLaVA written as the vLLM tests write it (tests/vllm_cases.py). Run in an environment with
vLLM and agci installed (``make test-vllm`` builds ``.venv-vllm``). Writes JSON, Markdown and a PNG to
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

CONFIGS = ("plugin off", "lambda 0", "lambda 0.5")


def _engine(model: str, config: str, args, tmp: Path):
    """One engine, in this process (so that the idle ones take no CPU while another runs): plugin off is vLLM's
    own class (``agci.vllm.models.stock_classes``) on a path of its own; the others get lambda as --hf-overrides."""
    import contextlib

    from vllm import LLM, envs

    from agci.configs import LAMBDA_KEY
    from agci.vllm.models import stock_classes

    envs.disable_envs_cache()  # an engine in this process caches vLLM's variables
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    off = config == "plugin off"
    if off:  # vLLM remembers the class of each path it loaded
        (tmp / "stock").symlink_to(Path(model).resolve(), target_is_directory=True)
        model = str(tmp / "stock")
    kwargs = {"dtype": args.dtype, "max_model_len": args.max_model_len, "enable_prefix_caching": False,
              "limit_mm_per_prompt": {"image": 1}, "disable_log_stats": False, "seed": 0,
              "hf_overrides": {} if off else {LAMBDA_KEY: float(config.split()[1])}}  # fmt: skip
    if args.gpu_memory_utilization:
        kwargs["gpu_memory_utilization"] = args.gpu_memory_utilization
    if args.enforce_eager:
        kwargs["enforce_eager"] = True
    with stock_classes() if off else contextlib.nullcontext():
        return LLM(model, **kwargs)


def _requests(prompt: str, n: int, size: int, seed: int) -> list[dict]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [{"prompt": prompt, "multi_modal_data": {"image": Image.fromarray(rng.integers(0, 255, (size, size, 3),
                                                                                         dtype=np.uint8))}}
            for _ in range(n)]  # fmt: skip


def _round(llm, requests, max_tokens: int) -> dict:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, min_tokens=max_tokens, temperature=0, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate(requests, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    ttft = [o.metrics.first_token_latency for o in outputs if o.metrics is not None]
    return {"seconds": seconds, "requests_per_s": len(outputs) / seconds, "output_tokens_per_s": tokens / seconds,
            "ttft_s": statistics.median(ttft) if ttft else None}  # fmt: skip


def _versions() -> dict:
    import torch
    import transformers
    import vllm

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    return {"device": device, "vllm": vllm.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}  # fmt: skip


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("requests_per_s", "requests/s"), ("output_tokens_per_s", "output tokens/s"), ("ttft_s", "TTFT")]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, (key, label) in zip(axes, metrics, strict=True):
        for i, config in enumerate(CONFIGS):
            ratios = result["ratios"][config][key]
            if ratios["median"] is None:
                continue
            ax.bar(i, ratios["median"], color=("0.6", "tab:blue", "tab:orange")[i])
            spread = [[ratios["median"] - ratios["min"]], [ratios["max"] - ratios["median"]]]
            ax.errorbar(i, ratios["median"], yerr=spread, color="k", capsize=4)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xticks(range(len(CONFIGS)), CONFIGS, fontsize=8)
        ax.set_title(f"{label} / plugin off", fontsize=9)
    fig.suptitle(f"AGCI on vLLM: {result['model']} on {result['versions']['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", help="a local checkpoint (default: a tiny LLaVA built for the run)")
    p.add_argument("--prompt", help="the prompt with the image placeholder (default: the tiny LLaVA's)")
    p.add_argument("--requests", type=int, default=64, help="requests per round (sent together)")
    p.add_argument("--rounds", type=int, default=10, help="rounds per configuration, interleaved")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--image-size", type=int, default=336)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--gpu-memory-utilization", type=float, help="per engine (three are up at once; e.g. 0.28)")
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (always so on a CPU)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--tag", default=None)
    args = p.parse_args(argv)
    import torch
    from tqdm.auto import tqdm

    if not torch.cuda.is_available():  # vLLM's CPU build reserves 92% of the memory for its cache by default
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        model, prompt, name = args.model, args.prompt, args.model
        if model is None:
            import vllm_cases

            model = str(vllm_cases.save_for_vllm("llava", Path(tmp) / "llava"))
            prompt, name, args.image_size = vllm_cases.CASES["llava"].prompt(1), "tiny LLaVA (vLLM test sizes)", 56
            args.enforce_eager, args.max_model_len = True, 1024
        if prompt is None:
            p.error("--prompt is needed with --model (the text with the model's image placeholder)")
        engines = {c: _engine(model, c, args, Path(tmp)) for c in tqdm(CONFIGS, desc="engines")}
        warm = _requests(prompt, 2, args.image_size, seed=10_000)
        for llm in engines.values():
            _round(llm, warm, 2)
        rounds = {c: [] for c in CONFIGS}
        order = random.Random(0)
        for r in tqdm(range(args.rounds), desc="rounds"):
            requests = _requests(prompt, args.requests, args.image_size, seed=r)
            for c in order.sample(CONFIGS, len(CONFIGS)):
                # the same images for every configuration of a round, but no cache: prefix caching is off and each
                # engine sees a round's images once
                rounds[c].append(_round(engines[c], requests, args.max_tokens))
        for llm in engines.values():
            llm.llm_engine.engine_core.shutdown()
    ratios = {}
    for c in CONFIGS:
        ratios[c] = {}
        for key in ("requests_per_s", "output_tokens_per_s", "ttft_s"):
            per_round = [a[key] / b[key] for a, b in zip(rounds[c], rounds["plugin off"], strict=True)
                         if a[key] is not None and b[key]]  # fmt: skip
            ratios[c][key] = ({"median": statistics.median(per_round), "min": min(per_round), "max": max(per_round)}
                              if per_round else {"median": None, "min": None, "max": None})  # fmt: skip
    versions = _versions()
    result = {"model": name, "requests": args.requests, "rounds": args.rounds, "max_tokens": args.max_tokens,
              "image_size": args.image_size, "versions": versions, "ratios": ratios,
              # absolute numbers only from a GPU
              "rounds_raw": None if versions["device"].startswith("cpu") else rounds}  # fmt: skip
    tag = args.tag or ("cpu" if versions["device"].startswith("cpu") else versions["device"].lower().replace(" ", "_"))
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / f"vllm_{tag}"
    base.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [f"# AGCI on vLLM: {name}", "", f"{versions}", "",
             f"{args.requests} requests per round, {args.rounds} rounds, {args.max_tokens} output tokens each; "
             "ratio to plugin off per round: median (min-max)", "",
             "| configuration | requests/s | output tokens/s | TTFT |", "|---|---|---|---|"]  # fmt: skip
    for c in CONFIGS:
        cells = [("{median:.3f} ({min:.3f}-{max:.3f})".format(**ratios[c][k]) if ratios[c][k]["median"] else "n/a")
                 for k in ("requests_per_s", "output_tokens_per_s", "ttft_s")]  # fmt: skip
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    _plot(result, base.with_suffix(".png"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
