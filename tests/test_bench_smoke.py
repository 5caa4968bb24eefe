"""The op benchmark runs on a CPU (non-Triton providers, one small case) and writes its four files."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_op_runs_on_cpu_and_writes_csv_md_json_png(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_op.py"), "--quick", "--shapes", "gemma3n x1",
           "--dtypes", "fp32", "--modes", "fwd,bwd", "--reps", "1", "--providers", "eager_formula,agci_reference",
           "--out", str(tmp_path), "--tag", "smoke"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "smoke.csv")))
    assert {(r["provider"], r["mode"]) for r in rows} == {
        (p, m) for p in ("eager_formula", "agci_reference") for m in ("fwd", "bwd")
    }
    assert all(float(r["median_ms"]) > 0 and r["device"] and r["torch"] for r in rows)
    assert "speed-up vs eager" in (tmp_path / "smoke.md").read_text()
    assert (tmp_path / "smoke.png").stat().st_size > 5_000 and (tmp_path / "smoke.json").exists()


def test_bench_probe_runs_and_both_ways_agree(tmp_path):
    import json

    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_probe.py"), "--samples", "8", "--batch-size", "4",
           "--occlusion-samples", "1", "--mask", "280", "--out", str(tmp_path), "--tag", "smoke"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "probe_smoke.json").read_text())
    assert result["lambdas"] == [0.0, 0.5]
    pos = result["position"]
    for lam in ("0", "0.5"):
        agreement = pos["per_lambda"][lam]
        assert agreement["identical_predictions"] == agreement["answered_yes_or_no_by_generation"] >= 6
    assert result["occlusion"][0]["masks"] == 9 and result["occlusion"][0]["max_abs_map_difference"] < 1e-3
    for r in (pos, result["occlusion"][0]):
        assert r["speedup"] > 0 and r["speedup_without_processor"] > 0 and r["prefetch_gain"] > 0
        assert "seconds" not in r  # ratios only on a CPU
        assert all(0 < share < 1 for share in r["processor_share"].values())
    assert (tmp_path / "probe_smoke.png").read_bytes()[:4] == b"\x89PNG"
    assert "speedup without the processor" in (tmp_path / "probe_smoke.md").read_text()


def test_bench_resampler_cache_runs_and_caching_wins(tmp_path):
    import json

    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_resampler_cache.py"), "--items", "16", "--epochs", "1",
           "--batch-size", "8", "--out", str(tmp_path), "--tag", "smoke"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert result["ratio_encode_over_cached"] > 1 and "cached_epoch_s" not in result  # no absolute CPU times
    assert (tmp_path / "smoke.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "smoke.md").exists()


def test_bench_op_refuses_an_unknown_shape_name_at_once(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_op.py"), "--shapes", "gemma3n x1,qwen 4k",
           "--out", str(tmp_path)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "unknown shapes ['qwen 4k']" in out.stderr


@pytest.mark.slow
def test_gpu_script_dry_run_runs_every_step_on_cpu(tmp_path):
    # benchmarks/run_gpu.sh --dry-run: the same steps as on the GPU (tests, op benchmark, the 7B-shaped
    # end-to-end benchmark, the checkpoint with the real processor and the probe benchmark on it) on tiny
    # shapes with the kernels interpreted, so the GPU run does not die on a typo. About 2.5 min on 2 cores.
    import json
    import os

    env = {**os.environ, "PYTHON": sys.executable, "RESULTS": str(tmp_path / "res"), "CKPT_DIR": str(tmp_path / "ckpt")}
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "run_gpu.sh"), "--dry-run"], capture_output=True,
                         text=True, timeout=900, env=env)  # fmt: skip
    summary = (tmp_path / "res" / "summary.md").read_text()
    assert out.returncode == 0 and "ALL STEPS PASSED" in summary, out.stdout[-3000:] + out.stderr[-2000:]
    for step in ("tests_kernels", "tests_patches", "bench_op", "e2e_7b", "ckpt_7b", "probe_7b"):
        assert f"{step}: rc 0" in summary
    env_json = json.loads((tmp_path / "res" / "env.json").read_text())
    assert {"device", "driver", "torch", "triton", "transformers"} <= set(env_json)
    e2e = json.loads((tmp_path / "res" / "e2e_7b.json").read_text())
    assert [s["visual_tokens"] for s in e2e["sizes"]] == [16, 64] and e2e["sizes"][0]["generate"]["new_tokens"] == 4
    for name in ("op.json", "op.png", "e2e_7b.png", "probe_qwen7b_random.json"):
        assert (tmp_path / "res" / name).stat().st_size > 0
