"""Datasets, transforms and loaders for training and evaluating convattn networks."""

from .synthetic import SHAPES, SyntheticShapes, render_shapes
from .tensor import SkippedFile, TensorImageDataset, channel_stats

__all__ = [
    "SHAPES",
    "SkippedFile",
    "SyntheticShapes",
    "TensorImageDataset",
    "channel_stats",
    "render_shapes",
]
