"""``convattn evaluate``: score saved weights on a dataset's validation split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="top-1/top-5 error of a run folder or checkpoint on a validation set",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("weights", help="run folder (uses best.safetensors) or a checkpoint file")
    p.add_argument("--model", help="model name (default: the run folder's config)")
    p.add_argument("--data", help="dataset (default: the run folder's config)")
    p.add_argument("--img-size", type=int, help="input side (default: the run's)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--split", default=None, help="split to score (default: the run's val split)")
    p.add_argument("--last", action="store_true", help="use checkpoint.pt, not best.safetensors")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.evaluate_checkpoint import evaluate_weights

    metrics = evaluate_weights(
        Path(args.weights),
        model=args.model,
        data=args.data,
        img_size=args.img_size,
        batch_size=args.batch_size,
        workers=args.workers,
        split=args.split,
        last=args.last,
    )
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(
            f"{metrics['model']} on {metrics['data']} ({metrics['samples']} images): "
            f"top-1 err {metrics['top1_err']:.2f}%, top-5 err {metrics['top5_err']:.2f}%, "
            f"loss {metrics['loss']:.4f}, {metrics['images_per_s']:.0f} img/s"
        )
    return 0
