"""``convattn cam``: Grad-CAM of one or more models on images, in the CBAM paper's layout."""

from __future__ import annotations

import argparse


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
    p.set_defaults(func=run)


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
    to_png(cam_grid(shown, explain_rows(models, shown), [f.name for f, _ in files]), args.output)
    print(f"wrote {args.output} ({len(files)} images, {len(models)} models)")
    return 0
