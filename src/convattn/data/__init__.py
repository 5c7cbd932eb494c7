"""Datasets, transforms and loaders for training and evaluating convattn networks."""

from .archive import extract_archive, is_archive
from .cache import CACHE_ENV, resolve_cache_dir
from .synthetic import SHAPES, SyntheticShapes, render_shapes
from .tensor import SkippedFile, TensorImageDataset, channel_stats

__all__ = [
    "CACHE_ENV",
    "SHAPES",
    "SkippedFile",
    "SyntheticShapes",
    "TensorImageDataset",
    "channel_stats",
    "extract_archive",
    "is_archive",
    "render_shapes",
    "resolve_cache_dir",
]
