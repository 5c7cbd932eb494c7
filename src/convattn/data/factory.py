"""The one entry point from a dataset name or path to a dataset and its description.

``data`` is one of:

* ``"synthetic"``, optionally with options: ``"synthetic:train=2000,val=500,seed=1"``
  (keys: train, val, seed, clutter, noise); see :mod:`convattn.data.synthetic`;
* ``"cifar10"`` / ``"cifar100"``: torchvision's format under ``root`` (default: the
  cache folder), downloaded only with ``download=True``;
* a class-folder path ``<root>/{train,val}/<class>/<image>`` (val may be ``test``);
* a ``.tar``/``.tar.gz``/``.tgz`` archive of such a tree, extracted once into the cache.

A relative path that does not exist from the current folder is looked up in the folder
named by the environment variable ``CONVATTN_DATA`` (:data:`DATA_ENV`), so a recipe can
name its data (``cifar10-jpg.tar.gz``) without saying where each machine keeps it.

Folders of small images (at most 64 px, e.g. CIFAR-10 as JPEG) are decoded once into
memory (kind "cifar") and normalised with their training split's statistics (computed
once, cached); larger ones are decoded per sample (kind "imagenet-like") and normalised
with ImageNet's statistics.

Samples are ``(uint8 image (3, S, S), label)``; the dataset's ``batch_transform``
(``uint8 -> float32`` and normalisation with ``info.mean``/``info.std``) is applied per
batch by :func:`convattn.data.build_loader`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from .._validate import check_choice, check_positive
from .archive import extract_archive, is_archive
from .cache import resolve_cache_dir
from .cifar import CIFAR_STATS, load_cifar
from .folders import DatasetNotFoundError, ImageFolderRGB, find_dataset_root, split_dir
from .memory import decode_folder
from .synthetic import MEAN as SYNTHETIC_MEAN
from .synthetic import STD as SYNTHETIC_STD
from .synthetic import SyntheticShapes
from .transforms import (
    AUTO_AUGMENTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_transform,
    normalize_transform,
)

__all__ = [
    "AUGMENTS",
    "DATA_ENV",
    "KINDS",
    "SMALL_IMAGE",
    "DatasetInfo",
    "build_dataset",
    "find_data",
]

#: Folder in which relative dataset paths are looked up when they are not found as given.
DATA_ENV = "CONVATTN_DATA"

KINDS = ("imagenet-like", "cifar", "synthetic")
AUGMENTS = ("default", "imagenet", "cifar", "none")
SPLITS = ("train", "val", "test")
#: Folders whose images are at most this many pixels a side are decoded into memory.
SMALL_IMAGE = 64
_SYNTHETIC_OPTIONS = {"train": int, "val": int, "seed": int, "clutter": int, "noise": float}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the engine needs to know about a dataset built by :func:`build_dataset`.

    Attributes:
        name: "synthetic", "cifar10", "cifar100", or the folder's / archive's name.
        kind: "imagenet-like", "cifar" or "synthetic" (decides the default transforms).
        num_classes: number of classes; labels are ``0 .. num_classes - 1``.
        classes: class names in label order.
        mean, std: per-channel normalisation on the [0, 1] scale.
        img_size: side of the images the transforms produce.
        default_img_size: the natural side (stored size for small images, else 224).
        num_skipped: unreadable files left out when the dataset was built (files that
            fail later are counted in ``dataset.num_skipped``).
        in_memory: whether the images are held in memory as one tensor.
    """

    name: str
    kind: str
    num_classes: int
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    img_size: int
    default_img_size: int
    num_skipped: int
    in_memory: bool


@dataclasses.dataclass
class _Source:
    name: str
    kind: str
    dataset: Any  # a dataset with transform, batch_transform, classes and num_skipped
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None  # None: ImageNet's
    native: int | None  # side of square images all of one size, else None
    in_memory: bool


def _synthetic_options(text: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in _SYNTHETIC_OPTIONS:
            valid = ", ".join(_SYNTHETIC_OPTIONS)
            raise ValueError(f"unknown synthetic option {key!r}; valid: {valid}")
        try:
            options[key] = _SYNTHETIC_OPTIONS[key](value)
        except ValueError:
            raise ValueError(f"synthetic option {key}={value!r} is not a number") from None
    return options


def _probe_sides(folder: ImageFolderRGB, count: int = 16) -> set[tuple[int, int]]:
    """(width, height) of up to ``count`` images spread over the folder."""
    step = max(1, len(folder.samples) // count)
    sizes = set()
    for path, _ in folder.samples[::step][:count]:
        try:
            with Image.open(path) as image:
                sizes.add(image.size)
        except (OSError, ValueError, SyntaxError):
            continue
    return sizes


def _folder(path: Path, split: str, opts: dict[str, Any]) -> _Source:
    root = find_dataset_root(path)
    folder_dir = split_dir(root, split)
    classes = None
    if split != "train" and (root / "train").is_dir():  # labels must agree with train's
        classes = ImageFolderRGB(root / "train", check_files=False).classes
    folder = ImageFolderRGB(folder_dir, classes=classes, check_files=False)
    sides = _probe_sides(folder)
    small = bool(sides) and max(max(s) for s in sides) <= SMALL_IMAGE
    kind = "cifar" if small else "imagenet-like"
    native = None
    if len(sides) == 1:
        ((w, h),) = sides
        native = w if w == h else None
    if not (small if opts["in_memory"] is None else opts["in_memory"]):
        if opts["check_files"]:
            folder.drop_unreadable()
        return _Source(root.name, kind, folder, None, native, in_memory=False)
    memory = {k: opts[k] for k in ("cache_dir", "progress")}
    dataset = decode_folder(folder, **memory)
    stats = dataset.stats()
    if split != "train" and (root / "train").is_dir():  # normalise with train's statistics
        stats = decode_folder(ImageFolderRGB(root / "train", check_files=False), **memory).stats()
    h, w = dataset.image_size
    return _Source(root.name, kind, dataset, stats, h if h == w else None, in_memory=True)


def find_data(data: str | os.PathLike[str]) -> Path:
    """The path dataset ``data`` names: as given, or ``$CONVATTN_DATA/data`` when it is a
    relative path that does not exist from here and does there."""
    path = Path(os.fspath(data)).expanduser()
    root = os.environ.get(DATA_ENV)
    if root and not path.is_absolute() and not path.exists():
        candidate = Path(root).expanduser() / path
        if candidate.exists():
            return candidate
    return path


def _source(data: str | os.PathLike[str], split: str, opts: dict[str, Any]) -> _Source:
    text = os.fspath(data)
    name, _, rest = text.partition(":")
    if name.lower() == "synthetic":
        options = _synthetic_options(rest)
        size = options.pop("train" if split == "train" else "val", None)
        options.pop("val" if split == "train" else "train", None)
        img_size = opts["img_size"] or 32
        dataset = SyntheticShapes(split, size=size, img_size=img_size, **options)
        stats = (SYNTHETIC_MEAN, SYNTHETIC_STD)
        return _Source("synthetic", "synthetic", dataset, stats, img_size, in_memory=True)
    if text.lower() in CIFAR_STATS:
        root = opts["root"] or resolve_cache_dir(opts["cache_dir"])
        dataset = load_cifar(text.lower(), split, root, download=opts["download"])
        stats = CIFAR_STATS[text.lower()]
        return _Source(text.lower(), "cifar", dataset, stats, 32, in_memory=True)
    path = find_data(text)
    if path.is_file() and is_archive(path):
        folder = extract_archive(path, opts["cache_dir"], progress=opts["progress"])
        return dataclasses.replace(_folder(folder, split, opts), name=path.name.split(".")[0])
    if path.is_dir():
        return _folder(path, split, opts)
    if path.exists() or os.sep in text or "/" in text or is_archive(text):
        raise DatasetNotFoundError(
            f"dataset not found: {path} is neither a class folder "
            "(<root>/{train,val}/<class>/<image>) nor a .tar/.tar.gz/.tgz archive of one"
        )
    raise ValueError(
        f"unknown dataset {text!r}; valid: 'synthetic[:key=value,...]', 'cifar10', "
        "'cifar100', a class-folder path or a .tar/.tar.gz/.tgz archive"
    )


def build_dataset(
    data: str | os.PathLike[str],
    split: str = "train",
    *,
    img_size: int | None = None,
    augment: str = "default",
    auto_augment: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    in_memory: bool | None = None,
    check_files: bool = True,
    progress: bool = True,
) -> tuple[Dataset[Any], DatasetInfo]:
    """Build split ``split`` of dataset ``data`` with its transforms; see the module doc.

    Args:
        data: "synthetic[:options]", "cifar10", "cifar100", a folder or an archive path.
        split: "train", or "val" (alias "test"). Only "train" is augmented.
        img_size: output side (default: the dataset's ``default_img_size``); synthetic
            images are rendered at this size.
        augment: "default" (by kind: "imagenet" for imagenet-like data, else "cifar"),
            "imagenet", "cifar" or "none" (evaluation transform); see
            :mod:`convattn.data.transforms`. Evaluation uses the same style.
        auto_augment: None or a policy of :data:`convattn.data.AUTO_AUGMENTS` (training
            split only; ignored for "val").
        cache_dir: cache root for archives and decoded images (default
            ``$CONVATTN_CACHE`` or ``~/.cache/convattn/datasets``).
        root: folder of the torchvision-format CIFAR files (default: the cache root).
        download: let torchvision download CIFAR if it is missing.
        in_memory: decode a folder into memory (default: when its images are <= 64 px).
        check_files: read every image's header when scanning a folder decoded per sample.
        progress: progress bars for extraction and decoding (on a terminal).

    Raises:
        ValueError: unknown ``data``, ``split``, ``augment``, option or policy.
        DatasetNotFoundError: a missing or empty dataset (a ``FileNotFoundError``).
    """
    check_choice("split", split, SPLITS)
    check_choice("augment", augment, AUGMENTS)
    if auto_augment is not None:
        check_choice("auto_augment", auto_augment, AUTO_AUGMENTS)
    if img_size is not None:
        check_positive("img_size", img_size)
    opts = {
        "img_size": img_size,
        "cache_dir": cache_dir,
        "root": root,
        "download": download,
        "in_memory": in_memory,
        "check_files": check_files,
        "progress": progress,
    }
    src = _source(data, split, opts)
    dataset = src.dataset
    default_size = src.native if src.native is not None and src.kind != "imagenet-like" else 224
    size = img_size or default_size
    mean, std = src.stats or (IMAGENET_MEAN, IMAGENET_STD)
    style = augment
    if augment in ("default", "none"):
        style = "imagenet" if src.kind == "imagenet-like" else "cifar"
    train = split == "train" and augment != "none"
    dataset.transform = build_transform(
        train=train,
        img_size=size,
        style=style,
        native_size=src.native,
        auto_augment=auto_augment if train else None,
        pil_input=not src.in_memory,
    )
    dataset.batch_transform = normalize_transform(mean, std)
    info = DatasetInfo(
        name=src.name,
        kind=src.kind,
        num_classes=len(dataset.classes),
        classes=tuple(dataset.classes),
        mean=tuple(mean),
        std=tuple(std),
        img_size=size,
        default_img_size=default_size,
        num_skipped=dataset.num_skipped,
        in_memory=src.in_memory,
    )
    return dataset, info
