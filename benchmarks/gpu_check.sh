#!/usr/bin/env bash
# On a machine with CUDA: the Triton CBAM tests and the engine's CUDA tests on the device,
# then the module and model benchmarks (bfloat16 autocast first, the targets' setting,
# then float32; channels_last and contiguous), each stage under a time limit so that a
# short lease still returns what finished. The test log and the Markdown tables (with
# their JSON) go to the folder given as argument; a failed stage is reported and the next
# one runs.
#
#   benchmarks/gpu_check.sh results/h200   # PYTHON=..., LIMIT=seconds per stage (300),
#                                          # AUTOTUNE=1 adds max-autotune to the models
set -uo pipefail
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
py=${PYTHON:-python}
limit=${LIMIT:-300}
mkdir -p "$out"
"$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device")' \
    || exit 1
failed=()

stage() {  # stage NAME COMMAND...: runs it under the limit, its output to OUT/NAME.md
    local name=$1
    shift
    echo "== $name"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.md"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "== $name failed (exit $rc)"; failed+=("$name"); }
}

stage tests "$py" -m pytest tests/test_triton_cbam.py tests/test_triton_tail.py \
    tests/test_engine_cuda.py tests/test_fused_cbam.py -q -rs
stage bench_cbam "$py" benchmarks/bench_cbam.py --device cuda \
    --precisions bf16-autocast float32 --out "$out/bench_cbam.json"
stage bench_cbam_eval "$py" benchmarks/bench_cbam.py --device cuda \
    --precisions bf16-autocast float32 --eval --out "$out/bench_cbam_eval.json"
modes="eager compiled${AUTOTUNE:+ autotune}"
for amp in --amp ""; do
    name=bench_models${amp:+_amp}
    # shellcheck disable=SC2086  # $modes and $amp are word lists
    stage "$name" "$py" benchmarks/bench_models.py --device cuda --batch 128 --modes $modes \
        $amp --memory --out "$out/$name.json"
done
[ ${#failed[@]} -eq 0 ] || { echo "failed: ${failed[*]}"; exit 1; }
