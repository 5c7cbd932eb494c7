"""CIFAR-10 and CIFAR-100 in torchvision's own format (the pickled python batches).

The images are already one ``uint8`` array, so they go straight into a
:class:`TensorImageDataset`. Nothing is downloaded unless ``download=True``. CIFAR-10
as JPEG class folders is read by :mod:`convattn.data.folders` instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torchvision.datasets import CIFAR10, CIFAR100

from .._validate import check_choice
from ..constants import CIFAR10_STATS, CIFAR100_STATS
from .folders import DatasetNotFoundError
from .tensor import TensorImageDataset

__all__ = ["CIFAR_STATS", "load_cifar"]

#: Per-channel (mean, std) of the training images.
CIFAR_STATS = {"cifar10": CIFAR10_STATS, "cifar100": CIFAR100_STATS}
_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def load_cifar(
    name: str, split: str, root: str | os.PathLike[str], *, download: bool = False
) -> TensorImageDataset:
    """CIFAR ``name`` ("cifar10"/"cifar100"), split "train" or "val"/"test", from
    ``root`` (the folder holding ``cifar-10-batches-py`` or ``cifar-100-python``)."""
    check_choice("dataset", name, tuple(CIFAR_STATS))
    check_choice("split", split, ("train", "val", "test"))
    root = Path(root).expanduser()
    cls = CIFAR10 if name == "cifar10" else CIFAR100
    try:
        data = cls(str(root), train=split == "train", download=download)
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
        raise DatasetNotFoundError(
            f"{name} not found (or damaged) in torchvision's format: expected "
            f"{root / _FOLDERS[name]}/ holding the python batches; pass download=True to "
            f"fetch it, or use the JPEG class folders layout ({err})"
        ) from None
    images = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()  # (N,H,W,3)->(N,3,H,W)
    return TensorImageDataset(images, data.targets, data.classes, stats=CIFAR_STATS[name])
