"""``convattn demo``: the main job on the embedded data.

Trains a CIFAR-style ResNet-20 baseline and the same network with CBAM and with SE on the
generated shapes dataset (the ``demo`` recipe), then prints the paper-style comparison
table, saves it with the three run folders and writes the HTML report of the runs
(``report.html``: curves, Grad-CAM, CBAM's spatial maps, localisation scores).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DEFAULT_MODELS = ("cifar_resnet20", "cifar_resnet20_se", "cifar_resnet20_cbam")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train a baseline, +SE and +CBAM on the embedded data and compare them",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="models to train")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the recipe's, 8)")
    p.add_argument("--output", default="runs", help="folder for the demo's run folders")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 epoch, 10 steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine import fit, load_config
    from ..engine.run import write_summary

    folder = Path(args.output) / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    rows = []
    for i, model in enumerate(args.models):
        overrides = {
            "model": model,
            "run.output": str(folder),
            "run.name": model,
            "run.seed": args.seed,
            "run.progress": not args.no_progress,
        }
        if args.epochs is not None:
            overrides["schedule.epochs"] = args.epochs
        if args.quick:
            overrides.update({"schedule.epochs": 1, "run.max_steps": 10, "data.limit_val": 256})
        print(f"[{i + 1}/{len(args.models)}] training {model} ...", flush=True)
        rows.append(fit(load_config("demo", overrides)))
    table = write_summary(folder, rows)
    print()
    print(table)
    print(f"\nrun folders and summary: {folder}")
    if not args.no_report:
        from ..report import build_report

        samples = 64 if args.quick else 256
        path = build_report([r["run_dir"] for r in rows], folder / "report.html", samples=samples)
        print(f"report: {path}")
    return 0
