"""Datasets, transforms and loaders for training and evaluating convattn networks.

Typical use by a training engine::

    from convattn.data import build_dataset, build_loader, build_mix, set_epoch

    train_set, info = build_dataset("synthetic", "train")      # or "cifar10", a path...
    val_set, _ = build_dataset("synthetic", "val")
    loader = build_loader(train_set, 128, train=True, workers=1, seed=0)
    for epoch in range(epochs):
        set_epoch(loader, epoch)
        for images, labels in loader:  # float32 (N, 3, S, S), normalised; int64 (N,)
            ...

Samples themselves are ``uint8`` tensors; ``dataset.batch_transform`` (applied by the
loader) converts and normalises whole batches, which is much cheaper per image.
"""

from .archive import extract_archive, is_archive
from .cache import CACHE_ENV, resolve_cache_dir
from .cifar import load_cifar
from .factory import AUGMENTS, DATA_ENV, KINDS, DatasetInfo, build_dataset, find_data
from .folders import DatasetNotFoundError, ImageFolderRGB, find_dataset_root, load_rgb
from .loader import EpochSampler, build_loader, set_epoch
from .memory import decode_folder
from .mix import BatchCollate, build_mix
from .synthetic import SHAPES, SyntheticShapes, render_shapes
from .tensor import SkippedFile, TensorImageDataset, channel_stats
from .transforms import (
    AUTO_AUGMENTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    STYLES,
    build_transform,
    eval_resize_size,
    normalize_transform,
)

__all__ = [
    "AUGMENTS",
    "AUTO_AUGMENTS",
    "CACHE_ENV",
    "DATA_ENV",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KINDS",
    "SHAPES",
    "STYLES",
    "BatchCollate",
    "DatasetInfo",
    "DatasetNotFoundError",
    "EpochSampler",
    "ImageFolderRGB",
    "SkippedFile",
    "SyntheticShapes",
    "TensorImageDataset",
    "build_dataset",
    "build_loader",
    "build_mix",
    "build_transform",
    "channel_stats",
    "decode_folder",
    "eval_resize_size",
    "extract_archive",
    "find_data",
    "find_dataset_root",
    "is_archive",
    "load_cifar",
    "load_rgb",
    "normalize_transform",
    "render_shapes",
    "resolve_cache_dir",
    "set_epoch",
]
