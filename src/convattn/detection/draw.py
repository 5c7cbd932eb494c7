"""Predicted boxes drawn on images: class name and score over each box above a score."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torchvision.utils import draw_bounding_boxes

from ..data import folders
from .data import Target

__all__ = ["draw_detections", "image_files", "image_tensor", "predict_images"]

#: Box colours by label (cycled), legible on dark and light backgrounds.
COLOURS = ["#ffd700", "#00e5ff", "#ff4081", "#76ff03", "#ff9100", "#e040fb", "#ffffff"]


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files of ``paths``: files as given, folders searched recursively for images.

    Raises a one-line error for a missing path, a folder without images, or two inputs
    with one name (their drawings would overwrite each other)."""
    files = folders.image_files(paths)
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise ValueError(f"{seen[f.stem]} and {f} would both be drawn to {f.stem}.png")
        seen[f.stem] = f
    return files


def _check_header(path: str | Path) -> None:
    try:
        with Image.open(path):
            pass
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable image ({type(err).__name__})") from None


def image_tensor(path: str | Path) -> torch.Tensor:
    """An image file as float32 (3, H, W) in [0, 1]; a one-line error if it is no image."""
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable image ({type(err).__name__})") from None
    pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    return pixels.view(rgb.height, rgb.width, 3).permute(2, 0, 1).float() / 255


def draw_detections(
    image: torch.Tensor, output: Target, classes: Sequence[str], *, score_thresh: float = 0.5
) -> torch.Tensor:
    """``image`` (3, H, W), float in [0, 1] or ``uint8``, with the boxes of ``output``
    scoring at least ``score_thresh`` (all of them when it has no ``scores``: ground
    truth), labelled "<class> <score>"; returns ``uint8`` (3, H, W)."""
    scores = output.get("scores")
    keep = torch.ones(len(output["boxes"]), dtype=torch.bool)
    if scores is not None:
        keep = scores >= score_thresh
    boxes, labels = output["boxes"][keep], output["labels"][keep]
    pixels = image if image.dtype == torch.uint8 else (image.clamp(0, 1) * 255).round().byte()
    if len(boxes) == 0:
        return pixels
    names = [classes[int(k) - 1] if 0 < int(k) <= len(classes) else str(int(k)) for k in labels]
    if scores is not None:
        names = [f"{n} {float(s):.2f}" for n, s in zip(names, scores[keep], strict=True)]
    colours = [COLOURS[(int(k) - 1) % len(COLOURS)] for k in labels]
    width = max(1, round(min(image.shape[-2:]) / 96))
    return draw_bounding_boxes(pixels, boxes, names, colors=colours, width=width)


@torch.no_grad()
def predict_images(
    model: nn.Module, files: Sequence[str | Path], classes: Sequence[str], out_dir: str | Path,
    *, score_thresh: float = 0.5,
) -> list[tuple[Path, Target]]:  # fmt: skip
    """Detect on each file and write ``<out_dir>/<name>.png`` with the boxes drawn;
    returns each written file with the detector's output."""
    for f in files:  # headers checked before anything is written
        _check_header(f)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    written = []
    for f in map(Path, files):
        image = image_tensor(f)
        (output,) = model([image])
        drawn = draw_detections(image, output, classes, score_thresh=score_thresh)
        target = out_dir / f"{f.stem}.png"
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(target)  # (3, H, W) -> (H, W, 3)
        written.append((target, output))
    return written
