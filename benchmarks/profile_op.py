"""Where the time of the Triton path goes (GPU only), for tuning; bench_op.py is what gets reported.

For each case: host cost per call of the public function, the whole forward and backward replayed
from a CUDA graph (GPU time without launch gaps), each kernel alone, and the block/warp variants
of the streaming kernels.

    python benchmarks/profile_op.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
from bench_op import _measure_copy_bw  # noqa: E402
from triton.testing import do_bench, do_bench_cudagraph  # noqa: E402

import agci  # noqa: E402
from agci.kernels import _segment_layout  # noqa: E402
from agci.kernels import triton_agci as K

CASES = {"qwen 16k": ([16384], 3584), "llava x1": ([576], 4096), "llava x64": ([576] * 64, 4096)}


def _us(ms: float) -> str:
    return f"{ms * 1e3:.1f}"


def profile_case(name, lengths, d, bw) -> None:
    t = sum(lengths)
    x = torch.randn(t, d, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn_like(x)
    cu, seg = _segment_layout(tuple(lengths), x.device)
    mx = max(lengths)
    elem_us = x.numel() * 2 / bw * 1e6  # one pass over x at the copy bandwidth

    def fwd():
        return agci.global_context_broadcast(x, 0.5, lengths, impl="triton")

    fwd()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(200):
        fwd()
    host_us = (time.perf_counter() - t0) / 200 * 1e6
    torch.cuda.synchronize()
    y, g = K.forward(x, 0.5, cu, seg, mx)
    graph_fwd = do_bench_cudagraph(lambda: K.forward(x, 0.5, cu, seg, mx))
    graph_bwd = do_bench_cudagraph(lambda: K.backward(dy, x, g, 0.5, cu, seg, mx))
    print(
        f"\n{name} bf16 [{t}x{d}], one pass = {elem_us:.1f} us | host/call {host_us:.1f} us | eager do_bench fwd "
        f"{_us(do_bench(fwd))} us | graph fwd {_us(graph_fwd)} us ({3 * elem_us / (graph_fwd * 1e3):.0%} of copy BW"
        f" at 3 passes) | graph bwd {_us(graph_bwd)} us ({5 * elem_us / (graph_bwd * 1e3):.0%} at 5 passes)",
        flush=True,
    )
    block, _ = K._row_launch(d, K.FWD_WIDE_ROW)
    for warps in (2, 4, 8):
        inj = do_bench(
            lambda w=warps: K._inject_rows[(t,)](
                x, y, g, seg, d, x.stride(0), y.stride(0), 0.5, 1e-8, BLOCK_D=block, ONE_BLOCK=block >= d, num_warps=w
            )
        )
        print(f"  warps {warps:2d}: inject_rows {_us(inj)} us ({2 * elem_us / (inj * 1e3):.0%})", flush=True)
    n_splits = max(triton.cdiv(mx, K.CHUNK), 1)
    part = torch.empty(len(lengths), n_splits, d, device="cuda")
    for br, bd, warps, step in [(32, 128, 4, 1), (32, 128, 4, 2), (16, 128, 4, 2), (32, 128, 8, 2), (16, 256, 4, 2)]:
        ms = do_bench(lambda br=br, bd=bd, w=warps, st=step: K._segment_colsum[
            (len(lengths), n_splits, triton.cdiv(d, bd))](
            x, part, cu, d, x.stride(0), n_splits, CHUNK=K.CHUNK, BLOCK_R=br, BLOCK_D=bd, STEP_R=br * st,
            num_warps=w))  # fmt: skip
        print(f"  colsum R{br}x{step} D{bd} w{warps}: {_us(ms)} us ({elem_us / (ms * 1e3):.0%})", flush=True)
    grad_g = torch.zeros(len(lengths), d, device="cuda")
    # The backward's fused coefficients + column sums: chunk rows, column block, warps (2 passes over x and dy,
    # the second from L2 if the chunk fits).
    for chunk, bd, warps in [(16, 256, 4), (16, 128, 4), (32, 128, 4), (32, 256, 8), (8, 512, 4), (64, 64, 4)]:
        splits = max(triton.cdiv(mx, chunk), 1)
        bpart = torch.empty(len(lengths), splits, d, device="cuda")
        bgam = torch.empty(len(lengths), splits, device="cuda")
        ms = do_bench(lambda c=chunk, bd=bd, w=warps, sp=splits, bp=bpart, bg=bgam: K._bwd_chunk_sums[
            (len(lengths), sp)](x, dy, g, cu, bp, bg, grad_g, d, x.stride(0), dy.stride(0), sp, 0.5, 1e-8,
                                FINISH=sp == 1, CHUNK=c, BLOCK_D=bd, num_warps=w))  # fmt: skip
        print(f"  bwd_chunk_sums C{chunk} D{bd} w{warps}: {_us(ms)} us ({2 * elem_us / (ms * 1e3):.0%} at 2 passes)",
              flush=True)  # fmt: skip
    dx = torch.empty_like(x)
    for warps in (4, 8, 16):
        ms = do_bench(lambda w=warps: K._bwd_rows[(t,)](
            x, dy, dx, g, grad_g, seg, d, x.stride(0), dy.stride(0), dx.stride(0), 0.5, 1e-8,
            BLOCK_D=block, ONE_BLOCK=block >= d, num_warps=w))  # fmt: skip
        print(f"  bwd_rows w{warps}: {_us(ms)} us ({3 * elem_us / (ms * 1e3):.0%})", flush=True)
    launch = do_bench(lambda: K._sum_partials[(1, 1)](part, g, d, 1, BLOCK_S=16, BLOCK_D=128, num_warps=4))
    t0 = time.perf_counter()
    for _ in range(200):
        K._sum_partials[(1, 1)](part, g, d, 1, BLOCK_S=16, BLOCK_D=128, num_warps=4)
    print(f"  one tiny Triton launch: host {(time.perf_counter() - t0) / 200 * 1e6:.1f} us, do_bench {_us(launch)} us")
    torch.cuda.synchronize()


def main() -> None:
    bw = _measure_copy_bw(torch.device("cuda"))
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bw / 1e9:.0f} GB/s (read + write)")
    for name, (lengths, d) in CASES.items():
        profile_case(name, lengths, d, bw)


if __name__ == "__main__":
    main()
