"""``convattn detect``: train, evaluate and apply detectors with attention backbones.

``detect train`` takes every key of :class:`convattn.detection.config.DetectionConfig`
as an option (by section, with its help), over a ``--config`` recipe over the defaults,
and ``--resume RUN_DIR`` as ``convattn train`` does; ``detect evaluate RUN_DIR`` prints
the COCO and VOC figures of the run's best weights and writes them as JSON; ``detect
predict RUN_DIR IMAGES... --out DIR`` writes each image with its predicted boxes, class
names and scores.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from ..engine.config import config_fields
from .train import add_config_options, train_and_report


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``detect`` and its subcommands (``train``, ``evaluate``, ``predict``) to the
    command line's subparsers."""
    p = sub.add_parser(
        "detect",
        help="object detection: train, evaluate or predict with attention backbones",
        description="Faster R-CNN (FPN) or SSD from torchvision on convattn backbones.",
    )
    cmds = p.add_subparsers(dest="detect_command", metavar="SUBCOMMAND", required=True)
    _register_train(cmds)
    _register_evaluate(cmds)
    _register_predict(cmds)


def _register_train(cmds: argparse._SubParsersAction) -> None:
    from ..detection.config import UNSUPPORTED, DetectionConfig

    p = cmds.add_parser(
        "train",
        help="train a detector (a recipe and options over the defaults)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", help="YAML recipe (a file or a packaged recipe: demo, ssd_demo)")
    p.add_argument("--resume", help="run folder to continue with its own recipe")
    fields = [f for f in config_fields(DetectionConfig) if f.key not in UNSUPPORTED]
    add_config_options(p, fields)
    p.set_defaults(func=run_train)


def _register_evaluate(cmds: argparse._SubParsersAction) -> None:
    p = cmds.add_parser(
        "evaluate",
        help="COCO mAP and VOC mAP of a run's best weights",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", help="a detection run folder")
    p.add_argument("--data", help="dataset (default: the run's)")
    p.add_argument("--split", help="split to score (default: the run's evaluation split)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--last", action="store_true", help="use checkpoint.pt, not best.safetensors")
    p.add_argument("--device", help="'cpu', 'cuda' or 'cuda:N' (default: the run's, else cpu)")
    p.add_argument(
        "-o",
        "--output",
        help="JSON file (default: RUN_DIR/evaluation-[<data>-]<split>[-last].json, <data> "
        "when --data is not the run's)",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=run_evaluate)


def _register_predict(cmds: argparse._SubParsersAction) -> None:
    p = cmds.add_parser(
        "predict",
        help="draw a run's predicted boxes with scores on images",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", help="a detection run folder")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("-o", "--out", default="predictions", help="folder for the drawn PNGs")
    p.add_argument("--score-thresh", type=float, default=0.5, help="boxes drawn from this score")
    p.add_argument("--last", action="store_true", help="use checkpoint.pt, not best.safetensors")
    p.set_defaults(func=run_predict)


def run_train(args: argparse.Namespace) -> int:
    """``detect train``: a recipe (or ``--resume``'s) trained to its run folder; prints
    the summary row. Returns 0, or 130 when stopped by a signal (checkpoint saved)."""
    from ..detection.config import DetectionConfig, detection_recipe
    from ..detection.engine import fit_detection
    from ..detection.summary import format_detection_table

    if args.config is not None:
        args.config = detection_recipe(args.config)
    return train_and_report(args, DetectionConfig, fit_detection, format_detection_table)


def run_evaluate(args: argparse.Namespace) -> int:
    """``detect evaluate``: a run's COCO and VOC figures, printed (or as JSON) and
    written to ``--output`` or the run folder; returns 0."""
    from ..detection.evaluate import evaluate_run, run_config

    m = evaluate_run(args.run_dir, data=args.data, split=args.split, batch_size=args.batch_size,
                     workers=args.workers, last=args.last, device=args.device)  # fmt: skip
    other = args.data is not None and args.data != run_config(args.run_dir)[0].data.path
    name = f"evaluation-{_data_name(args.data) + '-' if other else ''}{m['split']}"
    out = Path(args.output or Path(args.run_dir) / f"{name}{'-last' if args.last else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(m, indent=2) + "\n")
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    print(f"{m['detector']} {m['model']} on {m['data']} {m['split']} ({m['images']} images): "
          f"mAP@[.5:.95] {m['map']:.1f}, AP50 {m['map_50']:.1f}, AP75 {m['map_75']:.1f}, "
          f"VOC07 mAP {m['voc07_map']:.1f}, VOC mAP {m['voc_map']:.1f}")  # fmt: skip
    for name, ap in m["ap_per_class"].items():
        print(f"  {name:>16}  AP50 {'-' if ap is None else f'{ap:.1f}'}")
    print(f"written: {out}")
    return 0


def _data_name(data: str) -> str:
    """A file-name part for a ``--data`` value: a folder's name, or the whole spec
    (``synthetic:val=16``), with anything but letters, digits, ``.``, ``-`` made ``_``."""
    name = data if ":" in data else Path(data.rstrip("/\\")).name or data
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_")[:80] or "data"


def run_predict(args: argparse.Namespace) -> int:
    """``detect predict``: each image drawn with the run's boxes into ``--out``, and the
    count of boxes over the threshold printed per image; returns 0."""
    from ..detection.draw import image_files, predict_images
    from ..detection.evaluate import load_run_detector

    files = image_files(args.images)
    model, _, classes = load_run_detector(args.run_dir, last=args.last)
    written = predict_images(model, files, classes, args.out, score_thresh=args.score_thresh)
    for path, out in written:
        n = int((out["scores"] >= args.score_thresh).sum())
        print(f"{path}: {n} boxes at score >= {args.score_thresh}")
    return 0
