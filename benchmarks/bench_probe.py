"""Probe scoring: the reference's way against agci's, on the same model and samples, in one run.

- Position probe: batch 1, ``generate`` up to 128 new tokens, parse Yes/No (the reference), against one
  batched forward reading the next-token Yes/No scores (agci). Predictions must be identical wherever
  the generated answer is Yes or No.
- Occlusion maps: a ``generate`` for every masked copy (the reference), against teacher-forced scoring of
  the original answer for all masked copies in batches (agci). Maps must agree.

Images are decoded once, before timing; both ways pay the processor. Writes JSON, Markdown and a PNG to
``benchmarks/results/``. Default: the embedded tiny probe VLM on CPU; ``--model`` for a real one.

    python benchmarks/bench_probe.py [--model PATH] [--samples 96] [--occlusion-samples 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agci.bias.probe_sets import PROMPT, SetOptions, build, read_records  # noqa: E402
from agci.bias.scoring import (  # noqa: E402
    generate_answers,
    load_vlm,
    occlusion_map,
    occlusion_map_by_generation,
    score_yes_no,
)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--data", default=None, help="probe-set folder (default: a synthetic one built here)")
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--occlusion-samples", type=int, default=2)
    parser.add_argument("--mask", type=int, default=42)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", default=None, help="file name tag (default: cpu or the GPU's name)")
    args = parser.parse_args(argv)

    from agci.bias.runner import embedded_model

    model = args.model or str(embedded_model())
    vlm = load_vlm(model, args.dtype, args.device)
    device = str(vlm.device)
    data = Path(args.data) if args.data else Path(tempfile.gettempdir()) / "agci-bench-probe-set"
    if not args.data:
        build(data, SetOptions(source="synthetic:24", seed=11), progress=False)
    from PIL import Image

    records = read_records(data / "position.jsonl")[: args.samples]
    images = [Image.open(data / r["image"]).convert("RGB") for r in records]
    prompts = [PROMPT.format(caption=r["caption"]) for r in records]

    # warm-up both paths
    generate_answers(vlm, images[:1], prompts[:1], args.max_new_tokens)
    score_yes_no(vlm, images[:2], prompts[:2])

    _sync(device)
    t = time.perf_counter()
    reference = [
        generate_answers(vlm, [im], [p], args.max_new_tokens)[0] for im, p in zip(images, prompts, strict=False)
    ]
    _sync(device)
    t_reference = time.perf_counter() - t
    t = time.perf_counter()
    fast = []
    for i in range(0, len(images), args.batch_size):
        fast += score_yes_no(vlm, images[i : i + args.batch_size], prompts[i : i + args.batch_size])
    _sync(device)
    t_fast = time.perf_counter() - t
    answered = [(r, f) for r, f in zip(reference, fast, strict=False) if r["prediction"] != "Unknown"]
    position = {
        "samples": len(records),
        "reference_seconds": round(t_reference, 4),
        "agci_seconds": round(t_fast, 4),
        "speedup": round(t_reference / t_fast, 2),
        "answered_yes_or_no_by_generation": len(answered),
        "identical_predictions": sum(r["prediction"] == f["prediction"] for r, f in answered),
        "mean_generated_tokens": round(sum(len(r["answer_ids"]) for r in reference) / len(reference), 2),
    }

    occlusion = []
    positives = [i for i, r in enumerate(records) if r["answer"] == "Yes"][: args.occlusion_samples]
    for i in positives:
        answer = generate_answers(vlm, [images[i]], [prompts[i]], args.max_new_tokens)[0]["answer_ids"]
        _sync(device)
        t = time.perf_counter()
        _, slow_map = occlusion_map_by_generation(vlm, images[i], prompts[i], args.mask, args.max_new_tokens)
        _sync(device)
        t_slow = time.perf_counter() - t
        t = time.perf_counter()
        _, fast_map = occlusion_map(vlm, images[i], prompts[i], answer, args.mask, args.batch_size)
        _sync(device)
        t_fast_map = time.perf_counter() - t
        occlusion.append({
            "sample": records[i]["id"], "masks": slow_map.numel(), "reference_seconds": round(t_slow, 3),
            "agci_seconds": round(t_fast_map, 3), "speedup": round(t_slow / t_fast_map, 2),
            "max_abs_map_difference": float((slow_map - fast_map.to(slow_map.dtype)).abs().max()),
        })  # fmt: skip

    import transformers

    name = (
        torch.cuda.get_device_name()
        if torch.device(device).type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    occ_ref = sum(o["reference_seconds"] for o in occlusion)
    occ_fast = sum(o["agci_seconds"] for o in occlusion)
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    versions["python"] = platform.python_version()
    result = {
        "model": model, "device": name, "dtype": str(next(vlm.model.parameters()).dtype),
        "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "mask": args.mask,
        "position": position, "occlusion": occlusion,
        "occlusion_speedup": round(occ_ref / max(1e-9, occ_fast), 2), "versions": versions,
    }  # fmt: skip
    tag = args.tag or ("cpu" if torch.device(device).type == "cpu" else name.replace(" ", "_").lower())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"probe_{tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    md = [
        f"# Probe scoring: reference way vs agci ({name})",
        "",
        f"model: `{Path(model).name}`, dtype {result['dtype']}, batch {args.batch_size}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        "",
        "| probe | reference (s) | agci (s) | speedup | agreement |",
        "|---|---:|---:|---:|---|",
        f"| position, {position['samples']} samples | {position['reference_seconds']} | {position['agci_seconds']} | "
        f"{position['speedup']}x | {position['identical_predictions']}/{position['answered_yes_or_no_by_generation']} "
        "identical predictions |",
    ]
    for o in occlusion:
        timing = f"{o['reference_seconds']} | {o['agci_seconds']} | {o['speedup']}x"
        md.append(
            f"| occlusion, {o['masks']} masks | {timing} | max map difference {o['max_abs_map_difference']:.2e} |"
        )
    (args.out / f"probe_{tag}.md").write_text("\n".join(md) + "\n")
    _plot(result, args.out / f"probe_{tag}.png")
    print("\n".join(md))
    return 0


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["position probe"] + [f"occlusion map {i + 1}" for i in range(len(result["occlusion"]))]
    speedups = [result["position"]["speedup"]] + [o["speedup"] for o in result["occlusion"]]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(labels, speedups, color="tab:blue")
    ax.axvline(1, color="grey", lw=1)
    for y, v in enumerate(speedups):
        ax.text(v, y, f" {v:.1f}x", va="center")
    ax.set_xlabel("speedup over the reference's way (same run)")
    ax.set_title(f"{Path(result['model']).name} on {result['device']}", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
