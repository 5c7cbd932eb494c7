#!/usr/bin/env bash
# The CBAM paper's Figure 4 on real images: Grad-CAM of the Imagenette sweep's resnet18 and
# resnet18_cbam runs (of seed SEED, quick preset) on a fixed sample of validation images, the
# first image (by file name) of each of the 10 classes, titled by its true class; under
# each, as in the paper, the Grad-CAM of the true class and its softmax probability P.
#
#   docs/results/figure4.sh [DATA_DIR] [SEED]   # DATA_DIR holds imagenette2-224.tar.gz
#                                               # (default ../shared/data); SEED 0
# Writes docs/results/figure4.png (or $OUT; $RUNS: another runs folder). Run from the project's root after
# `convattn sweep imagenette --data-dir DATA_DIR --dir docs/results/sweeps`.
set -euo pipefail
data=${1:-../shared/data}
seed=${2:-0}
py=${PYTHON:-.venv/bin/python}
out=${OUT:-docs/results/figure4.png}
runs=${RUNS:-docs/results/sweeps/runs}
pick() {  # the finished run folder of a variant and seed that still has its weights
    local dir
    for dir in "$runs/$1-s$seed-"*/; do
        [ -f "$dir/summary.json" ] || continue
        [ -f "$dir/best.safetensors" ] || [ -f "$dir/checkpoint.pt" ] && { echo "${dir%/}"; return; }
        echo "${dir%/}: finished, but its weights are not here (they are not committed): pass another SEED or rerun it" >&2
        exit 1
    done
    echo "no finished run $runs/$1-s$seed-*" >&2
    exit 1
}
plain=$(pick resnet18)
cbam=$(pick resnet18_cbam)
sample=$(mktemp -d)
trap 'rm -rf "$sample"' EXIT
"$py" - "$data/imagenette2-224.tar.gz" "$sample" <<'EOF'
import sys
import tarfile
from pathlib import PurePosixPath

NAMES = {"n01440764": "tench", "n02102040": "springer", "n02979186": "cassette-player",
         "n03000684": "chain-saw", "n03028079": "church", "n03394916": "French-horn",
         "n03417042": "garbage-truck", "n03425413": "gas-pump", "n03445777": "golf-ball",
         "n03888257": "parachute"}  # Imagenette's classes
archive, out = sys.argv[1:]
with tarfile.open(archive) as tar:
    first = {}
    for member in tar.getmembers():
        path = PurePosixPath(member.name)
        if member.isfile() and len(path.parts) >= 3 and path.parts[-3] == "val":
            wnid = path.parts[-2]
            if wnid not in first or path.name < PurePosixPath(first[wnid].name).name:
                first[wnid] = member
    for wnid, member in sorted(first.items()):
        member.name = f"{wnid}/{NAMES.get(wnid, 'image')}{PurePosixPath(member.name).suffix}"
        tar.extract(member, out, filter="data")
print(f"{len(first)} validation images, one per class")
EOF
"$py" -m convattn cam "$sample" --model resnet18 --checkpoint "$plain" \
    --compare resnet18_cbam --checkpoint2 "$cbam" --target folder -o "$out"
