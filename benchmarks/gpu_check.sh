#!/usr/bin/env bash
# On a machine with CUDA: the Triton CBAM tests and the engine's CUDA tests on the device,
# then the module and model benchmarks (float32 and bfloat16 autocast, contiguous and
# channels_last); the test log and the Markdown tables (with their JSON) go to the folder
# given as argument.
#
#   benchmarks/gpu_check.sh results/h100      # PYTHON=... to pick the interpreter
set -euo pipefail
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
py=${PYTHON:-python}
mkdir -p "$out"
"$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device")'

"$py" -m pytest tests/test_triton_cbam.py tests/test_triton_tail.py tests/test_engine_cuda.py \
    tests/test_fused_cbam.py -q -rs 2>&1 | tee "$out/tests.txt"
"$py" benchmarks/bench_cbam.py --device cuda --precisions float32 bf16-autocast \
    --out "$out/bench_cbam.json" | tee "$out/bench_cbam.md"
"$py" benchmarks/bench_cbam.py --device cuda --precisions float32 bf16-autocast --eval \
    --out "$out/bench_cbam_eval.json" | tee "$out/bench_cbam_eval.md"
for amp in "" "--amp"; do
    name=bench_models${amp:+_amp}
    "$py" benchmarks/bench_models.py --device cuda --batch 64 --modes eager compiled autotune \
        $amp --memory --out "$out/$name.json" | tee "$out/$name.md"
done
