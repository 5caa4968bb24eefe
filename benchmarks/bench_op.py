"""Speed and memory of the AGCI op: forward, backward and both, against the reference repo's formula.

Providers:
  eager_formula      the reference repository's code as written (one mean per call, F.cosine_similarity)
  agci_reference     agci's pure-PyTorch op (per image, float32 sums)
  agci_compiled      torch.compile of agci_reference
  agci_triton        the fused Triton kernels (CUDA only)

Shapes come from the real models. Bandwidth counts the minimal traffic: forward reads x twice and
writes y (3 * T * D elements); backward reads x and dy and writes dx (3 again); "full" is both.
Speeds are reported as ratios to eager_formula measured in the same run; absolute times are only
meaningful on a GPU and are written with the device and versions.

    python benchmarks/bench_op.py                    # GPU: all shapes, bf16 and fp32
    python benchmarks/bench_op.py --quick            # CPU: small shapes, non-Triton providers
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import agci  # noqa: E402
from agci.kernels import reference  # noqa: E402

SHAPES = {
    "qwen2.5-vl-7b 1k": ([1024], 3584),
    "qwen2.5-vl-7b 4k": ([4096], 3584),
    "qwen2.5-vl-7b 16k": ([16384], 3584),
    "llava-1.5-7b x1": ([576], 4096),
    "llava-1.5-7b x8": ([576] * 8, 4096),
    "llava-1.5-7b x64": ([576] * 64, 4096),
    "gemma3n x1": ([256], 2048),
    "gemma3n x16": ([256] * 16, 2048),
}
QUICK_SHAPES = {
    "qwen-like 1k (D 3584)": ([1024], 3584),
    "llava-like 8x576 (D 1024)": ([576] * 8, 1024),
    "gemma3n x1": ([256], 2048),
    "tiny 3 images (D 64)": ([40, 7, 24], 64),  # the GPU script's dry run (kernels interpreted)
}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
# Datasheet memory bandwidth (bytes/s) by device name; the measured copy bandwidth is reported too.
DATASHEET_BW = {"H100 80GB HBM3": 3.35e12, "H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}
LAM = 0.5


def _datasheet_bw(name: str) -> float | None:
    for key, bw in DATASHEET_BW.items():
        if key in name:
            return bw
    return None


def _providers(lengths, with_triton: bool):
    def eager(x):
        return reference.broadcast_eager_formula(x, LAM)

    def agci_ref(x):
        return agci.global_context_broadcast(x, LAM, lengths, impl="reference")

    out = {"eager_formula": eager, "agci_reference": agci_ref, "agci_compiled": torch.compile(agci_ref, dynamic=False)}
    if with_triton:
        out["agci_triton"] = lambda x: agci.global_context_broadcast(x, LAM, lengths, impl="triton")
    return out


def _time_cpu(fn, reps: int, warmup: int = 2) -> tuple[float, float, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    q = statistics.quantiles(samples, n=5) if len(samples) > 1 else samples * 4
    return statistics.median(samples), q[0], q[3]


def _time(fn, cuda: bool, reps: int):
    if cuda:
        from triton.testing import do_bench

        med, lo, hi = do_bench(fn, quantiles=[0.5, 0.2, 0.8], warmup=25, rep=100)
        return med, lo, hi
    return _time_cpu(fn, reps)


def _measure_copy_bw(device) -> float | None:
    if device.type != "cuda":
        return None
    from triton.testing import do_bench

    src = torch.randint(0, 256, (1 << 30,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=100)
    return 2 * src.numel() / (ms * 1e-3)


def _make_mode(fn, x, dy, mode):
    if mode == "fwd":
        return lambda: fn(x)
    if mode == "full":

        def run():
            x.grad = None
            fn(x).backward(dy)

        return run
    y = fn(x)

    def bwd():
        x.grad = None
        y.backward(dy, retain_graph=True)

    return bwd


def _graph_ms(run) -> float | None:
    """GPU time of the forward replayed from a CUDA graph: no host launch cost (None if not capturable)."""
    from triton.testing import do_bench_cudagraph

    try:
        with torch.no_grad():
            return do_bench_cudagraph(run)
    except Exception:  # noqa: BLE001 - e.g. a host-to-device copy inside the provider
        return None


def _extra_memory_mb(run, x, mode, cuda) -> float:
    if not cuda:
        return float("nan")
    run()  # warm (compilation caches, retained graph)
    torch.cuda.synchronize()
    x.grad = None
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = run()
    torch.cuda.synchronize()
    outputs = x.numel() * x.element_size() * (2 if mode == "full" else 1)
    del result
    return (torch.cuda.max_memory_allocated() - base - outputs) / 2**20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes (the default on CPU)")
    ap.add_argument("--dtypes", default="bf16,fp32")
    ap.add_argument("--modes", default="fwd,bwd,full")
    ap.add_argument("--shapes", default=None, help="comma-separated shape names (default: all)")
    ap.add_argument("--reps", type=int, default=5, help="CPU repetitions per measurement")
    ap.add_argument("--providers", default=None, help="comma-separated providers (default: all available)")
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting new cases after this many seconds")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--tag", default=None, help="file name stem (default: op_<device>)")
    args = ap.parse_args(argv)

    torch._dynamo.config.recompile_limit = 64  # one compiled graph per shape, dtype and mode
    cuda = torch.cuda.is_available()
    with_triton = cuda or os.environ.get("TRITON_INTERPRET") == "1"
    device = torch.device("cuda" if cuda else "cpu")
    shapes = QUICK_SHAPES if (args.quick or not cuda) else SHAPES
    if args.shapes:  # in the order given; a misspelt name fails here, not after minutes of measuring
        unknown = [k for k in args.shapes.split(",") if k not in shapes]
        if unknown:
            raise SystemExit(f"unknown shapes {unknown}; known here: {list(shapes)}")
        shapes = {k: shapes[k] for k in args.shapes.split(",")}
    dev_name = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        versions["triton"] = None
    try:
        import transformers

        versions["transformers"] = transformers.__version__
    except ImportError:
        versions["transformers"] = None
    if cuda:
        from bench_e2e import _driver

        versions["driver"] = _driver()
    copy_bw = _measure_copy_bw(device)
    sheet_bw = _datasheet_bw(dev_name) if cuda else None
    print(
        f"device: {dev_name}; versions: {versions}; copy bandwidth: "
        f"{copy_bw / 1e9 if copy_bw else float('nan'):.0f} GB/s",
        flush=True,
    )

    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover

        def tqdm(it, **_):
            return it

    jobs = [(s, d, m) for s in shapes for d in args.dtypes.split(",") for m in args.modes.split(",")]
    rows = []
    providers_by_shape = {}  # one torch.compile per shape, reused across dtypes and modes
    start = time.monotonic()
    for shape_name, dtype_name, mode in tqdm(jobs, desc="bench", unit="case"):
        if args.budget_s and time.monotonic() - start > args.budget_s:
            print(f"time budget of {args.budget_s} s reached: writing the {len(rows)} rows measured so far")
            break
        lengths, D = shapes[shape_name]
        if shape_name not in providers_by_shape:
            providers_by_shape[shape_name] = _providers(lengths, with_triton)
        T = sum(lengths)
        dtype = DTYPES[dtype_name]
        gen = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(T, D, device=device, dtype=dtype, generator=gen).requires_grad_()
        dy = torch.randn(T, D, device=device, dtype=dtype, generator=gen)
        moved = 3 * T * D * x.element_size() * (2 if mode == "full" else 1)
        for provider, fn in providers_by_shape[shape_name].items():
            if args.providers and provider not in args.providers.split(","):
                continue
            try:
                run = _make_mode(fn, x, dy, mode)
                extra = _extra_memory_mb(run, x, mode, cuda)
                med, lo, hi = _time(run, cuda, args.reps)
                graph = _graph_ms(run) if cuda and mode == "fwd" else None
            except Exception as exc:  # noqa: BLE001 - a failing provider is reported, not fatal
                print(f"  {provider} {shape_name} {dtype_name} {mode}: failed: {exc!r}", flush=True)
                continue
            gbps = moved / (med * 1e-3) / 1e9
            rows.append(
                {
                    "kernel": "global_context_broadcast",
                    "provider": provider,
                    "mode": mode,
                    "shape": shape_name,
                    "images": len(lengths),
                    "tokens": T,
                    "D": D,
                    "dtype": dtype_name,
                    "median_ms": round(med, 5),
                    "cudagraph_ms": round(graph, 5) if graph else None,
                    "p20_ms": round(lo, 5),
                    "p80_ms": round(hi, 5),
                    "gb_per_s": round(gbps, 2),
                    "share_of_copy_bw": round(gbps * 1e9 / copy_bw, 4) if copy_bw else None,
                    "share_of_datasheet_bw": round(gbps * 1e9 / sheet_bw, 4) if sheet_bw else None,
                    "extra_memory_mb": round(extra, 2),
                    "x_mb": round(T * D * x.element_size() / 2**20, 2),
                }
            )
        del x, dy
        if cuda:
            torch.cuda.empty_cache()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.tag or ("op_" + ("".join(c if c.isalnum() else "_" for c in dev_name).strip("_").lower()))
    meta = {
        "device": dev_name,
        "versions": versions,
        "date": dt.date.today().isoformat(),
        "copy_bandwidth_gb_s": copy_bw / 1e9 if copy_bw else None,
        "datasheet_bandwidth_gb_s": sheet_bw / 1e9 if sheet_bw else None,
        "lambda": LAM,
    }
    for r in rows:
        r.update(device=dev_name, torch=versions["torch"], triton=versions["triton"])
    with open(out / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = _markdown(rows, meta)
    (out / f"{stem}.md").write_text(md)
    _plot(rows, meta, out / f"{stem}.png")
    print(md)
    return 0


def _markdown(rows, meta) -> str:
    eager = {(r["shape"], r["dtype"], r["mode"]): r["median_ms"] for r in rows if r["provider"] == "eager_formula"}
    compiled = {(r["shape"], r["dtype"], r["mode"]): r["median_ms"] for r in rows if r["provider"] == "agci_compiled"}
    lines = [
        f"# AGCI op benchmark: {meta['device']}",
        "",
        f"torch {meta['versions']['torch']}, triton {meta['versions']['triton']}, python "
        f"{meta['versions']['python']}, {meta['date']}; lambda {meta['lambda']}. Measured copy bandwidth "
        f"{meta['copy_bandwidth_gb_s'] or float('nan'):.0f} GB/s (read + write). Traffic counted: 3 x T x D "
        "elements per direction. Speed-up = eager_formula time / provider time, same run.",
        "",
        "| shape | dtype | mode | provider | median ms | graph ms | GB/s | % of copy BW | speed-up vs eager | "
        "vs compiled | extra MB (x MB) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        key = (r["shape"], r["dtype"], r["mode"])
        share = f"{100 * r['share_of_copy_bw']:.0f}" if r["share_of_copy_bw"] else "-"
        vs_c = f"{compiled[key] / r['median_ms']:.2f}" if key in compiled else "-"
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {r['mode']} | {r['provider']} | {r['median_ms']:.4f} | "
            f"{r['cudagraph_ms'] if r['cudagraph_ms'] is not None else '-'} | "
            f"{r['gb_per_s']:.0f} | {share} | {eager[key] / r['median_ms']:.2f} | {vs_c} | "
            f"{r['extra_memory_mb']} ({r['x_mb']}) |"
        )
    lines += ["", *_targets(rows)]
    return "\n".join(lines) + "\n"


def _targets(rows) -> list[str]:
    """The issue's targets for the Triton kernels, case by case (measured with do_bench; the CUDA-graph
    column shows the same forward without host launch cost)."""
    by = {(r["provider"], r["shape"], r["dtype"], r["mode"]): r for r in rows}
    out = ["## Targets (agci_triton)", "",
           "| shape | dtype | fwd % copy BW (graph) | fwd vs eager | fwd vs compiled | bwd vs eager | fwd extra MB |",
           "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for (prov, shape, dtype, mode), r in by.items():
        if prov != "agci_triton" or mode != "fwd":
            continue
        eager, comp = by.get(("eager_formula", shape, dtype, "fwd")), by.get(("agci_compiled", shape, dtype, "fwd"))
        bwd, bwd_eager = by.get((prov, shape, dtype, "bwd")), by.get(("eager_formula", shape, dtype, "bwd"))
        share = r["share_of_copy_bw"] or 0
        graph = f" ({100 * share * r['median_ms'] / r['cudagraph_ms']:.0f})" if r.get("cudagraph_ms") else ""

        def ratio(base, mine):
            return f"{base['median_ms'] / mine['median_ms']:.2f}" if base and mine else "-"

        out.append(
            f"| {shape} | {dtype} | {100 * share:.0f}{graph} | {ratio(eager, r)} | {ratio(comp, r)} | "
            f"{ratio(bwd_eager, bwd)} | {r['extra_memory_mb']} |"
        )
    out += ["", "Targets from the issue (H100): fwd >= 80% of bandwidth for >= 4M elements, >= 3x eager, "
            ">= 1.3x torch.compile; bwd >= 2x eager; no extra memory beyond the output."]  # fmt: skip
    return out


def _plot(rows, meta, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eager = {(r["shape"], r["dtype"], r["mode"]): r["median_ms"] for r in rows if r["provider"] == "eager_formula"}
    modes = sorted({r["mode"] for r in rows}, key=["fwd", "bwd", "full"].index)
    providers = [p for p in ("agci_reference", "agci_compiled", "agci_triton") if any(r["provider"] == p for r in rows)]
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 5), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        cases = sorted({(r["shape"], r["dtype"]) for r in rows if r["mode"] == mode})
        width = 0.8 / max(len(providers), 1)
        for i, p in enumerate(providers):
            vals = []
            for shape, dtype in cases:
                hit = [r for r in rows if (r["provider"], r["shape"], r["dtype"], r["mode"]) == (p, shape, dtype, mode)]
                vals.append(eager[(shape, dtype, mode)] / hit[0]["median_ms"] if hit else 0)
            ax.bar([j + i * width for j in range(len(cases))], vals, width, label=p)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
        ax.set_xticklabels([f"{s}\n{d}" for s, d in cases], rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{mode}: speed-up over the eager formula")
        ax.legend(fontsize=8)
    fig.suptitle(f"AGCI op, {meta['device']}, torch {meta['versions']['torch']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
