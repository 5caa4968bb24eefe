"""Where the time of the Triton path goes (GPU only): host cost per call, each kernel alone, and the
whole op replayed from a CUDA graph (GPU time without launch gaps). For tuning, not for reporting.

    python benchmarks/profile_op.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from triton.testing import do_bench, do_bench_cudagraph  # noqa: E402

import agci  # noqa: E402
from agci.kernels import _segment_layout, triton_agci  # noqa: E402

CASES = {"qwen 16k": ([16384], 3584), "llava x1": ([576], 4096), "llava x64": ([576] * 64, 4096)}


def main() -> None:
    src = torch.randint(0, 256, (1 << 30,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    bw = 2 * src.numel() / (do_bench(lambda: dst.copy_(src)) * 1e-3)
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s")
    for name, (lengths, d) in CASES.items():
        profile_case(name, lengths, d, bw)


def profile_case(name, lengths, d, bw):
    t = sum(lengths)
    x = torch.randn(t, d, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn_like(x)
    cu, seg = _segment_layout(tuple(lengths), x.device)
    mx = max(lengths)
    ideal_us = 3 * x.numel() * 2 / bw * 1e6

    def fwd():
        return agci.global_context_broadcast(x, 0.5, lengths, impl="triton")

    fwd()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(200):
        fwd()
    host_us = (time.perf_counter() - t0) / 200 * 1e6
    torch.cuda.synchronize()
    y, g = triton_agci.forward(x, 0.5, cu, seg, mx)
    block, warps = triton_agci._row_launch(d)
    k1 = do_bench(lambda: triton_agci._column_sums(x, x, x, x, x, cu, mx, weighted=False))
    k3 = do_bench(
        lambda: triton_agci._inject_rows[(t,)](
            x,
            y,
            g,
            seg,
            d,
            x.stride(0),
            y.stride(0),
            0.5,
            1e-8,
            BLOCK_D=block,
            ONE_BLOCK=block >= d,
            num_warps=warps,
        )
    )
    graph_fwd = do_bench_cudagraph(lambda: triton_agci.forward(x, 0.5, cu, seg, mx))
    graph_bwd = do_bench_cudagraph(lambda: triton_agci.backward(dy, x, g, 0.5, cu, seg, mx))
    eager_fwd = do_bench(fwd)
    print(
        f"{name}: ideal fwd {ideal_us:.1f} us | host/call {host_us:.1f} us | eager do_bench fwd "
        f"{eager_fwd * 1e3:.1f} us | graph fwd {graph_fwd * 1e3:.1f} us "
        f"({ideal_us / (graph_fwd * 1e3):.0%} of BW) | column_sums(fwd) {k1 * 1e3:.1f} us | "
        f"inject_rows {k3 * 1e3:.1f} us | graph bwd {graph_bwd * 1e3:.1f} us",
        flush=True,
    )


if __name__ == "__main__":
    main()
