"""Drawing helpers shared by the synthetic sets (:mod:`convattn.data.synthetic`, one
object per image, and :mod:`convattn.data.scenes`, several): hashed random streams,
colours, the ten shapes' signed distances, anti-aliased coverage and blending, the
background and distractors of a batch, and the boxes of drawn objects. Internal: the
pixels of both sets depend on every line here, which their tests pin."""

from __future__ import annotations

import numpy as np

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

SCALE = (3.5, 8.0)  # half size of the class object in pixels at 32 px


def mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective hash of ``uint64`` values (wraps silently)."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_keys(seed: int, split: int, index: np.ndarray) -> np.ndarray:
    base = mix(mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)) ^ np.uint64(split))
    return mix(base ^ index.astype(np.uint64))  # (B,)


def uniform(keys: np.ndarray, stream: int, n: int) -> np.ndarray:
    """``(B, n)`` float32 uniforms in [0, 1), a pure function of (key, stream, column)."""
    cols = mix(np.arange(n, dtype=np.uint64) + np.uint64(stream << 32))  # (n,)
    bits = mix(keys[:, None] ^ cols[None, :])  # (B, n)
    return ((bits >> np.uint64(40)).astype(np.float32)) * np.float32(2.0**-24)


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB; inputs (B,), output (B, 3), all in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0], dtype=np.float32)[None, :] + h[:, None] * 6.0) % 6.0
    return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def shape_sdf(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
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


def coverage(dist_px: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance in pixels."""
    return np.clip(0.5 - dist_px, 0.0, 1.0)


def blend(img: np.ndarray, alpha: np.ndarray, rgb: np.ndarray) -> None:
    """In place: ``img (B, 3, H, W) = img * (1 - alpha) + rgb * alpha``."""
    a = alpha[:, None]  # (B, H, W) -> (B, 1, H, W)
    img *= 1.0 - a
    img += a * rgb[:, :, None, None]


class Canvas:
    """A batch being drawn: the samples' random streams and the pixel grid."""

    def __init__(self, keys: np.ndarray, size: int) -> None:
        self.keys, self.size, self.px = keys, size, size / 32.0  # lengths tuned at 32 px
        grid = (np.arange(size, dtype=np.float32) + 0.5)[None, :]  # pixel centres (1, S)
        self.ys, self.xs = grid[:, :, None], grid[:, None, :]  # (1, S, 1), (1, 1, S)

    def background(self) -> tuple[np.ndarray, np.ndarray]:
        """A linear gradient between two dark colours along a random direction, and
        whether each image is inverted at the end."""
        r, size = uniform(self.keys, 1, 8), self.size
        c0 = hsv_to_rgb(r[:, 0], r[:, 1], 0.05 + 0.3 * r[:, 2])
        c1 = hsv_to_rgb(r[:, 3], r[:, 4], 0.05 + 0.3 * r[:, 5])
        ang = 2 * np.pi * r[:, 6]
        dx, dy = np.cos(ang)[:, None, None], np.sin(ang)[:, None, None]
        t = (dx * (self.xs - size / 2) + dy * (self.ys - size / 2)) / size + 0.5
        t = np.clip(t, 0.0, 1.0)[:, None]  # (B, S, S) -> (B, 1, S, S)
        img = c0[:, :, None, None] * (1 - t) + c1[:, :, None, None] * t  # (B, 3, S, S)
        return img, r[:, 7] < 0.5

    def bright(self, stream: int) -> np.ndarray:
        """Colours of objects and distractors (B, 3)."""
        c = uniform(self.keys, stream, 3)
        return hsv_to_rgb(c[:, 0], 0.3 + 0.7 * c[:, 1], 0.65 + 0.35 * c[:, 2])

    def distractor(self, img: np.ndarray, k: int) -> None:
        """Draw distractor ``k``: a thin segment or a thin ellipse."""
        d, size, px, xs, ys = uniform(self.keys, 100 + k, 9), self.size, self.px, self.xs, self.ys
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
        alpha = coverage(dist) * (d[:, 8] < 0.85)[:, None, None]  # ~15% left out
        blend(img, alpha.astype(np.float32), self.bright(200 + k))

    def object_alpha(self, labels: np.ndarray) -> np.ndarray:
        """Coverage (B, S, S) of each image's class object: half size SCALE (7-16 px wide
        at 32 px), fully inside the image."""
        o, size, n = uniform(self.keys, 2, 3), self.size, labels.shape[0]
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
            alpha[sel] = coverage(shape_sdf(shape, u, v) * s)
        return alpha


def object_boxes(alpha: np.ndarray, size: int) -> np.ndarray:
    """``xyxy`` pixel edges (B, 4) of every pixel the object touches."""
    boxes = np.zeros((alpha.shape[0], 4), dtype=np.float32)
    cols, rows = alpha.max(axis=1) > 0, alpha.max(axis=2) > 0  # (B, S) each
    boxes[:, 0] = cols.argmax(axis=1)
    boxes[:, 2] = size - cols[:, ::-1].argmax(axis=1)
    boxes[:, 1] = rows.argmax(axis=1)
    boxes[:, 3] = size - rows[:, ::-1].argmax(axis=1)
    return boxes
