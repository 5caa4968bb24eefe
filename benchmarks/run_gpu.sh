#!/usr/bin/env bash
# The one prepared GPU run (make test-gpu): about 7 minutes on an H100/H200, every step under a time limit and
# the whole under a deadline (GPU_DEADLINE_S, default 480 s). Steps, in order of value:
#   1. tests_kernels  the kernel tests compiled, at real sizes too (test_op_*)
#   2. tests_patches  every family of the registry patched, bf16, Triton path: formula at the language model's
#                     input, lambda 0 bitwise, batch invariance, generate; one patched model under torch.compile
#   3. bench_op       the kernels: backward vs torch.compile of the reference, forward vs copy bandwidth in
#                     CUDA graph replay (bf16, shapes of >= 4M elements and smaller ones)
#   4. e2e_7b         prefill overhead on the whole Qwen2.5-VL-7B-shaped model (random bf16 weights built on the
#                     GPU): ~1k and ~4k visual tokens, lambda 0.5 vs 0 interleaved, 20 reps, a 128-token generate
#   5. ckpt_7b, probe_7b  a 7B-shaped random checkpoint saved to local disk with the real processor classes, then
#                     bench_probe.py --model on it (agci's batched scoring/occlusion vs batch-1 generate+parse)
#   6. vllm_7b        bench_vllm.py on that checkpoint: vLLM throughput and time to first token, plugin off vs
#                     lambda 0 vs 0.5, interleaved (only where $PY imports vllm; otherwise skipped, said so)
#   7. profile        per-kernel variants for tuning (only if PROFILE=1 and time is left)
# Results (JSON, Markdown, PNG, logs, with device, driver, torch, Triton, transformers versions) go to
# benchmarks/results/gpu-<device>-<date>/ (RESULTS overrides); summary.md there is printed at the end. Under the
# lent-GPU tool ($OUT set) summary.md and one gpu-results.tgz of the folder are copied to $OUT (8 files at most
# come back). Exit status 1 when any step failed or ran out of time, with the failures listed.
#   bash benchmarks/run_gpu.sh              # on the GPU machine, with its own python3/torch/triton
#   bash benchmarks/run_gpu.sh --dry-run    # on CPU: every step on tiny shapes, kernels interpreted
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# Wheels carried to the GPU machine (e.g. the transformers release the CPU suite ran on; the lent H200 image
# had transformers 5.17.0) are installed beside this checkout first, if there are any in .whl/.
if [ $DRY = 0 ] && compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/agci-site .whl/*.whl ||
    { echo "FAILED: installing the carried wheels in .whl/"; exit 1; }
  export PYTHONPATH=$PYTHONPATH:/tmp/agci-site
fi
if [ $DRY = 1 ]; then
  export TRITON_INTERPRET=1 AGCI_GPU_TESTS_ON_CPU=1 CUDA_VISIBLE_DEVICES=""
  device=cpu-dry-run
else
  device=$($PY -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_').lower())") || {
    echo "FAILED: no CUDA device visible to $PY (use --dry-run on a CPU)"; exit 1; }
fi
res=${RESULTS:-benchmarks/results/gpu-$device-$(date +%Y%m%d)}
mkdir -p "$res"
deadline=$((SECONDS + ${GPU_DEADLINE_S:-480}))
failures=()
: >"$res/steps.txt"

has_vllm() {  # the vLLM step needs vLLM beside agci (make test-vllm's .venv-vllm, or PYTHON=... with it)
  if $PY -c "import vllm" >/dev/null 2>&1; then return 0; fi
  echo "== vllm_7b: skipped, $PY cannot import vllm (pip install vllm==0.32.0 beside agci)" | tee -a "$res/steps.txt"
  return 1
}

step() {  # step NAME LIMIT_S command...: runs under the smaller of LIMIT_S and the time left, logs to NAME.log
  local name=$1 limit=$2
  shift 2
  local left=$((deadline - SECONDS))
  if [ "$left" -lt 20 ]; then
    echo "== $name: skipped, deadline reached" | tee -a "$res/steps.txt"
    failures+=("$name (not run: deadline)")
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$res/$name.log" 2>&1
  local rc=$?
  tail -n 12 "$res/$name.log"
  echo "$name: rc $rc, $((SECONDS - t0)) s" | tee -a "$res/steps.txt"
  if [ $rc -ne 0 ]; then
    [ $rc = 124 ] && failures+=("$name (timed out after ${limit}s)") || failures+=("$name (exit $rc)")
  fi
}

# versions and device, also as JSON
{
  [ $DRY = 1 ] || nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $PY - <<'PY'
import json, platform, subprocess, torch, transformers
try:
    import triton; tv = triton.__version__
except ImportError:
    tv = None
cuda = torch.cuda.is_available()
drv = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                     text=True).stdout.strip() if cuda else None
env = {"device": torch.cuda.get_device_name() if cuda else "cpu (dry run)", "driver": drv, "python": platform.python_version(),
       "torch": torch.__version__, "cuda": torch.version.cuda, "triton": tv, "transformers": transformers.__version__}
print(json.dumps(env))
PY
} 2>&1 | tee "$res/env.txt"
tail -n 1 "$res/env.txt" >"$res/env.json"

tests=(-m pytest -q -p no:cacheprovider -rs --maxfail=10)
ckpt=${CKPT_DIR:-/tmp/agci-qwen2.5-vl-7b-random}
if [ $DRY = 1 ]; then
  step tests_kernels 120 $PY "${tests[@]}" tests/test_op_gpu.py tests/test_op_triton.py -k "launch_counts or layouts"
  step tests_patches 180 $PY "${tests[@]}" tests/test_patches_gpu.py -k "compile or qwen2_5_vl or gemma3n"
  step bench_op 120 $PY benchmarks/bench_op.py --quick --shapes "tiny 3 images (D 64)" --dtypes fp32 --modes fwd,bwd \
    --reps 1 --providers eager_formula,agci_triton --out "$res" --tag op
  step e2e_7b 120 $PY benchmarks/bench_e2e.py --tiny --tokens 16,64 --reps 2 --generate 4 --out "$res" --tag e2e_7b
  step ckpt_7b 60 $PY benchmarks/qwen7b.py --tiny --device cpu --out "$ckpt-tiny"
  step probe_7b 180 $PY benchmarks/bench_probe.py --model "$ckpt-tiny" --samples 4 --batch-size 4 \
    --occlusion-samples 0 --max-new-tokens 4 --out "$res" --tag qwen7b_random
  has_vllm && step vllm_7b 240 $PY benchmarks/bench_vllm.py --requests 4 --rounds 2 --max-tokens 4 --out "$res" \
    --tag tiny
  step profile 30 $PY -m py_compile benchmarks/profile_op.py
else
  step tests_kernels 150 $PY "${tests[@]}" tests/test_op_reference.py tests/test_op_triton.py \
    tests/test_op_dispatch_compile.py tests/test_op_gpu.py
  step tests_patches 150 $PY "${tests[@]}" tests/test_patches_gpu.py
  step bench_op 120 $PY benchmarks/bench_op.py --dtypes bf16 --modes fwd,bwd --budget-s 75 \
    --shapes "qwen2.5-vl-7b 4k,llava-1.5-7b x8,qwen2.5-vl-7b 16k,llava-1.5-7b x64,qwen2.5-vl-7b 1k,gemma3n x16" \
    --providers eager_formula,agci_compiled,agci_triton --out "$res" --tag op
  step e2e_7b 150 $PY benchmarks/bench_e2e.py --real-size --out "$res" --tag e2e_7b
  step ckpt_7b 90 $PY benchmarks/qwen7b.py --out "$ckpt"
  step probe_7b 150 $PY benchmarks/bench_probe.py --model "$ckpt" --dtype bfloat16 --samples 8 --batch-size 8 \
    --occlusion-samples 1 --mask 280 --max-new-tokens 32 --out "$res" --tag qwen7b_random
  has_vllm && step vllm_7b 240 $PY benchmarks/bench_vllm.py --model "$ckpt" --dtype bfloat16 \
    --prompt $'<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n<|im_start|>assistant\n' \
    --gpu-memory-utilization 0.28 --requests 64 --rounds 5 --max-tokens 64 --image-size 448 --out "$res" --tag 7b
  rm -rf "$ckpt"
  [ "${PROFILE:-0}" = 1 ] && step profile 60 $PY benchmarks/profile_op.py
fi

{
  echo "# GPU run: $device, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo '```'
  cat "$res/env.txt"
  cat "$res/steps.txt"
  echo '```'
  for f in op e2e_7b probe_qwen7b_random vllm_7b vllm_tiny; do
    [ -f "$res/$f.md" ] && { echo; sed 's/^# /## /' "$res/$f.md"; }
  done
  echo
  for t in tests_kernels tests_patches; do
    [ -f "$res/$t.log" ] && echo "$t: $(grep -E '[0-9]+ (passed|failed)' "$res/$t.log" | tail -n 1)"
  done
  echo
  if [ ${#failures[@]} -eq 0 ]; then echo "ALL STEPS PASSED"; else printf 'FAILED: %s\n' "${failures[@]}"; fi
} >"$res/summary.md"
echo
cat "$res/summary.md"
if [ -n "${OUT:-}" ]; then
  cp "$res/summary.md" "$OUT/summary.md"
  tar czf "$OUT/gpu-results.tgz" -C "$(dirname "$res")" "$(basename "$res")"
fi
[ ${#failures[@]} -eq 0 ]
