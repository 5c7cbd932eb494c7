"""Embedded detection scenes: several shape objects of several classes among clutter.

The renderer of :mod:`convattn.data.synthetic` (the same shapes, colours, gradient
backgrounds, thin distractors, inversion and noise), with 1 to ``max_objects`` class
objects per image instead of one. The image is cut into a ``g x g`` grid of cells
(``g = ceil(sqrt(max_objects))``) and each object gets a cell of its own, in a random
order, at a random scale (its half size between ``SCALE_RANGE`` of half the cell) and
position inside the cell, so objects never overlap and each box is the object's own
extent: every pixel its shape touches, as ``xyxy`` pixel edges. Every third distractor
is drawn over the objects (partial occlusion), which leaves the boxes unchanged.

Determinism: every random number of image ``i`` is a hash of ``(seed, split, i, what)``
(:mod:`convattn.data.synthetic`), so image ``i`` is the same whatever the split size,
the batch it is rendered in, or the order.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from .._validate import check_choice, check_positive
from ._draw import SHAPES, Canvas, blend, coverage, object_boxes, sample_keys, shape_sdf, uniform
from .synthetic import SPLITS

__all__ = ["SCALE_RANGE", "Scenes", "render_scenes"]

#: Object half size as a fraction of half a grid cell.
SCALE_RANGE = (0.3, 0.9)


def _object_alpha(
    canvas: Canvas, labels: np.ndarray, scale: np.ndarray, cx: np.ndarray, cy: np.ndarray
) -> np.ndarray:
    """Coverage (B, S, S) of one object per image: shape ``labels``, half size
    ``scale``, centre ``(cx, cy)`` in pixels."""
    size = canvas.size
    alpha = np.zeros((labels.shape[0], size, size), dtype=np.float32)
    for shape in np.unique(labels):
        sel = labels == shape
        s = scale[sel][:, None, None]
        u = (canvas.xs - cx[sel][:, None, None]) / s
        v = (canvas.ys - cy[sel][:, None, None]) / s
        alpha[sel] = coverage(shape_sdf(int(shape), u, v) * s)
    return alpha


class Scenes(NamedTuple):
    """What :func:`render_scenes` returns: ``images`` (B, 3, S, S) ``uint8``, and per
    image its boxes (n, 4) float32 ``xyxy`` and labels (n,) int64 in ``[0, classes)``."""

    images: torch.Tensor
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]


def _layout(keys: np.ndarray, max_objects: int, size: int) -> tuple[np.ndarray, ...]:
    """Per image and object slot: present?, centre x, centre y, half size, all (B, M)."""
    g = math.ceil(math.sqrt(max_objects))
    cell = size / g
    r = uniform(keys, 300, 1 + g * g)
    count = 1 + np.minimum((r[:, 0] * max_objects).astype(np.int64), max_objects - 1)
    cells = np.argsort(r[:, 1:], axis=1)[:, :max_objects]  # distinct cells, random order
    p = uniform(keys, 301, 3 * max_objects).reshape(-1, max_objects, 3)
    lo, hi = SCALE_RANGE
    scale = (lo + (hi - lo) * p[..., 0]) * cell / 2
    margin = scale + 1.0
    cx = (cells % g) * cell + margin + p[..., 1] * np.maximum(cell - 2 * margin, 0)
    cy = (cells // g) * cell + margin + p[..., 2] * np.maximum(cell - 2 * margin, 0)
    present = np.arange(max_objects)[None, :] < count[:, None]
    return present, cx, cy, scale


def render_scenes(
    indices: np.ndarray | range,
    *,
    split: str = "train",
    seed: int = 0,
    img_size: int = 128,
    num_classes: int = 5,
    max_objects: int = 4,
    clutter: int = 12,
    noise: float = 0.05,
) -> Scenes:
    """Render detection images ``indices`` (see the module docstring).

    Args:
        num_classes: the first ``num_classes`` shapes of :data:`~convattn.data.SHAPES`.
        max_objects: at most this many objects per image (at least one).
        clutter: distractors per image; noise: uniform pixel noise on the [0, 1] scale.
    """
    check_choice("split", split, tuple(SPLITS))
    if not 1 <= check_positive("num_classes", num_classes) <= len(SHAPES):
        raise ValueError(f"num_classes must be in [1, {len(SHAPES)}], got {num_classes}")
    check_positive("max_objects", max_objects)
    idx = np.asarray(indices, dtype=np.int64)
    canvas = Canvas(sample_keys(seed, SPLITS[split], idx), img_size)
    present, cx, cy, scale = _layout(canvas.keys, max_objects, img_size)
    labels = (uniform(canvas.keys, 302, max_objects) * num_classes).astype(np.int64)
    labels = np.minimum(labels, num_classes - 1)
    img, invert = canvas.background()
    above = range(0, clutter, 3)
    for k in range(clutter):
        if k not in above:
            canvas.distractor(img, k)
    boxes = np.zeros((idx.shape[0], max_objects, 4), dtype=np.float32)
    for k in range(max_objects):
        alpha = _object_alpha(canvas, labels[:, k], scale[:, k], cx[:, k], cy[:, k])
        alpha *= present[:, k, None, None]
        blend(img, alpha, canvas.bright(310 + k))
        boxes[:, k] = object_boxes(alpha, img_size)
    for k in above:
        canvas.distractor(img, k)
    img[invert] = 1.0 - img[invert]
    n, s = idx.shape[0], img_size
    img += (2 * uniform(canvas.keys, 4, 3 * s * s) - 1).reshape(n, 3, s, s) * noise
    pixels = torch.from_numpy(np.clip(np.rint(img * 255), 0, 255).astype(np.uint8))
    return Scenes(
        pixels,
        [torch.from_numpy(boxes[i, present[i]]) for i in range(n)],
        [torch.from_numpy(labels[i, present[i]]) for i in range(n)],
    )
