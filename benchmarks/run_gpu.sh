#!/usr/bin/env bash
# One pass on a GPU machine: the kernel tests (compiled, real sizes included), then the op benchmark.
# Uses the machine's own torch/triton with this checkout on PYTHONPATH. Results go to $OUT if set
# (the lent-GPU tool), else to benchmarks/results/.
#   bash benchmarks/run_gpu.sh [TEST_TIMEOUT_S] [BENCH_BUDGET_S]
set -uo pipefail
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee "$out/gpu_env.txt"
timeout "${1:-240}" python3 -m pytest -q -p no:cacheprovider -rs tests/test_op_reference.py tests/test_op_triton.py \
  tests/test_op_dispatch_compile.py tests/test_op_gpu.py tests/test_patches_gpu.py 2>&1 | tee "$out/gpu_tests.log" | tail -25
[ "${PROFILE:-1}" = 1 ] && python3 benchmarks/profile_op.py 2>&1 | tee "$out/profile.txt"
python3 benchmarks/bench_op.py --budget-s "${2:-300}" --out "$out" 2>&1 | grep -v "^|" | tail -20
python3 benchmarks/bench_e2e.py --layers 4 --tokens 4096 --dtype bf16 --out "$out" 2>&1 | tail -20
python3 benchmarks/bench_probe.py --out "$out" 2>&1 | tail -6
python3 benchmarks/bench_probe.py --lambdas 0 --tag "$(python3 -c 'import torch; print(torch.cuda.get_device_name().replace(" ", "_").lower())')_one_lambda" --out "$out" 2>&1 | tail -6
python3 benchmarks/bench_resampler_cache.py --items 1024 --out "$out" 2>&1 | tail -6
