"""Module-level CBAM (or SE) benchmark at ResNet-50's stage shapes, as in BENCHMARKS.md.

Forward+backward, float32, batch 32, shapes 256x56x56, 512x28x28, 1024x14x14 and
2048x7x7, contiguous and channels_last; candidates: our fused and eager implementations
(eager and compiled), timm's ``CbamModule`` (eager and compiled), and the reference passes
that give the floor (see :mod:`convattn.bench.module`). Prints a Markdown table and writes
JSON (default ``benchmarks/results/bench_cbam.json``). Needs timm (``.[bench]``).

    python benchmarks/bench_cbam.py
    python benchmarks/bench_cbam.py --shapes 128x16x32x32 128x32x16x16 128x64x8x8  # CIFAR
    python benchmarks/bench_cbam.py --device cuda --precisions float32 bf16-autocast

On CUDA, "fused" is the Triton CBAM, timings come from CUDA events, and the default
candidates add eager under ``torch.compile(mode="max-autotune")``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from convattn.bench import CANDIDATES, PRECISIONS, bench_module, format_module_table

STAGES = ["32x256x56x56", "32x512x28x28", "32x1024x14x14", "32x2048x7x7"]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shapes", nargs="+", default=STAGES, help="NxCxHxW")
    ap.add_argument("--module", choices=["cbam", "se"], default="cbam")
    ap.add_argument("--formats", nargs="+", default=["contiguous", "channels_last"])
    ap.add_argument("--candidates", nargs="+", help="default: all (CPU: no autotune)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["float32"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--eval", action="store_true", help="eval forward instead of training")
    ap.add_argument("--out", default="benchmarks/results/bench_cbam.json")
    args = ap.parse_args()
    names = args.candidates or [
        n for n in CANDIDATES if args.device == "cuda" or not n.endswith("-autotune")
    ]
    results = []
    for shape in args.shapes:
        for fmt in args.formats:
            for precision in args.precisions:
                r = bench_module(
                    tuple(int(v) for v in shape.split("x")),
                    module=args.module,
                    channels_last=fmt == "channels_last",
                    candidates=tuple(names),
                    rounds=args.rounds,
                    train=not args.eval,
                    device=args.device,
                    precision=precision,
                )
                results.append(r)
                print(f"done {shape} {fmt} {precision}", flush=True)
    mode = "eval forward" if args.eval else "training forward+backward"
    where = f"{torch.get_num_threads()} threads"
    if args.device == "cuda":
        where = torch.cuda.get_device_name()
    precisions = " and ".join(args.precisions)
    print(f"\n{args.module}, {mode}, {precisions}, torch {torch.__version__}, {where}, "
          f"median of {args.rounds} alternating rounds\n")  # fmt: skip
    print(format_module_table(results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=2) + "\n")


if __name__ == "__main__":
    main()
