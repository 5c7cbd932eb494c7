"""Embedded synthetic data: the class is the shape of one object hidden among clutter.

Every image holds exactly one *class object*, one of ten shapes (:data:`SHAPES`), at a
random position and scale, in a random colour, over a random two-colour gradient with
*distractors*: thin line segments and thin ellipses drawn from the same colour
distribution as the object. No class shape is thin or elongated, so the distractors never
form a class object; colour, background, clutter and position are drawn independently of
the class, so only the object's shape decides the label. Every third distractor is drawn
over the object (partial occlusion), half the images are inverted (light background,
dark objects) and every pixel gets a little uniform noise. Sample ``i`` has label
``i % 10``, so every split is exactly balanced.

Difficulty (default settings, 5000 training images): networks start near chance and the
demo's CIFAR ResNet-20 needs several epochs to reach a few percent validation error (its
table is in BENCHMARKS.md), leaving room to compare architectures.

All ten shapes are left-right symmetric, so horizontal flips keep the label. The object's
bounding box (``xyxy`` pixels, every pixel the object touches) is kept in
:attr:`SyntheticShapes.boxes` so that localisation (e.g. Grad-CAM) can be measured; it
refers to the stored images, which the evaluation transform at the stored size leaves
unchanged.

Determinism: every random number of sample ``i`` is a hash of ``(seed, split, i, what)``,
so sample ``i`` is the same whatever the split size, chunking, worker count or order.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from .._validate import check_choice, check_positive
from ._draw import SHAPES, Canvas, blend, object_boxes, sample_keys, uniform
from .tensor import TensorImageDataset, Transform

__all__ = ["SHAPES", "SPLITS", "SyntheticShapes", "render_shapes"]

SPLITS = {"train": 0, "val": 1, "test": 1}
DEFAULT_SIZES = {"train": 5000, "val": 1000, "test": 1000}
#: Per-channel mean/std of the default settings (measured on 5000 training images).
MEAN = (0.5029, 0.5017, 0.5029)
STD = (0.3393, 0.3396, 0.339)


def render_shapes(
    indices: np.ndarray | range,
    *,
    split: str = "train",
    seed: int = 0,
    img_size: int = 32,
    clutter: int = 8,
    noise: float = 0.08,
    draw_object: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render samples ``indices``; returns ``uint8`` images (B, 3, H, W), labels (B,)
    and object boxes (B, 4) as ``xyxy`` pixel edges (float32).

    ``draw_object=False`` renders the same images without the class object (for tests
    and for measuring what the object contributes); labels and boxes are unchanged.
    """
    check_choice("split", split, tuple(SPLITS))
    idx = np.asarray(indices, dtype=np.int64)
    n, size = idx.shape[0], img_size
    canvas = Canvas(sample_keys(seed, SPLITS[split], idx), size)
    labels = idx % len(SHAPES)
    img, invert = canvas.background()
    above = range(0, clutter, 3)  # every third distractor is drawn over the object
    for k in range(clutter):
        if k not in above:
            canvas.distractor(img, k)
    alpha = canvas.object_alpha(labels)
    if draw_object:
        blend(img, alpha, canvas.bright(3))
    for k in above:
        canvas.distractor(img, k)
    img[invert] = 1.0 - img[invert]
    img += (2 * uniform(canvas.keys, 4, 3 * size * size) - 1).reshape(n, 3, size, size) * noise
    pixels = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return (
        torch.from_numpy(pixels),
        torch.from_numpy(labels),
        torch.from_numpy(object_boxes(alpha, size)),
    )


@functools.lru_cache(maxsize=4)
def _render_split(
    split: str, size: int, seed: int, img_size: int, clutter: int, noise: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    parts = [
        render_shapes(
            range(start, min(size, start + 1024)),
            split=split,
            seed=seed,
            img_size=img_size,
            clutter=clutter,
            noise=noise,
        )
        for start in range(0, size, 1024)  # chunks bound the float32 working memory
    ]
    return tuple(torch.cat(p) for p in zip(*parts, strict=True))  # type: ignore[return-value]


class SyntheticShapes(TensorImageDataset):
    """The embedded shapes dataset, generated in memory at construction (about a second).

    Args:
        split: "train", or "val" (alias "test"): a different stream of images.
        size: number of images (default 5000 for train, 1000 for val).
        img_size: side in pixels (32 default; 32-64 keep the tuned difficulty).
        seed: changes every image; sample ``i`` depends only on (seed, split, i).
        clutter: number of distractors drawn (each visible with probability 0.85).
        noise: amplitude of the uniform pixel noise, on the [0, 1] scale.
        transform: per-sample transform of a (3, H, W) ``uint8`` tensor.

    Attributes:
        boxes: (N, 4) float32 ``xyxy`` pixel box of each image's class object.
    """

    def __init__(
        self,
        split: str = "train",
        *,
        size: int | None = None,
        img_size: int = 32,
        seed: int = 0,
        clutter: int = 8,
        noise: float = 0.08,
        transform: Transform | None = None,
    ) -> None:
        check_choice("split", split, tuple(SPLITS))
        size = DEFAULT_SIZES[split] if size is None else check_positive("size", size)
        if not 16 <= check_positive("img_size", img_size) <= 128:
            raise ValueError(f"img_size must be in [16, 128] for synthetic data, got {img_size}")
        if clutter < 0 or not 0.0 <= noise <= 1.0:
            raise ValueError(f"need clutter >= 0 and noise in [0, 1], got {clutter}, {noise}")
        images, labels, boxes = _render_split(
            split, size, seed, img_size, int(clutter), float(noise)
        )
        super().__init__(images, labels, SHAPES, transform=transform)
        self.boxes = boxes
        self.split = split
        self.seed = seed
