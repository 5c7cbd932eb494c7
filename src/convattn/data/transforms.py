"""Per-sample and per-batch transforms, all from torchvision's transforms v2.

Work is split in two so that the cheap part runs once per batch:

* per sample (:func:`build_transform`): geometry and AutoAugment on a PIL image or a
  ``uint8`` tensor, giving a ``(3, H, W)`` ``uint8`` tensor;
* per batch (:func:`normalize_transform`): ``uint8 -> float32`` in [0, 1] and
  normalisation by the dataset's mean and std, on the stacked ``(N, 3, H, W)`` batch
  (one vectorised pass instead of one small call per image).

Styles: "imagenet" (the paper's: RandomResizedCrop + flip; evaluation resizes the short
side to ``round(img_size * 256 / 224)`` and centre-crops ``img_size``), "cifar"
(RandomCrop with ``img_size / 8`` zero padding + flip; evaluation keeps the image) and
"none" (evaluation's transform for training too).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from .._validate import check_choice, check_positive
from ..constants import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "AUTO_AUGMENTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "STYLES",
    "build_transform",
    "eval_resize_size",
    "normalize_transform",
]

STYLES = ("imagenet", "cifar", "none")
AUTO_AUGMENTS = ("imagenet", "cifar10", "svhn", "randaugment", "trivialaugment")


def eval_resize_size(img_size: int) -> int:
    """Short side before the evaluation centre crop: 256 for 224, in proportion else."""
    return round(check_positive("img_size", img_size) * 256 / 224)


def _auto_augment(name: str) -> v2.Transform:
    check_choice("auto_augment", name, AUTO_AUGMENTS)
    if name == "randaugment":
        return v2.RandAugment()
    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    policy = {
        "imagenet": v2.AutoAugmentPolicy.IMAGENET,
        "cifar10": v2.AutoAugmentPolicy.CIFAR10,
        "svhn": v2.AutoAugmentPolicy.SVHN,
    }[name]
    return v2.AutoAugment(policy)


def build_transform(
    *,
    train: bool,
    img_size: int,
    style: str = "imagenet",
    native_size: int | None = None,
    auto_augment: str | None = None,
    pil_input: bool = True,
) -> v2.Transform:
    """The per-sample transform: PIL image or ``uint8`` tensor -> ``(3, S, S)`` ``uint8``.

    Args:
        train: training (random) or evaluation (deterministic) transform.
        img_size: S, the output side.
        style: "imagenet", "cifar" or "none" (see the module's docstring).
        native_size: the stored images' side, when all share it; "cifar" and "none" then
            skip resizing when it equals ``img_size``.
        auto_augment: None, or one of :data:`AUTO_AUGMENTS` ("imagenet", "cifar10" and
            "svhn" are AutoAugment's policies); training only.
        pil_input: end with ``PILToTensor`` (a few us a sample; tensors pass through it);
            ``False`` for datasets of ``uint8`` tensors.
    """
    check_choice("style", style, STYLES)
    check_positive("img_size", img_size)
    steps: list[v2.Transform] = []
    fits = native_size == img_size
    if train and style == "imagenet":
        steps += [v2.RandomResizedCrop(img_size, antialias=True), v2.RandomHorizontalFlip()]
    elif train and style == "cifar":
        if not fits:
            steps += [v2.Resize(img_size, antialias=True), v2.CenterCrop(img_size)]
        padding = max(1, round(img_size / 8))  # 4 at 32 px, as in the ResNet paper
        steps += [v2.RandomCrop(img_size, padding=padding), v2.RandomHorizontalFlip()]
    elif style == "imagenet":
        steps += [v2.Resize(eval_resize_size(img_size), antialias=True), v2.CenterCrop(img_size)]
    elif not fits:
        steps += [v2.Resize(img_size, antialias=True), v2.CenterCrop(img_size)]
    if auto_augment is not None:
        if not train:
            raise ValueError("auto_augment is a training transform; pass train=True")
        steps.append(_auto_augment(auto_augment))
    if pil_input:
        steps.append(v2.PILToTensor())  # PIL -> uint8 tensor; tensors pass through
    return v2.Compose(steps) if steps else v2.Identity()


def normalize_transform(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """``uint8`` images or batches -> ``float32`` in [0, 1], then ``(x - mean) / std``."""
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"need 3 means and 3 positive stds, got {mean} and {std}")
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
