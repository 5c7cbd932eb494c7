"""Batch-level mixup and cutmix (torchvision's ``v2.MixUp`` and ``v2.CutMix``).

Both turn integer labels ``(N,)`` into soft labels ``(N, num_classes)``;
``torch.nn.functional.cross_entropy`` takes those directly (and its
``label_smoothing`` applies on top). The engine either passes the result of
:func:`build_mix` to :func:`convattn.data.build_loader` (mixed in the loader's workers)
or calls it on each batch itself (e.g. on the GPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate
from torchvision.transforms import v2

from .._validate import check_positive

__all__ = ["BatchCollate", "Mix", "build_mix"]

#: ``mix(images, labels) -> (images, soft_labels)``.
Mix = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def build_mix(
    num_classes: int, *, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0
) -> Mix | None:
    """Mixup, cutmix, or one of the two chosen at random per batch; ``None`` if both
    alphas are 0. Alphas are the Beta distribution's parameter (0.2 and 1.0 are usual).
    """
    check_positive("num_classes", num_classes)
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"alphas must be >= 0, got {mixup_alpha} and {cutmix_alpha}")
    choices: list[v2.Transform] = []
    if mixup_alpha > 0:
        choices.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        choices.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not choices:
        return None
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)


class BatchCollate:
    """Stack samples, then apply the batch transform (e.g. normalisation) and mixing.

    Picklable, so it runs inside the loader's worker processes.
    """

    def __init__(
        self,
        batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        mix: Mix | None = None,
    ) -> None:
        self.batch_transform = batch_transform
        self.mix = mix

    def __call__(self, samples: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = default_collate(samples)  # (N, 3, H, W), (N,)
        if self.batch_transform is not None:
            images = self.batch_transform(images)
        if self.mix is not None:
            images, labels = self.mix(images, labels)
        return images, labels
