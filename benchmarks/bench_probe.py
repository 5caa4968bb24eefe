"""Probe scoring: the reference's way against agci's, on the same model and samples, in one run.

- Position probe: for each lambda, batch 1, ``generate`` up to 128 new tokens, parse Yes/No (the
  reference), against agci's batches, each put through the processor once and then scored by one
  forward per lambda reading the next-token Yes/No scores. Predictions must be identical wherever the
  generated answer is Yes or No.
- Occlusion maps: for each lambda, a ``generate`` for the image and for every masked copy (the
  reference), against agci's teacher-forced scoring of each lambda's answer for all masked copies in
  batches, each batch encoded once for all lambdas. Maps must agree.

The lambdas default to ``agci probe``'s sweep (0 and 0.5). Images are decoded once, before timing; both
ways pay the processor. agci runs as ``agci probe`` does, the next batch encoded on a thread while the
model runs; a second, sequential agci pass splits its time into processor and the rest, which gives each
way's processor share and the speedup of everything else.
Writes JSON, Markdown and a PNG to ``benchmarks/results/``: ratios only on a CPU, absolute seconds as
well on a GPU. Default: the embedded tiny probe VLM; ``--model`` for a real one.

    python benchmarks/bench_probe.py [--model PATH] [--samples 96] [--occlusion-samples 2] [--lambdas 0,0.5]
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

from agci.bias import model_runs  # noqa: E402
from agci.bias.probe_sets import PROMPT, SetOptions, build, read_records  # noqa: E402
from agci.configs import format_lambda, parse_lambdas, using_lambda  # noqa: E402


class Clock:
    """Wall time of a block, and how much of it ``model_runs.encode`` (processor and transfer) took."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.seconds = self.processor_seconds = 0.0

    def __enter__(self):
        real = self.real = model_runs.encode

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.processor_seconds += time.perf_counter() - start

        model_runs.encode = timed
        self._sync()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.seconds += time.perf_counter() - self.start
        model_runs.encode = self.real

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()


def compare(reference: Clock, agci: Clock, sequential: Clock, absolute: bool) -> dict:
    """Speedup end to end (agci as ``agci probe`` runs it: the next batch prepared on a thread); the split
    into processor and the rest comes from agci's sequential pass, where the two add up."""
    rest = (reference.seconds - reference.processor_seconds) / max(
        1e-9, sequential.seconds - sequential.processor_seconds
    )
    out = {
        "speedup": round(reference.seconds / agci.seconds, 2),
        "speedup_without_processor": round(rest, 2),
        "prefetch_gain": round(sequential.seconds / agci.seconds, 2),
        "processor_share": {"reference": round(reference.processor_seconds / reference.seconds, 3),
                            "agci": round(sequential.processor_seconds / sequential.seconds, 3)},
    }  # fmt: skip
    if absolute:
        out["seconds"] = {"reference": round(reference.seconds, 4), "agci": round(agci.seconds, 4),
                          "agci_sequential": round(sequential.seconds, 4)}  # fmt: skip
    return out


def position(vlm, images, prompts, lambdas, args, absolute: bool) -> dict:
    device = vlm.device
    reference = {}
    with Clock(device) as ref_clock:
        for lam in lambdas:
            with using_lambda(vlm.model, lam):
                reference[lam] = [
                    model_runs.generate_answers(vlm, [im], [p], args.max_new_tokens)[0]
                    for im, p in zip(images, prompts, strict=True)
                ]

    def agci_way(prefetch: int) -> dict:
        fast: dict = {lam: [] for lam in lambdas}
        batches = model_runs.chunks(list(zip(images, prompts, strict=True)), args.batch_size)
        encode = lambda batch: model_runs.encode(vlm, *zip(*batch, strict=True))  # noqa: E731
        for inputs in model_runs.prefetched(encode, batches, prefetch):
            for lam in lambdas:
                with using_lambda(vlm.model, lam):
                    fast[lam] += model_runs.yes_no_from_inputs(vlm, inputs)
        return fast

    with Clock(device) as sequential_clock:
        agci_way(0)
    with Clock(device) as agci_clock:
        fast = agci_way(1)
    agreement = {}
    for lam in lambdas:
        answered = [(r, f) for r, f in zip(reference[lam], fast[lam], strict=True) if r["prediction"] != "Unknown"]
        agreement[format_lambda(lam)] = {
            "answered_yes_or_no_by_generation": len(answered),
            "identical_predictions": sum(r["prediction"] == f["prediction"] for r, f in answered),
            "mean_generated_tokens": round(sum(len(r["answer_ids"]) for r in reference[lam]) / len(images), 2),
        }
    comparison = compare(ref_clock, agci_clock, sequential_clock, absolute)
    return {"samples": len(images), **comparison, "per_lambda": agreement}


def occlusion(vlm, image, prompt, sample_id, lambdas, args, absolute: bool) -> dict:
    device = vlm.device
    slow = {}
    with Clock(device) as ref_clock:
        for lam in lambdas:
            with using_lambda(vlm.model, lam):
                _, slow[lam] = model_runs.occlusion_map_by_generation(vlm, image, prompt, args.mask,
                                                                      args.max_new_tokens)  # fmt: skip

    def agci_way(prefetch: int) -> dict:
        inputs = model_runs.encode(vlm, [image], [prompt])
        answers = {}
        for lam in lambdas:
            with using_lambda(vlm.model, lam):
                answers[lam] = model_runs.generate_from_inputs(vlm, inputs, args.max_new_tokens)[0]["answer_ids"]
        return model_runs.occlusion_maps(vlm, image, prompt, answers, args.mask, args.batch_size, prefetch, inputs)

    with Clock(device) as sequential_clock:
        agci_way(0)
    with Clock(device) as agci_clock:
        fast = agci_way(1)
    difference = max(float((slow[lam] - fast[lam][1].to(slow[lam].dtype)).abs().max()) for lam in lambdas)
    comparison = compare(ref_clock, agci_clock, sequential_clock, absolute)
    return {"sample": sample_id, "masks": slow[lambdas[0]].numel(), **comparison,
            "max_abs_map_difference": difference}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--data", default=None, help="probe-set folder (default: a synthetic one built here)")
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--occlusion-samples", type=int, default=2)
    parser.add_argument("--mask", type=int, default=42)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--lambdas", default="0,0.5", help="comma-separated sweep (default: agci probe's)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", default=None, help="file name tag (default: cpu or the GPU's name)")
    args = parser.parse_args(argv)
    lambdas = parse_lambdas(args.lambdas)

    from agci.bias.runner import embedded_model

    model = args.model or str(embedded_model())
    vlm = model_runs.load_probe_vlm(model, args.dtype, args.device)
    on_gpu = vlm.device.type == "cuda"
    data = Path(args.data) if args.data else Path(tempfile.gettempdir()) / "agci-bench-probe-set"
    if not args.data:
        build(data, SetOptions(source="synthetic:24", seed=11), progress=False)
    from PIL import Image

    records = read_records(data / "position.jsonl")[: args.samples]
    images = [Image.open(data / r["image"]).convert("RGB") for r in records]
    prompts = [PROMPT.format(caption=r["caption"]) for r in records]

    # warm-up both paths
    model_runs.generate_answers(vlm, images[:1], prompts[:1], args.max_new_tokens)
    model_runs.score_yes_no(vlm, images[:2], prompts[:2])

    result_position = position(vlm, images, prompts, lambdas, args, on_gpu)
    positives = [i for i, r in enumerate(records) if r["answer"] == "Yes"][: args.occlusion_samples]
    result_occlusion = [occlusion(vlm, images[i], prompts[i], records[i]["id"], lambdas, args, on_gpu)
                        for i in positives]  # fmt: skip

    import transformers

    name = (
        torch.cuda.get_device_name()
        if on_gpu
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    versions["python"] = platform.python_version()
    result = {
        "model": model, "device": name, "dtype": str(next(vlm.model.parameters()).dtype),
        "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "mask": args.mask,
        "lambdas": lambdas, "position": result_position, "occlusion": result_occlusion, "versions": versions,
    }  # fmt: skip
    tag = args.tag or ("cpu" if not on_gpu else name.replace(" ", "_").lower())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"probe_{tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    md = _markdown(result, model, on_gpu)
    (args.out / f"probe_{tag}.md").write_text("\n".join(md) + "\n")
    _plot(result, args.out / f"probe_{tag}.png")
    print("\n".join(md))
    return 0


def _markdown(result: dict, model: str, absolute: bool) -> list[str]:
    sweep = ", ".join(format_lambda(lam) for lam in result["lambdas"])
    versions = result["versions"]
    md = [
        f"# Probe scoring: reference way vs agci ({result['device']})",
        "",
        f"model: `{Path(model).name}`, dtype {result['dtype']}, batch {result['batch_size']}, lambdas {sweep}, "
        f"torch {versions['torch']}, transformers {versions['transformers']}",
        "",
        "| probe | "
        + ("reference (s) | agci (s) | " if absolute else "")
        + "speedup | speedup without the processor | processor share (reference / agci) | prefetch gain | "
        "agreement |",
        "|---|" + ("---:|---:|" if absolute else "") + "---:|---:|---:|---:|---|",
    ]

    def row(label: str, r: dict, agreement: str) -> str:
        seconds = f"{r['seconds']['reference']} | {r['seconds']['agci']} | " if absolute else ""
        share = r["processor_share"]
        return (f"| {label} | {seconds}{r['speedup']}x | {r['speedup_without_processor']}x | "
                f"{share['reference']:.0%} / {share['agci']:.0%} | {r['prefetch_gain']}x | {agreement} |")  # fmt: skip

    pos = result["position"]
    same = sum(v["identical_predictions"] for v in pos["per_lambda"].values())
    answered = sum(v["answered_yes_or_no_by_generation"] for v in pos["per_lambda"].values())
    md.append(row(f"position, {pos['samples']} samples", pos, f"{same}/{answered} identical predictions"))
    for o in result["occlusion"]:
        md.append(row(f"occlusion, {o['masks']} masks", o, f"max map difference {o['max_abs_map_difference']:.2e}"))
    return md


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [result["position"]] + result["occlusion"]
    labels = ["position probe"] + [f"occlusion map {i + 1}" for i in range(len(result["occlusion"]))]
    fig, ax = plt.subplots(figsize=(7, 3))
    y = range(len(rows))
    ax.barh([i + 0.2 for i in y], [r["speedup"] for r in rows], 0.4, color="tab:blue", label="end to end")
    ax.barh([i - 0.2 for i in y], [r["speedup_without_processor"] for r in rows], 0.4, color="tab:orange",
            label="without the processor's time")  # fmt: skip
    for i, r in enumerate(rows):
        ax.text(r["speedup"], i + 0.2, f" {r['speedup']:.1f}x", va="center", fontsize=8)
        ax.text(r["speedup_without_processor"], i - 0.2, f" {r['speedup_without_processor']:.1f}x", va="center",
                fontsize=8)  # fmt: skip
    ax.set_yticks(list(y), labels)
    ax.axvline(1, color="grey", lw=1)
    ax.set_xlabel("speedup over the reference's way (same run)")
    sweep = ", ".join(format_lambda(lam) for lam in result["lambdas"])
    ax.set_title(f"{Path(result['model']).name} on {result['device']}, lambdas {sweep}", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
