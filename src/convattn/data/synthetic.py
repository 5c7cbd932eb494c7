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
from .tensor import TensorImageDataset, Transform

__all__ = ["SHAPES", "SPLITS", "SyntheticShapes", "render_shapes"]

SHAPES = (
    "disk",
    "ring",
    "square",
    "frame",
    "triangle",
    "inverted-triangle",
    "plus",
    "cross",
    "diamond",
    "tee",
)
SPLITS = {"train": 0, "val": 1, "test": 1}
DEFAULT_SIZES = {"train": 5000, "val": 1000, "test": 1000}
#: Per-channel mean/std of the default settings (measured on 5000 training images).
MEAN = (0.5029, 0.5017, 0.5029)
STD = (0.3393, 0.3396, 0.339)

SCALE = (3.5, 8.0)  # half size of the class object in pixels at 32 px


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective hash of ``uint64`` values (wraps silently)."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _sample_keys(seed: int, split: int, index: np.ndarray) -> np.ndarray:
    base = _mix(_mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)) ^ np.uint64(split))
    return _mix(base ^ index.astype(np.uint64))  # (B,)


def _uniform(keys: np.ndarray, stream: int, n: int) -> np.ndarray:
    """``(B, n)`` float32 uniforms in [0, 1), a pure function of (key, stream, column)."""
    cols = _mix(np.arange(n, dtype=np.uint64) + np.uint64(stream << 32))  # (n,)
    bits = _mix(keys[:, None] ^ cols[None, :])  # (B, n)
    return ((bits >> np.uint64(40)).astype(np.float32)) * np.float32(2.0**-24)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB; inputs (B,), output (B, 3), all in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0], dtype=np.float32)[None, :] + h[:, None] * 6.0) % 6.0
    return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _shape_sdf(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) of shape ``shape`` in coordinates where the
    object spans at most [-1, 1]; ``v`` points down. Max-of-planes distances are
    approximate, which is enough for anti-aliased edges."""
    au, av = np.abs(u), np.abs(v)
    r = np.sqrt(u * u + v * v)
    if shape in (4, 5):  # triangles: apex at v = -0.95 (up) or +0.95 (down), base at 0.8
        vv = v if shape == 4 else -v
        side = (1.75 * au - (vv + 0.95)) / np.float32(np.hypot(1.75, 1.0))
        return np.maximum(vv - 0.8, side)
    if shape == 0:
        return r - 1.0
    if shape == 1:
        return np.abs(r - 0.7) - 0.3
    if shape == 2:
        return np.maximum(au, av) - 0.85
    if shape == 3:
        return np.abs(np.maximum(au, av) - 0.65) - 0.2
    if shape == 6:
        return np.minimum(np.maximum(au - 1.0, av - 0.32), np.maximum(au - 0.32, av - 1.0))
    if shape == 7:  # the plus turned by 45 degrees
        p, q = np.abs(u + v) * np.float32(0.7071), np.abs(u - v) * np.float32(0.7071)
        return np.minimum(np.maximum(p - 1.0, q - 0.3), np.maximum(p - 0.3, q - 1.0))
    if shape == 8:
        return (au + av - 1.0) * np.float32(0.7071)
    bar = np.maximum(au - 1.0, np.abs(v + 0.7) - 0.3)  # tee: top bar and stem
    return np.minimum(bar, np.maximum(au - 0.3, np.abs(v - 0.3) - 0.7))


def _coverage(dist_px: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance in pixels."""
    return np.clip(0.5 - dist_px, 0.0, 1.0)


def _blend(img: np.ndarray, alpha: np.ndarray, rgb: np.ndarray) -> None:
    """In place: ``img (B, 3, H, W) = img * (1 - alpha) + rgb * alpha``."""
    a = alpha[:, None]  # (B, H, W) -> (B, 1, H, W)
    img *= 1.0 - a
    img += a * rgb[:, :, None, None]


class _Canvas:
    """A batch being drawn: the samples' random streams and the pixel grid."""

    def __init__(self, keys: np.ndarray, size: int) -> None:
        self.keys, self.size, self.px = keys, size, size / 32.0  # lengths tuned at 32 px
        grid = (np.arange(size, dtype=np.float32) + 0.5)[None, :]  # pixel centres (1, S)
        self.ys, self.xs = grid[:, :, None], grid[:, None, :]  # (1, S, 1), (1, 1, S)

    def background(self) -> tuple[np.ndarray, np.ndarray]:
        """A linear gradient between two dark colours along a random direction, and
        whether each image is inverted at the end."""
        r, size = _uniform(self.keys, 1, 8), self.size
        c0 = _hsv_to_rgb(r[:, 0], r[:, 1], 0.05 + 0.3 * r[:, 2])
        c1 = _hsv_to_rgb(r[:, 3], r[:, 4], 0.05 + 0.3 * r[:, 5])
        ang = 2 * np.pi * r[:, 6]
        dx, dy = np.cos(ang)[:, None, None], np.sin(ang)[:, None, None]
        t = (dx * (self.xs - size / 2) + dy * (self.ys - size / 2)) / size + 0.5
        t = np.clip(t, 0.0, 1.0)[:, None]  # (B, S, S) -> (B, 1, S, S)
        img = c0[:, :, None, None] * (1 - t) + c1[:, :, None, None] * t  # (B, 3, S, S)
        return img, r[:, 7] < 0.5

    def bright(self, stream: int) -> np.ndarray:
        """Colours of objects and distractors (B, 3)."""
        c = _uniform(self.keys, stream, 3)
        return _hsv_to_rgb(c[:, 0], 0.3 + 0.7 * c[:, 1], 0.65 + 0.35 * c[:, 2])

    def distractor(self, img: np.ndarray, k: int) -> None:
        """Draw distractor ``k``: a thin segment or a thin ellipse."""
        d, size, px, xs, ys = _uniform(self.keys, 100 + k, 9), self.size, self.px, self.xs, self.ys
        cx, cy = d[:, 0] * size, d[:, 1] * size
        ang = np.pi * d[:, 2]
        ca, sa = np.cos(ang)[:, None, None], np.sin(ang)[:, None, None]
        du, dv = xs - cx[:, None, None], ys - cy[:, None, None]
        along, across = du * ca + dv * sa, -du * sa + dv * ca  # (B, S, S)
        half_len = (0.15 + 0.3 * d[:, 3])[:, None, None] * size
        width = ((0.5 + 0.6 * d[:, 4]) * px)[:, None, None]
        seg = np.hypot(np.maximum(np.abs(along) - half_len, 0.0), across) - width / 2
        a = ((2.0 + 2.5 * d[:, 5]) * px)[:, None, None]  # ellipse semi-axes a > 3 b
        b = a * (0.2 + 0.1 * d[:, 6])[:, None, None]
        ell = (np.sqrt((along / a) ** 2 + (across / b) ** 2) - 1.0) * b
        dist = np.where((d[:, 7] < 0.5)[:, None, None], seg, ell)
        alpha = _coverage(dist) * (d[:, 8] < 0.85)[:, None, None]  # ~15% left out
        _blend(img, alpha.astype(np.float32), self.bright(200 + k))

    def object_alpha(self, labels: np.ndarray) -> np.ndarray:
        """Coverage (B, S, S) of each image's class object: half size SCALE (7-16 px wide
        at 32 px), fully inside the image."""
        o, size, n = _uniform(self.keys, 2, 3), self.size, labels.shape[0]
        scale = (SCALE[0] + (SCALE[1] - SCALE[0]) * o[:, 0]) * self.px
        margin = scale + 1.0
        cx = margin + o[:, 1] * (size - 2 * margin)
        cy = margin + o[:, 2] * (size - 2 * margin)
        alpha = np.zeros((n, size, size), dtype=np.float32)
        for shape in range(len(SHAPES)):
            sel = labels == shape
            if not sel.any():
                continue
            s = scale[sel][:, None, None]
            u = (self.xs - cx[sel][:, None, None]) / s
            v = (self.ys - cy[sel][:, None, None]) / s
            alpha[sel] = _coverage(_shape_sdf(shape, u, v) * s)
        return alpha


def _boxes(alpha: np.ndarray, size: int) -> np.ndarray:
    """``xyxy`` pixel edges (B, 4) of every pixel the object touches."""
    boxes = np.zeros((alpha.shape[0], 4), dtype=np.float32)
    cols, rows = alpha.max(axis=1) > 0, alpha.max(axis=2) > 0  # (B, S) each
    boxes[:, 0] = cols.argmax(axis=1)
    boxes[:, 2] = size - cols[:, ::-1].argmax(axis=1)
    boxes[:, 1] = rows.argmax(axis=1)
    boxes[:, 3] = size - rows[:, ::-1].argmax(axis=1)
    return boxes


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
    canvas = _Canvas(_sample_keys(seed, SPLITS[split], idx), size)
    labels = idx % len(SHAPES)
    img, invert = canvas.background()
    above = range(0, clutter, 3)  # every third distractor is drawn over the object
    for k in range(clutter):
        if k not in above:
            canvas.distractor(img, k)
    alpha = canvas.object_alpha(labels)
    if draw_object:
        _blend(img, alpha, canvas.bright(3))
    for k in above:
        canvas.distractor(img, k)
    img[invert] = 1.0 - img[invert]
    img += (2 * _uniform(canvas.keys, 4, 3 * size * size) - 1).reshape(n, 3, size, size) * noise
    pixels = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return torch.from_numpy(pixels), torch.from_numpy(labels), torch.from_numpy(_boxes(alpha, size))


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
