"""Training throughput with the data pipeline against model-only (synthetic tensors).

For each model, alternates rounds of ``train_one_epoch`` (the engine's own loop: SGD,
schedule, metrics) fed by the real data pipeline (``build_dataset`` + ``build_loader``:
decode, augment, normalise) and by one fixed batch already in memory (model only), and
reports the median images/s of each and the pipeline's cost in percent.

    python benchmarks/train_throughput.py --data ../shared/data/cifar10-jpg.tar.gz

Prints a Markdown table and writes JSON (default ``benchmarks/results/train_throughput.json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from convattn.data import build_dataset, build_loader
from convattn.engine.config import load_config
from convattn.engine.optim import build_optimizer, build_scheduler
from convattn.engine.train import train_one_epoch
from convattn.models import create_model


def _round(model, loader, opt, sched, cfg, steps: int) -> float:
    start = time.perf_counter()
    train_one_epoch(model, loader, opt, sched, torch.device("cpu"), cfg, epoch=0, steps=steps)
    return steps * cfg.data.batch_size / (time.perf_counter() - start)


def measure(name: str, args: argparse.Namespace) -> dict:
    cfg = load_config(
        "cifar10",
        {
            "model": name,
            "data.path": args.data,
            "data.batch_size": args.batch_size,
            "data.workers": args.workers,
            "run.channels_last": args.channels_last,
            "run.progress": False,
        },
    )
    ds, info = build_dataset(args.data, "train", augment="cifar", progress=False)
    loader = build_loader(ds, args.batch_size, train=True, workers=args.workers)
    torch.manual_seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = create_model(name, num_classes=info.num_classes).to(memory_format=fmt)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, 10**6, cfg)
    images, labels = next(iter(loader))
    fixed = itertools.repeat((images, labels))
    _round(model, fixed, opt, sched, cfg, args.warmup)  # warm-up: allocator, kernels
    _round(model, loader, opt, sched, cfg, args.warmup)
    pipe, synth = [], []
    for _ in range(args.rounds):
        pipe.append(_round(model, loader, opt, sched, cfg, args.steps))
        synth.append(_round(model, fixed, opt, sched, cfg, args.steps))
    p, s = statistics.median(pipe), statistics.median(synth)
    return {
        "model": name,
        "pipeline_images_per_s": p,
        "model_only_images_per_s": s,
        "pipeline_cost_pct": 100 * (1 - p / s),
        "epoch_s_pipeline": len(ds) / p,
        "rounds_pipeline": pipe,
        "rounds_model_only": synth,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", required=True, help="CIFAR-10 JPEG tree or archive")
    ap.add_argument("--models", nargs="+", default=["cifar_resnet20", "cifar_resnet20_cbam"])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--steps", type=int, default=40, help="steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = ap.parse_args()
    rows = [measure(m, args) for m in args.models]
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}")
    print(
        f"batch {args.batch_size}, workers {args.workers}, channels_last {args.channels_last}, "
        f"{args.rounds} rounds x {args.steps} steps, median\n"
    )
    print("| model | with pipeline (img/s) | model only (img/s) | pipeline cost | epoch (s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        pipe, only = r["pipeline_images_per_s"], r["model_only_images_per_s"]
        print(
            f"| {r['model']} | {pipe:.0f} | {only:.0f} | "
            f"{r['pipeline_cost_pct']:.1f}% | {r['epoch_s_pipeline']:.0f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
