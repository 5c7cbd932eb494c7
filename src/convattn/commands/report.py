"""``convattn report``: one self-contained HTML page comparing run folders."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="an HTML page comparing runs: summary, curves, Grad-CAM, CBAM maps, localisation; "
        "detection runs: mAP table, AP per class, predicted boxes",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "runs", nargs="+", help="run folders, classification or detection (the first's images)"
    )
    p.add_argument("-o", "--output", default="report.html", help="the HTML file to write")
    p.add_argument(
        "--images", type=int, default=6, help="images in the Grad-CAM grid and the boxes rows"
    )
    p.add_argument("--samples", type=int, default=256, help="images for the localisation scores")
    p.add_argument("--seed", type=int, default=0, help="which validation images")
    p.add_argument("--score-thresh", type=float, default=0.5, help="detections drawn from this")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..report import build_report

    path = build_report(args.runs, args.output, images=args.images, samples=args.samples,
                        seed=args.seed, score_thresh=args.score_thresh)  # fmt: skip
    print(f"report: {path}")
    return 0
