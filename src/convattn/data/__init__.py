"""Datasets, transforms and loaders for training and evaluating convattn networks."""

from .archive import extract_archive, is_archive
from .cache import CACHE_ENV, resolve_cache_dir
from .cifar import load_cifar
from .factory import AUGMENTS, KINDS, DatasetInfo, build_dataset
from .folders import DatasetNotFoundError, ImageFolderRGB, find_dataset_root, load_rgb
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
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KINDS",
    "SHAPES",
    "STYLES",
    "BatchCollate",
    "DatasetInfo",
    "DatasetNotFoundError",
    "ImageFolderRGB",
    "SkippedFile",
    "SyntheticShapes",
    "TensorImageDataset",
    "build_dataset",
    "build_mix",
    "build_transform",
    "channel_stats",
    "decode_folder",
    "eval_resize_size",
    "extract_archive",
    "find_dataset_root",
    "is_archive",
    "load_cifar",
    "load_rgb",
    "normalize_transform",
    "render_shapes",
    "resolve_cache_dir",
]
