"""Faster R-CNN (FPN) on a plain and a CBAM backbone: accuracy on the generated detection
set after one short schedule, and the cost of CBAM in training and inference.

(a) Each backbone is trained with ``fit_detection`` (the engine of ``convattn detect
    train``) on the embedded detection scenes, from scratch, the same recipe and seeds
    for both; the table gives COCO mAP@[.5:.95] and mAP@.5 (pycocotools) and VOC 2007
    mAP (11-point, IoU 0.5) on the evaluation split at the end of the schedule, mean and
    sample std over seeds. Run folders go to ``--out``/runs, named by backbone, seed and
    a hash of the recipe; a finished run is read back, an interrupted one resumed, so the
    script can be rerun.
(b) The same detectors, freshly built: training images/s (the engine's detection epoch
    on one fixed batch in memory: forward, the detector's losses, backward, SGD) and
    inference latency (one image, evaluation mode, post-processing included), the
    candidates alternating round by round, medians; CBAM's ratio to the plain backbone.

The default backbones are ResNet-18 and ResNet-18 with CBAM in every block at a quarter
of the widths (stages of 16, 32, 64, 128 channels, ``--widths``): ImageNet strides 4 to
32 for the pyramid, about 0.7M parameters in the backbone and 1.8M in the detector, so
a seed takes minutes on two CPU cores.

    python benchmarks/bench_detection.py                         # 6 epochs, seeds 0 and 1
    python benchmarks/bench_detection.py --epochs 1 --images 8   # a smoke run

Prints Markdown tables and writes JSON (default ``benchmarks/results/detection/``).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from convattn.detection.config import DetectionConfig
from convattn.detection.data import build_detection_loader, synthetic_detection
from convattn.detection.engine import fit_detection
from convattn.detection.loop import train_detection_epoch
from convattn.detection.setup import build_detector
from convattn.engine.optim import build_optimizer, build_scheduler
from convattn.engine.recipes import load_config
from convattn.engine.resume import resume_config
from convattn.engine.setup import TrainParts

ACCURACY = [("mAP@[.5:.95]", "map"), ("mAP@.5", "map_50"), ("VOC07 mAP", "voc07_map")]


def recipe(model: str, seed: int, args: argparse.Namespace) -> DetectionConfig:
    data = f"synthetic:train={args.images},val={args.val_images},img_size={args.img_size}"
    over = {
        "model": model,
        "model_kwargs": {"widths": args.widths, "stem_width": args.widths[0]},
        "detector.min_size": args.img_size,
        "detector.max_size": args.img_size,
        "detector.fpn_channels": args.fpn_channels,
        "detector.representation_size": args.representation_size,
        "data.path": data,
        "data.batch_size": args.batch_size,
        "optim.lr": args.lr,
        "schedule.epochs": args.epochs,
        "schedule.milestones": [max(1, round(args.epochs * 2 / 3))],
        "schedule.warmup_epochs": min(0.25, args.epochs / 4),
        "run.seed": seed,
    }
    key = hashlib.sha1(json.dumps(over, sort_keys=True).encode()).hexdigest()[:8]
    over["run.name"] = f"{model}-s{seed}-{key}"
    over["run.output"] = str(Path(args.out) / "runs")
    over.update({"run.threads": args.threads, "run.progress": False})
    return load_config(None, over, cls=DetectionConfig)


def trained(cfg: DetectionConfig) -> dict[str, Any]:
    """The run's summary row: trained now, resumed, or read back when finished."""
    folder = Path(cfg.run.output) / str(cfg.run.name)
    if (folder / "checkpoint.pt").is_file():
        return fit_detection(resume_config(folder, cls=DetectionConfig), resume=folder)
    return fit_detection(cfg)


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def accuracy_table(rows: dict[str, list[dict[str, Any]]]) -> str:
    head = "| backbone | params (M) | " + " | ".join(h for h, _ in ACCURACY) + " | seeds |"
    lines = [head, "| --- |" + " ---: |" * (len(ACCURACY) + 2)]
    for model, runs in rows.items():
        cells = [_mean_std([r[k] for r in runs]) for _, k in ACCURACY]
        lines.append(f"| {model} | {runs[0]['params_m']:.2f} | {' | '.join(cells)} | "
                     f"{len(runs)} |")  # fmt: skip
    return "\n".join(lines)


def _parts(cfg: DetectionConfig, classes: int, steps: int) -> TrainParts:
    torch.manual_seed(cfg.run.seed)
    model = build_detector(cfg, classes + 1)
    opt = build_optimizer(model, cfg)  # type: ignore[arg-type]
    sched = build_scheduler(opt, steps, cfg)  # type: ignore[arg-type]
    return TrainParts(model, model, opt, sched, None, None, torch.device("cpu"))


def _latency_ms(model: torch.nn.Module, image: torch.Tensor, repeats: int) -> float:
    model.eval()
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            model([image])
            times.append(1e3 * (time.perf_counter() - start))
    model.train()
    return statistics.median(times)


def cost(models: list[str], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median training images/s and inference ms per image of each backbone's detector."""
    ds = synthetic_detection("train", size=args.speed_batch, img_size=args.img_size)
    batch = next(iter(build_detection_loader(ds, args.speed_batch, train=True)))
    parts = {m: _parts(recipe(m, 0, args), len(ds.classes), 10**6) for m in models}
    train: dict[str, list[float]] = {m: [] for m in models}
    latency: dict[str, list[float]] = {m: [] for m in models}
    for rnd in range(args.rounds + 1):  # round 0 warms up
        for m, p in parts.items():
            steps = args.warmup if rnd == 0 else args.speed_steps
            result = train_detection_epoch(p, itertools.repeat(batch), steps=steps)
            ms = _latency_ms(p.model, batch[0][0], 1 if rnd == 0 else args.latency_repeats)
            if rnd:
                train[m].append(result.images_per_s)
                latency[m].append(ms)
    return {
        m: {
            "train_images_per_s": statistics.median(train[m]),
            "latency_ms": statistics.median(latency[m]),
            "rounds_train": train[m],
            "rounds_latency": latency[m],
        }
        for m in models
    }


def cost_table(rows: dict[str, dict[str, float]], baseline: str) -> str:
    base = rows[baseline]
    lines = ["| backbone | train (img/s) | ratio | inference (ms/img) | ratio |",
             "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for m, r in rows.items():
        tr = r["train_images_per_s"] / base["train_images_per_s"]
        lat = r["latency_ms"] / base["latency_ms"]
        lines.append(f"| {m} | {r['train_images_per_s']:.1f} | {tr:.2f} | "
                     f"{r['latency_ms']:.1f} | {lat:.2f} |")  # fmt: skip
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", nargs=2, default=["resnet18", "resnet18_cbam"],
                    help="the plain backbone, then the one with attention")  # fmt: skip
    ap.add_argument("--widths", type=int, nargs=4, default=[16, 32, 64, 128])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--images", type=int, default=512, help="training scenes")
    ap.add_argument("--val-images", type=int, default=128, help="evaluation scenes")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--fpn-channels", type=int, default=64)
    ap.add_argument("--representation-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--speed-batch", type=int, default=4, help="images per training step")
    ap.add_argument("--speed-steps", type=int, default=5, help="training steps per round")
    ap.add_argument("--latency-repeats", type=int, default=5, help="inferences per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/detection")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {args.threads} threads, {cpu}; Faster R-CNN + FPN, "
          f"{args.img_size} px, backbone widths {args.widths}\n")  # fmt: skip
    result: dict[str, Any] = {"args": vars(args)}
    if not args.skip_accuracy:
        rows = {m: [trained(recipe(m, s, args)) for s in args.seeds] for m in args.models}
        result["accuracy"] = rows
        print(f"(a) after {args.epochs} epochs on {args.images} generated scenes, "
              f"{args.val_images} evaluated; seeds {args.seeds}, mean ± std (%)\n")  # fmt: skip
        print(accuracy_table(rows) + "\n")
    if not args.skip_cost:
        rows_cost = cost(args.models, args)
        result["cost"] = rows_cost
        print(f"(b) batch {args.speed_batch} for training, 1 image for inference; median "
              f"of {args.rounds} rounds\n")  # fmt: skip
        print(cost_table(rows_cost, args.models[0]))
    (out / "bench_detection.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
