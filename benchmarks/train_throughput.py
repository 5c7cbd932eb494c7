"""Training throughput with the data pipeline against model-only (synthetic tensors).

1. The pipeline alone: the cost of one ``dataset[i]`` (crop + flip on the in-memory uint8
   image, one thread) and the loader's images/s with each ``--workers`` setting.
2. For each model, rounds of ``train_one_epoch`` (the engine's own loop: SGD, schedule,
   metrics) fed by the real pipeline (``build_dataset`` + ``build_loader``: decode once,
   augment, normalise) alternate with rounds fed one fixed batch already in memory (model
   only); the median images/s of each and the pipeline's cost in percent are reported.

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
from convattn.engine.loop import StepOptions, train_one_epoch
from convattn.engine.optim import build_optimizer, build_scheduler
from convattn.engine.recipes import load_config
from convattn.engine.setup import TrainParts
from convattn.models import create_model


def _round(parts: TrainParts, loader, cfg, steps: int) -> float:
    start = time.perf_counter()
    train_one_epoch(parts, loader, StepOptions.from_config(cfg), epoch=0, steps=steps)
    return steps * cfg.data.batch_size / (time.perf_counter() - start)


def pipeline_alone(args: argparse.Namespace) -> dict:
    ds, info = build_dataset(args.data, "train", augment="cifar", progress=False)
    torch.set_num_threads(1)
    idx = torch.randint(0, len(ds), (2000,)).tolist()
    start = time.perf_counter()
    for i in idx:
        ds[i]
    sample_us = (time.perf_counter() - start) / len(idx) * 1e6
    torch.set_num_threads(args.threads)
    rates = {}
    for w in args.workers:
        loader = build_loader(ds, args.batch_size, train=True, workers=w)
        it = iter(loader)
        next(it)  # workers started
        start = time.perf_counter()
        n = sum(len(x) for x, _ in itertools.islice(it, args.steps))
        rates[w] = n / (time.perf_counter() - start)
    return {"images": len(ds), "in_memory": info.in_memory, "sample_us": sample_us, "loader": rates}


def measure(name: str, workers: int, args: argparse.Namespace) -> dict:
    cfg = load_config(
        "cifar10",
        {
            "model": name,
            "data.path": args.data,
            "data.batch_size": args.batch_size,
            "data.workers": workers,
            "run.channels_last": args.channels_last,
            "run.progress": False,
        },
    )
    ds, info = build_dataset(args.data, "train", augment="cifar", progress=False)
    loader = build_loader(ds, args.batch_size, train=True, workers=workers)
    torch.manual_seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = create_model(name, num_classes=info.num_classes).to(memory_format=fmt)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, 10**6, cfg)
    parts = TrainParts(model, model, opt, sched, None, None, torch.device("cpu"))
    images, labels = next(iter(loader))
    fixed = itertools.repeat((images, labels))
    _round(parts, fixed, cfg, args.warmup)  # warm-up: allocator, kernels
    _round(parts, loader, cfg, args.warmup)
    pipe, synth = [], []
    for _ in range(args.rounds):
        pipe.append(_round(parts, loader, cfg, args.steps))
        synth.append(_round(parts, fixed, cfg, args.steps))
    p, s = statistics.median(pipe), statistics.median(synth)
    return {
        "model": name,
        "workers": workers,
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
    ap.add_argument("--workers", type=int, nargs="+", default=[0], help="loader processes")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--steps", type=int, default=40, help="steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    alone = pipeline_alone(args)
    rows = [measure(m, w, args) for m in args.models for w in args.workers]
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}")
    rates = ", ".join(f"{w} workers {r:.0f} img/s" for w, r in alone["loader"].items())
    print(f"{alone['images']} images, in memory: {alone['in_memory']}; dataset[i] "
          f"{alone['sample_us']:.0f} us (1 thread); loader alone: {rates}")  # fmt: skip
    print(
        f"batch {args.batch_size}, channels_last {args.channels_last}, "
        f"{args.rounds} rounds x {args.steps} steps, median\n"
    )
    print("| model | workers | with pipeline (img/s) | model only (img/s) | cost | epoch (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        pipe, only = r["pipeline_images_per_s"], r["model_only_images_per_s"]
        print(
            f"| {r['model']} | {r['workers']} | {pipe:.0f} | {only:.0f} | "
            f"{r['pipeline_cost_pct']:.1f}% | {r['epoch_s_pipeline']:.0f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"args": vars(args), "pipeline": alone, "rows": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
