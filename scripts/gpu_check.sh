#!/usr/bin/env bash
# The GPU checks, as one prepared script for a machine with one CUDA GPU and PyTorch installed:
#   1. tests/test_cuda.py: every norm on the GPU (CPU parity, torch.nn parity, layouts, bf16,
#      float64 gradcheck);
#   2. scripts/bench.py on the GPU: every norm, every shape, float32 and bfloat16, both
#      layouts, with bandwidth as a fraction of a measured copy_ (docs/performance.md);
#   3. the training system's GPU runs (trainer=gpu: the default job and MNIST-1D).
# Usage: OUT=some/dir bash scripts/gpu_check.sh   (logs and the benchmark's JSON go to $OUT)
# Each step has its own time limit, so one slow step cannot starve the others.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
    | tee "$out/gpu.txt"
"$py" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
    | tee -a "$out/gpu.txt"

timeout "${TEST_LIMIT:-120}" "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    2>&1 | tee "$out/test_cuda.log"

timeout "${BENCH_LIMIT:-270}" "$py" scripts/bench.py --devices cuda --repeats 25 --warmup 5 \
    --title "GPU: every norm" --json "$out/bench_cuda.json" 2>&1 | tee "$out/bench_cuda.log"

timeout "${TRAIN_LIMIT:-150}" "$py" -m pytest -q -p no:cacheprovider -s \
    tests/training/test_runs.py -k gpu 2>&1 | tee "$out/train_gpu.log"
