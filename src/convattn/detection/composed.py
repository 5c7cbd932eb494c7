"""A detection set composed from real images: small object photos pasted on real scenes.

Each image is one background of a scene set (Imagenette by default) at ``img_size``,
with 1 to ``max_objects`` photos of an object set (CIFAR-10 by default), each resized to
a square and pasted opaque into a cell of its own of a ``g x g`` grid (``g =
ceil(sqrt(max_objects))``), so objects never overlap; a box is its pasted square, the
label the photo's class. CIFAR photos fill their frame, so a box holds the object and
some of its own background: the task is to find photos of a class among real clutter,
not to segment objects.

Determinism: image ``i`` of a split is drawn from a generator seeded by ``(seed, split,
i)``: which background, how many objects, which photos, their sizes (``SIDE_RANGE`` of
the cell) and positions. Backgrounds and objects come from the same split of their sets
(training images from training images), so evaluation scenes are unseen on both sides.
Data path: ``composed:objects=PATH,backgrounds=PATH[,train=N,val=N,img_size=S,
objects_max=M,seed=X]`` (see :func:`composed_options`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data import build_dataset, find_data
from .data import DetectionDataset, ImageRecord

__all__ = ["SIDE_RANGE", "composed_detection", "composed_options"]

#: An object's side as a fraction of a grid cell's.
SIDE_RANGE = (0.45, 0.95)
_SPLIT_IDS = {"train": 0, "val": 1}
_OPTIONS = {"objects": str, "backgrounds": str, "train": int, "val": int, "img_size": int,
            "objects_max": int, "seed": int}  # fmt: skip


def composed_options(text: str, split: str) -> dict[str, Any]:
    """``"objects=cifar10-jpg.tar.gz,backgrounds=imagenette2-224.tar.gz,train=256"`` as
    :func:`composed_detection` arguments of ``split`` (``train`` sets the training
    split's size, ``val`` the other's)."""
    out: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = item.partition("=")
        if key not in _OPTIONS:
            raise ValueError(f"unknown composed option {key!r}; valid: {', '.join(_OPTIONS)}")
        if _OPTIONS[key] is int and not value.isdigit():
            raise ValueError(f"composed option {key}={value!r} is not a whole number")
        if key in ("train", "val"):
            if (key == "train") == (split == "train"):
                out["size"] = int(value)
            continue
        out["max_objects" if key == "objects_max" else key] = _OPTIONS[key](value)
    for key in ("objects", "backgrounds"):
        if key not in out:
            raise ValueError(f"composed data needs {key}=PATH (an image folder or archive)")
    return out


def _layout(g: torch.Generator, max_objects: int, size: int) -> list[tuple[int, int, int]]:
    """(x, y, side) of each object of one image, in distinct cells."""
    grid = math.ceil(math.sqrt(max_objects))
    cell = size / grid
    count = 1 + int(torch.randint(max_objects, (1,), generator=g))
    cells = torch.randperm(grid * grid, generator=g)[:count].tolist()
    out = []
    for c in cells:
        lo, hi = SIDE_RANGE
        side = max(4, int(cell * (lo + (hi - lo) * float(torch.rand((), generator=g)))))
        x0, y0 = int((c % grid) * cell), int((c // grid) * cell)
        room = max(int(cell) - side, 0)
        dx, dy = (int(v) for v in torch.randint(room + 1, (2,), generator=g))
        out.append((x0 + dx, y0 + dy, side))
    return out


def _paste(canvas: torch.Tensor, photo: torch.Tensor, x: int, y: int, side: int) -> None:
    """``photo`` (3, h, w) ``uint8`` resized to ``side`` x ``side`` into ``canvas`` at (x, y)."""
    if photo.shape[-1] != side or photo.shape[-2] != side:
        up = F.interpolate(photo[None].float(), size=(side, side), mode="bilinear",
                           antialias=True, align_corners=False)[0]  # fmt: skip
        photo = up.round().clamp(0, 255).to(torch.uint8)
    canvas[:, y : y + side, x : x + side] = photo


def composed_detection(
    objects: str,
    backgrounds: str,
    split: str = "train",
    *,
    size: int | None = None,
    img_size: int = 128,
    max_objects: int = 4,
    seed: int = 0,
    flip: bool | None = None,
) -> DetectionDataset:
    """``size`` images (default 512 train, 128 val) of ``img_size`` px composed from the
    image sets ``objects`` and ``backgrounds`` (class folders or archives, read by
    :func:`~convattn.data.build_dataset`); see the module docstring."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"unknown composed split {split!r}; valid: 'train', 'val'")
    size = size if size is not None else (512 if split == "train" else 128)
    obj, info = build_dataset(find_data(objects), split, augment="none", progress=False)
    bg, _ = build_dataset(find_data(backgrounds), split, img_size=img_size, augment="none",
                          progress=False)  # fmt: skip
    images = torch.empty(size, 3, img_size, img_size, dtype=torch.uint8)
    records = []
    for i in range(size):
        key = np.random.SeedSequence([seed, _SPLIT_IDS[split], i]).generate_state(1)[0]
        g = torch.Generator().manual_seed(int(key))
        images[i] = bg[int(torch.randint(len(bg), (1,), generator=g))][0]
        boxes, labels = [], []
        for x, y, side in _layout(g, max_objects, img_size):
            photo, label = obj[int(torch.randint(len(obj), (1,), generator=g))]
            _paste(images[i], photo, x, y, side)
            boxes.append([x, y, x + side, y + side])
            labels.append(int(label) + 1)
        records.append(ImageRecord(img_size, img_size, torch.tensor(boxes, dtype=torch.float32),
                                   torch.tensor(labels), index=i, name=f"{split}-{i}"))  # fmt: skip
    flip = split == "train" if flip is None else flip
    return DetectionDataset(records, list(info.classes), f"composed-{info.name}", flip, images)
