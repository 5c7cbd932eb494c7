"""Datasets, transforms and loaders for training and evaluating convattn networks."""

from .archive import extract_archive, is_archive
from .cache import CACHE_ENV, resolve_cache_dir
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
    "AUTO_AUGMENTS",
    "CACHE_ENV",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SHAPES",
    "STYLES",
    "BatchCollate",
    "SkippedFile",
    "SyntheticShapes",
    "TensorImageDataset",
    "build_mix",
    "build_transform",
    "channel_stats",
    "eval_resize_size",
    "extract_archive",
    "is_archive",
    "normalize_transform",
    "render_shapes",
    "resolve_cache_dir",
]
