"""Image datasets held in memory as one ``uint8`` tensor ``(N, 3, H, W)``.

Small images (32 to 64 px) cost more to decode than to train on, so they are decoded
once (:mod:`convattn.data.memory`) or generated once (:mod:`convattn.data.synthetic`)
into a single tensor; a sample is then a slice plus the per-sample transforms, which
torchvision's v2 transforms run faster on ``uint8`` tensors than on PIL images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch.utils.data import Dataset

__all__ = ["SkippedFile", "TensorImageDataset", "channel_stats"]

Transform = Callable[[torch.Tensor], torch.Tensor]


class SkippedFile(NamedTuple):
    """An image file left out of a dataset, with the reason (for logs and reports)."""

    path: str
    reason: str


class TensorImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """``(image, label)`` pairs from an in-memory ``uint8`` tensor.

    Args:
        images: ``(N, 3, H, W)`` ``uint8`` tensor; not copied, never modified.
        targets: ``(N,)`` integer class indices in ``[0, len(classes))``.
        classes: class names, index ``k`` naming label ``k``.
        transform: per-sample transform of a ``(3, H, W)`` ``uint8`` tensor.
        skipped: files left out while building ``images`` (reported, not fatal).
        stats: known per-channel ``(mean, std)``; computed on first use otherwise.

    Attributes:
        batch_transform: applied by :func:`convattn.data.build_loader` to each stacked
            batch (``uint8 -> float32`` and normalisation); ``None`` leaves batches as is.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor | Sequence[int],
        classes: Sequence[str],
        *,
        transform: Transform | None = None,
        skipped: Sequence[SkippedFile] = (),
        stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    ) -> None:
        targets = torch.as_tensor(targets, dtype=torch.int64)
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be a uint8 tensor (N, 3, H, W), got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        if targets.shape != (images.shape[0],):
            raise ValueError(
                f"targets must have shape ({images.shape[0]},), got {tuple(targets.shape)}"
            )
        if len(targets) and not 0 <= int(targets.min()) <= int(targets.max()) < len(classes):
            raise ValueError(f"targets must lie in [0, {len(classes)}) (one per class name)")
        self.images = images
        self.targets = targets
        self.classes = list(classes)
        self.transform = transform
        self.batch_transform: Transform | None = None
        self.skipped = list(skipped)
        self._stats = stats

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the stored images."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel ``(mean, std)`` of the stored images on the [0, 1] scale."""
        if self._stats is None:
            self._stats = channel_stats(self.images)
        return self._stats

    @property
    def num_skipped(self) -> int:
        """How many files were left out (corrupt or unreadable)."""
        return len(self.skipped)


def channel_stats(
    images: torch.Tensor, *, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``uint8`` images, scaled to [0, 1].

    Accumulated in float64 over chunks so that memory stays small for 50k images. A
    channel that never varies gets std 1/255 (one grey level) so normalisation stays
    finite.
    """
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64).div_(255)  # (n, 3, H, W)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.square().sum(dim=(0, 2, 3))
    count = max(1, images.shape[0] * images.shape[2] * images.shape[3])
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt().clamp_min(1 / 255)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)
