"""``convattn cam``: Grad-CAM of one or more models on images, in the CBAM paper's layout."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cam",
        help="Grad-CAM grid of images under one or more trained models (PNG)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--checkpoint", required=True, help="its run folder or weights file")
    p.add_argument("--compare", help="a second model to show under the first")
    p.add_argument("--checkpoint2", help="the second model's run folder or weights file")
    p.add_argument("-o", "--output", default="cam.png", help="the PNG file to write")
    p.add_argument(
        "--target",
        choices=("predicted", "folder"),
        default="predicted",
        help="the class each map explains and whose P is shown: the model's prediction, or "
        "the image's true class named by its folder, as in the paper's Figure 4",
    )
    p.set_defaults(func=run)


def folder_targets(classes: list[str], files: list[Path]) -> list[int]:
    """The class index of each file's folder name in ``classes`` (one-line error if not)."""
    out = []
    for f in files:
        if f.parent.name not in classes:
            shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
            raise ValueError(f"{f}: its folder {f.parent.name!r} is not a class ({shown})")
        out.append(classes.index(f.parent.name))
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from ..report import Explained, cam_grid, explain_rows, load_images, to_png

    if (args.compare is None) != (args.checkpoint2 is None):
        raise ValueError("--compare and --checkpoint2 go together")
    models = [Explained.from_checkpoint(args.model, args.checkpoint)]
    if args.compare:
        models.append(Explained.from_checkpoint(args.compare, args.checkpoint2))
    files = load_images(args.images)
    shown = torch.stack([models[0].display(image) for _, image in files])
    for m in models[1:]:
        if (m.img_size, m.style) != (models[0].img_size, models[0].style):
            raise ValueError(f"{m.label} takes other inputs than {models[0].label}; compare alike")
    targets = None
    if args.target == "folder":
        if any(m.classes != models[0].classes for m in models):
            raise ValueError("--target folder: the models name different classes")
        targets = torch.tensor(folder_targets(models[0].classes, [f for f, _ in files]))
    rows = explain_rows(models, shown, targets=targets)
    to_png(cam_grid(shown, rows, [f.name for f, _ in files]), args.output)
    print(f"wrote {args.output} ({len(files)} images, {len(models)} models)")
    return 0
