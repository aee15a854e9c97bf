#!/usr/bin/env bash
# The GPU checks, as one prepared script for a machine with one CUDA GPU and PyTorch installed:
#   test       tests/test_cuda.py but the fused path's test: every norm on the GPU (CPU parity,
#              torch.nn parity, layouts, bf16 inputs, float64 gradcheck);
#   tritontest tests/test_triton_gpu.py: every Triton kernel forced on every input it
#              supports (outputs, gradients, running statistics, layouts, half inputs, double
#              backward, dispatch), with a limit of its own (each kernel variant compiles);
#   fusedtest  tests/test_cuda.py's fused-path test (compiles with Triton: 2-53 s per kind of
#              call on a cold cache), one process per norm in parallel, case by case (-v),
#              with a longer limit of its own;
#   bench      scripts/bench.py on the GPU: every norm, the issue's shapes plus two GPU-sized
#              ones (the issue's shapes are launch-bound on a large GPU), float32 and bfloat16,
#              both layouts, bandwidth as a fraction of a measured copy_, training step;
#   large      scripts/bench.py on the GPU-sized shapes alone (with the plan step's chosen plan
#              where it ran and chose one; LARGE_KNOBS overrides; LARGE_ARGS: more of bench.py's
#              arguments, e.g. --no-first-call), every norm on its default
#              dispatch (torch's kernels, the Triton kernels or the compiled zoo, as measured),
#              float32 and bfloat16, both layouts, timed as the GPU's work: the issue's GPU
#              report (each norm's copy fraction, normzoo against torch eager) in one short run;
#   reference  the wider zoo with impl="reference" (the reference math on torch's kernels),
#              to compare with the default paths, which were tuned on the CPU;
#   fused      scripts/gpu_fused_ab.py: the zoo's fused CUDA path (torch.compile of the
#              reference math) against its eager paths, compile times included;
#   triton     scripts/bench.py for BatchNorm, GroupNorm, LayerNorm, InstanceNorm, RMSNorm,
#              FRN, EvoNorm-S0/B0, Batch Renorm, SwitchableNorm, Ghost BN and FrozenBN with
#              every input they support on normzoo's Triton kernels (NORMZOO_TRITON=all), GPU-sized shapes,
#              timed as the GPU's work and with the host (--cuda-timing gpu, latency);
#   tritonab   scripts/gpu_triton_ab.py: the Triton kernels' plan knobs (programs per SM, tile)
#              A/B'd on the large shapes, the host time per call against torch's, and the
#              zoo's modules (FRN, EvoNorm-S0/B0, RMSNorm, Batch Renorm, SwitchableNorm, Ghost
#              BN, FrozenBN) on the kernels against their current CUDA paths, interleaved (decides their
#              dispatch);
#   warm       untimed first passes, all at once, of the plan and large steps below (the Triton
#              variants' and inductor's cold compiles, CPU-bound, overlap; their disk caches
#              keep them for the timed steps), then plan and large (beside tritontest's 10
#              processes it oversubscribed 16 cores: its large-shape passes hit their limit);
#   plan       scripts/gpu_triton_ab.py's first question alone (the two-phase and token kernels'
#              plan knobs: programs per SM, tile, per-lane partials; the token backward's
#              rows) on the large shapes, the cases every norm's slow rows come from;
#   zooab      scripts/gpu_triton_ab.py's third question (the zoo's modules on the kernels against
#              their CUDA paths without them, which sets _triton.ZOO_MEASURED) on both layouts
#              and dtypes: an untimed pass per module at once first (the default paths' first
#              calls compile), then the timed A/B; the twentieth session's runs were cut before
#              channels_last EvoNorm-S0, SwitchableNorm and bfloat16 channels_last; first, FRN
#              and EvoNorm-S0 over (65536, 1024) tokens (the token-group kernels' flags, not
#              timed yet) (not in the default steps: run it alone, STEPS=zooab);
#   core       scripts/gpu_fused_ab.py for BatchNorm, GroupNorm and LayerNorm: their reference
#              math compiled (a candidate, not dispatched) against torch's kernels, as
#              fractions of the copy ceiling (the issue aims at 0.7; torch's read 0.2-0.5);
#   train      the training system's GPU runs (trainer=gpu: the default job and MNIST-1D);
#   compile    tests/test_capture.py on the GPU (every norm compiled whole against eager,
#              exported, empty inputs), then scripts/bench_compile.py: each norm's model
#              compiled against eager and torch.nn's compiled (not in the default steps);
#   accuracy   scripts/accuracy.py on the GPU: every norm's error against float64 at large
#              input means, torch.nn's beside it, on torch's and (NORMZOO_TRITON=all, from
#              2M elements) on the Triton kernels (not in the default steps).
# Usage: OUT=some/dir bash scripts/gpu_check.sh   (logs and JSONs go to $OUT)
#        STEPS="test bench" ... runs only those steps.
# Each step has its own time limit, so one slow step cannot starve the others. A step that
# reaches it gets SIGINT first: pytest then still prints the failures it has seen so far.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
steps=" ${STEPS:-test tritontest fusedtest bench large triton tritonab reference fused core train} "
# timeout that interrupts (SIGINT) at the limit, and kills 15 s later if still running
limit() { timeout -s INT -k 15 "$@"; }
big="256,64,64,64 65536,1024"
plan_cases=${PLAN_CASES:-bn_contiguous bn_channels_last gn32_channels_last bn_tokens ln_tokens}
zoo="batchrenorm evonormb0 evonorms0 frn ghostbatchnorm rmsnorm switchablenorm"

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
    | tee "$out/gpu.txt"
"$py" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
    | tee -a "$out/gpu.txt"

if [[ $steps == *" test "* ]]; then
    limit "${TEST_LIMIT:-200}" "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py \
        -k "not fused" 2>&1 | tee "$out/test_cuda.log"
fi
if [[ $steps == *" tritontest "* ]]; then
    # 8 processes where pytest-xdist is installed, as on the H200 machines: the kernels' cold
    # compiles overlap (twentieth session: 99 tests in 144 s); TRITONTEST_ARGS overrides
    xdist=""
    "$py" -c "import xdist" 2>/dev/null && xdist="-n 8 --tb=short"
    limit "${TRITONTEST_LIMIT:-300}" "$py" -m pytest -q -p no:cacheprovider \
        ${TRITONTEST_ARGS-$xdist} tests/test_triton_gpu.py 2>&1 | tee "$out/test_triton_gpu.log"
fi
if [[ $steps == *" fusedtest "* ]]; then
    # one process per norm, all at once: the cold Triton compiles (CPU-bound) overlap
    pids=()
    for name in evonormb0 evonorms0 frn switchablenorm; do  # tests/test_cuda.py's FUSED
        limit "${FUSEDTEST_LIMIT:-300}" "$py" -m pytest -v --tb=short -p no:cacheprovider \
            tests/test_cuda.py -k "fused and $name" >"$out/test_cuda_fused_$name.log" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    tail -n 4 "$out"/test_cuda_fused_*.log
fi
if [[ $steps == *" warm "* ]]; then
    warm=$(mktemp -d)
    pids=()
    for c in $plan_cases; do
        limit "${WARM_LIMIT:-200}" "$py" scripts/gpu_triton_ab.py --cases $c --modules \
            --repeats 1 >"$warm/plan_$c.log" 2>&1 &
        pids+=($!)
    done
    for norms in "batchnorm groupnorm layernorm instancenorm syncbatchnorm frozenbatchnorm" \
        "frn evonorms0 rmsnorm identity" "batchrenorm switchablenorm evonormb0 ghostbatchnorm"; do
        limit "${WARM_LIMIT:-200}" "$py" scripts/bench.py --devices cuda --repeats 1 --warmup 1 \
            --norms $norms --shapes $big --dtypes float32 bfloat16 --no-train \
            --cuda-timing gpu >"$warm/large_${norms%% *}.log" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    tail -n 2 "$warm"/*.log
fi
if [[ $steps == *" plan "* ]]; then
    limit "${PLAN_LIMIT:-200}" "$py" scripts/gpu_triton_ab.py --cases $plan_cases --modules \
        --shapes $big --repeats "${PLAN_REPEATS:-9}" --json "$out/gpu_triton_plan.json" \
        2>&1 | tee "$out/gpu_triton_plan.log"
    # the two-phase plan that won (nothing: the shipped one), for the large step's run
    knobs=$("$py" scripts/gpu_triton_ab.py --pick "$out/gpu_triton_plan.json")
    echo "plan chosen: ${knobs:-the shipped one}" | tee -a "$out/gpu_triton_plan.log"
fi
if [[ $steps == *" zooab "* ]]; then
    mods=${ZOOAB_MODULES:-evonorms0 switchablenorm batchrenorm rmsnorm frn evonormb0 ghostbatchnorm}
    zoo_args=(--only-modules --module-shapes 256,64,64,64 --module-formats channels_last contiguous)
    # FRN and EvoNorm-S0 over (N, C) tokens on the token-group kernels (twenty-fifth session,
    # not timed yet): their rows, merged into docs/data/gpu_triton_ab_h200.json, set
    # ZOO_MEASURED's ("frn_token", True) and ("s0_token", True)
    token_mods=${ZOOAB_TOKEN_MODULES:-frn evonorms0}
    token_args=(--only-modules --module-shapes 65536,1024)
    warm=$(mktemp -d)
    pids=()
    for m in $mods; do
        limit "${WARM_LIMIT:-200}" "$py" scripts/gpu_triton_ab.py "${zoo_args[@]}" --modules "$m" \
            --repeats 1 >"$warm/$m.log" 2>&1 &
        pids+=($!)
    done
    for m in $token_mods; do
        limit "${WARM_LIMIT:-200}" "$py" scripts/gpu_triton_ab.py "${token_args[@]}" \
            --modules "$m" --repeats 1 >"$warm/tokens_$m.log" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    tail -n 2 "$warm"/*.log
    if [[ -n $token_mods ]]; then
        limit "${ZOOAB_TOKEN_LIMIT:-120}" "$py" scripts/gpu_triton_ab.py "${token_args[@]}" \
            --modules $token_mods --repeats "${ZOOAB_REPEATS:-9}" \
            --json "$out/gpu_triton_zoo_tokens_ab.json" 2>&1 | tee "$out/gpu_triton_zoo_tokens_ab.log"
    fi
    limit "${ZOOAB_LIMIT:-300}" "$py" scripts/gpu_triton_ab.py "${zoo_args[@]}" --modules $mods \
        --repeats "${ZOOAB_REPEATS:-9}" --json "$out/gpu_triton_zoo_ab.json" \
        2>&1 | tee "$out/gpu_triton_zoo_ab.log"
fi
if [[ $steps == *" bench "* ]]; then
    limit "${BENCH_LIMIT:-330}" "$py" scripts/bench.py --devices cuda --repeats 15 \
        --warmup 3 --shapes 32,64,32,32 8,256,14,14 128,64,8,8 4,32,64,64 4096,1024 \
        2048,4096 $big --title "GPU: every norm" --json "$out/bench_cuda.json" \
        2>&1 | tee "$out/bench_cuda.log"
fi
if [[ $steps == *" large "* ]]; then
    limit "${LARGE_LIMIT:-240}" "$py" scripts/bench.py --devices cuda --repeats 11 --warmup 3 \
        --shapes $big --dtypes float32 bfloat16 --no-train --cuda-timing gpu \
        --triton-knobs ${LARGE_KNOBS:-${knobs:-}} \
        --title "GPU: every norm on the large shapes, default dispatch, GPU time" \
        --json "$out/bench_cuda_large.json" ${LARGE_ARGS:-} 2>&1 | tee "$out/bench_cuda_large.log"
fi
if [[ $steps == *" triton "* ]]; then
    # TRITON_TIMINGS, TRITON_SHAPES, TRITON_REPEATS: fewer timings, shapes or repeats
    for timing in ${TRITON_TIMINGS:-gpu latency}; do
        NORMZOO_TRITON=all limit "${TRITON_LIMIT:-240}" "$py" scripts/bench.py --devices cuda \
            --repeats "${TRITON_REPEATS:-15}" --warmup 3 --norms bn gn ln in rms frn evonorms0 \
            batchrenorm switchablenorm evonormb0 ghostbatchnorm frozenbn \
            --shapes ${TRITON_SHAPES:-64,64,64,64 $big} \
            --dtypes float32 bfloat16 --no-train --cuda-timing $timing \
            --title "GPU: core norms on the Triton kernels ($timing)" \
            --json "$out/bench_triton_$timing.json" 2>&1 | tee "$out/bench_triton_$timing.log"
    done
fi
if [[ $steps == *" tritonab "* ]]; then
    # TRITONAB_ARGS: e.g. "--only-modules" (the zoo's dispatch A/B alone)
    limit "${TRITONAB_LIMIT:-200}" "$py" scripts/gpu_triton_ab.py ${TRITONAB_ARGS:-} \
        --json "$out/gpu_triton_ab.json" \
        2>&1 | tee "$out/gpu_triton_ab.log"
fi
if [[ $steps == *" reference "* ]]; then
    limit "${REFERENCE_LIMIT:-120}" "$py" scripts/bench.py --devices cuda --repeats 15 \
        --warmup 3 --impl reference --norms $zoo --shapes 32,64,32,32 $big \
        --dtypes float32 --no-train --title "GPU: the wider zoo, impl=reference" \
        --json "$out/bench_cuda_reference.json" 2>&1 | tee "$out/bench_cuda_reference.log"
fi
if [[ $steps == *" fused "* ]]; then
    limit "${FUSED_LIMIT:-300}" "$py" scripts/gpu_fused_ab.py --json "$out/gpu_fused_ab.json" \
        2>&1 | tee "$out/gpu_fused_ab.log"
fi
if [[ $steps == *" core "* ]]; then
    limit "${CORE_LIMIT:-240}" "$py" scripts/gpu_fused_ab.py --norms batchnorm groupnorm layernorm \
        --json "$out/gpu_core_compiled.json" 2>&1 | tee "$out/gpu_core_compiled.log"
fi
if [[ $steps == *" compile "* ]]; then
    limit "${COMPILE_TEST_LIMIT:-240}" "$py" -m pytest -q -p no:cacheprovider -k cuda \
        tests/test_capture.py 2>&1 | tee "$out/capture_cuda.log"
    limit "${COMPILE_LIMIT:-300}" "$py" scripts/bench_compile.py --device cuda \
        ${COMPILE_ARGS:-} --json "$out/bench_compile_cuda.json" 2>&1 | tee "$out/bench_compile_cuda.log"
fi
if [[ $steps == *" accuracy "* ]]; then
    limit "${ACCURACY_LIMIT:-150}" "$py" scripts/accuracy.py --device cuda \
        --json "$out/accuracy_cuda.json" --out "$out/accuracy_cuda.md" 2>&1 | tail -3
    NORMZOO_TRITON=all limit "${ACCURACY_LIMIT:-150}" "$py" scripts/accuracy.py --device cuda \
        --shapes 32,64,32,32 4096,512 --json "$out/accuracy_cuda_triton.json" \
        --out "$out/accuracy_cuda_triton.md" 2>&1 | tail -3
fi
if [[ $steps == *" train "* ]]; then
    limit "${TRAIN_LIMIT:-150}" "$py" -m pytest -q -p no:cacheprovider -s \
        tests/training/test_runs.py -k gpu 2>&1 | tee "$out/train_gpu.log"
fi
