"""How well maps (Grad-CAM, attention) localise objects with known boxes.

- **Pointing game** (Zhang et al., "Top-down Neural Attention by Excitation Backprop",
  ECCV 2016, arXiv 1608.00507): a hit when the map's maximum lies in a box of the target
  class. Here without the paper's 15-pixel tolerance; ties go to the first maximum in
  row-major order (``argmax`` of the flattened map), and a map with no positive value
  (all zero, e.g. a flat map after :func:`normalize_maps`) is a miss.
- **Energy in box** (the "energy-based pointing game" of Wang et al., "Score-CAM",
  CVPR Workshops 2020, arXiv 1910.01279): the fraction of the map's sum that lies inside
  the union of the boxes; 0 for a map that sums to 0.

Boxes are ``xyxy`` pixel edges in the maps' pixel grid (as
:attr:`convattn.data.SyntheticShapes.boxes`: ``x0`` is the first column the object
touches, ``x1`` the last column + 1): pixel (row i, column j), whose centre is
(j + 0.5, i + 0.5), is inside when ``x0 <= j + 0.5 <= x1`` and ``y0 <= i + 0.5 <= y1``.
Maps must be at the boxes' image size, as :class:`GradCAM` returns them, and
non-negative.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "LocalizationScores",
    "box_mask",
    "energy_in_box",
    "localization_scores",
    "pointing_game",
]

Boxes = torch.Tensor | Sequence[torch.Tensor]


@dataclass(frozen=True)
class LocalizationScores:
    """Per-image scores (N,) and their means over the batch."""

    pointing: torch.Tensor
    energy: torch.Tensor
    pointing_mean: float
    energy_mean: float


def box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(H, W) bool: the pixels whose centres lie in any of ``boxes`` (K, 4) ``xyxy``."""
    xs = torch.arange(width, dtype=torch.float64, device=boxes.device) + 0.5
    ys = torch.arange(height, dtype=torch.float64, device=boxes.device) + 0.5
    b = boxes.to(torch.float64)
    in_x = (xs >= b[:, 0:1]) & (xs <= b[:, 2:3])  # (K, W)
    in_y = (ys >= b[:, 1:2]) & (ys <= b[:, 3:4])  # (K, H)
    return (in_y[:, :, None] & in_x[:, None, :]).any(dim=0)  # (K, H, W) -> (H, W)


def _check_cams(cams: torch.Tensor) -> torch.Tensor:
    if not isinstance(cams, torch.Tensor) or cams.dim() != 3 or cams.shape[0] == 0:
        got = tuple(cams.shape) if isinstance(cams, torch.Tensor) else type(cams).__name__
        raise ValueError(f"cams must be maps (N, H, W) with N >= 1, got {got}")
    if not cams.is_floating_point():
        raise ValueError(f"cams must be floating point, got {cams.dtype}")
    if bool((cams < 0).any()):
        raise ValueError("cams must be non-negative (as Grad-CAM maps are)")
    return cams


def _image_boxes(boxes: Boxes, n: int) -> list[torch.Tensor]:
    """One (K_i, 4) tensor per image from (N, 4), (N, K, 4) or a sequence of (K_i, 4)/(4,)."""
    if isinstance(boxes, torch.Tensor):
        if boxes.dim() not in (2, 3):
            raise ValueError(f"boxes must be (N, 4), (N, K, 4) or a list, got {tuple(boxes.shape)}")
        items = list(boxes[:, None] if boxes.dim() == 2 else boxes)
    else:
        items = [torch.as_tensor(b) for b in boxes]
    if len(items) != n:
        raise ValueError(f"boxes must give one entry per map ({n}), got {len(items)}")
    out = []
    for i, b in enumerate(items):
        b = b[None] if b.dim() == 1 else b
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes[{i}] must be (K, 4) xyxy, got {tuple(b.shape)}")
        if bool(((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])).any()):
            raise ValueError(f"boxes[{i}] has x1 < x0 or y1 < y0 (expected xyxy): {b.tolist()}")
        out.append(b)
    return out


def _masks(cams: torch.Tensor, boxes: Boxes) -> torch.Tensor:
    """(N, H, W) bool: each image's box mask at the maps' size."""
    _, h, w = _check_cams(cams).shape
    masks = [box_mask(b.to(cams.device), h, w) for b in _image_boxes(boxes, cams.shape[0])]
    return torch.stack(masks)


def pointing_game(cams: torch.Tensor, boxes: Boxes) -> torch.Tensor:
    """(N,) bool: whether each map's maximum lies in one of its image's boxes."""
    masks = _masks(cams, boxes).flatten(1)  # (N, H * W)
    flat = cams.flatten(1)
    first_max = flat.argmax(dim=1, keepdim=True)  # the first maximum, row-major
    return masks.gather(1, first_max)[:, 0] & (flat.amax(dim=1) > 0)


def energy_in_box(cams: torch.Tensor, boxes: Boxes) -> torch.Tensor:
    """(N,): the fraction of each map's sum inside its image's boxes (0 for a zero map)."""
    masks = _masks(cams, boxes)
    total = cams.sum(dim=(1, 2))
    inside = (cams * masks).sum(dim=(1, 2))
    return torch.where(total > 0, inside / torch.where(total > 0, total, 1.0), 0.0)


def localization_scores(cams: torch.Tensor, boxes: Boxes) -> LocalizationScores:
    """Both scores of every map and their batch means (pointing: the hit rate)."""
    hits = pointing_game(cams, boxes)
    energy = energy_in_box(cams, boxes)
    return LocalizationScores(hits, energy, hits.double().mean().item(), energy.mean().item())
