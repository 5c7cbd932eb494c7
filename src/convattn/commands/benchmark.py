"""``convattn benchmark``: time CBAM/SE implementations on your own shapes."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "benchmark",
        help="module-level timings of CBAM/SE implementations (fused, eager, timm)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--shape",
        type=int,
        nargs=4,
        action="append",
        metavar=("N", "C", "H", "W"),
        help="input shape; repeat for several (default: 8 256 56 56)",
    )
    p.add_argument("--module", choices=["cbam", "se"], default="cbam")
    p.add_argument("--channels-last", action="store_true", help="channels_last input")
    p.add_argument("--eval", action="store_true", help="time eval forward, not training")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (median kept)")
    p.add_argument(
        "--candidates",
        nargs="+",
        default=None,
        help="default: pass read fused eager, plus timm-eager if timm is installed",
    )
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import bench_module, format_module_table

    candidates = args.candidates or ["pass", "read", "fused", "eager"]
    if args.candidates is None and importlib.util.find_spec("timm") is not None:
        candidates.append("timm-eager")
    results = [
        bench_module(
            tuple(shape),
            module=args.module,
            channels_last=args.channels_last,
            candidates=tuple(candidates),
            rounds=args.rounds,
            train=not args.eval,
        )
        for shape in (args.shape or [[8, 256, 56, 56]])
    ]
    mode = "eval forward" if args.eval else "training forward+backward"
    print(f"{args.module}, {mode}, float32, {results[0].threads} threads, median of {args.rounds}")
    print(format_module_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dataclasses.asdict(r) for r in results], f, indent=2)
    return 0
