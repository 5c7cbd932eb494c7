"""Class-folder datasets (ImageNet layout) through torchvision's ``ImageFolder``.

Layout: ``<root>/{train,val}/<class>/<image>``; the held-out split may be named ``test``
(as in CIFAR-10 as JPEG). Every image becomes RGB (greyscale, CMYK, palette and alpha
images included). Unreadable files never stop training: files that are not images are
left out when the folder is scanned (a cheap header check), files that fail to decode
later are reported once and replaced by the next readable sample. Both are logged with
their path and reason and listed in :attr:`ImageFolderRGB.skipped`, also when they were
met in a loader worker process (a shared-memory flag per sample).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .tensor import SkippedFile

__all__ = [
    "DECODE_ERRORS",
    "LAYOUT",
    "DatasetNotFoundError",
    "ImageFolderRGB",
    "find_dataset_root",
    "image_files",
    "load_rgb",
    "split_dir",
]

log = logging.getLogger("convattn.data")

LAYOUT = "<root>/{train,val}/<class>/<image> (the val folder may be named 'test')"
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "test"), "test": ("test", "val")}
#: What PIL raises for files that are not images, are truncated or otherwise broken.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder is missing or holds no images; the message names the path and
    the expected layout."""


def find_dataset_root(path: str | os.PathLike[str]) -> Path:
    """The folder holding ``train``/``val``/``test`` at ``path`` or below it through
    folders with a single subfolder (as archives often wrap their tree in one)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"dataset folder not found: {root}; expected {LAYOUT}")
    current = root
    while True:
        if any((current / name).is_dir() for name in ("train", "val", "test")):
            return current
        subdirs = [p for p in current.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if len(subdirs) != 1:
            raise DatasetNotFoundError(f"no train/val/test folder in {root}; expected {LAYOUT}")
        current = subdirs[0]


def split_dir(root: Path, split: str) -> Path:
    """``root/train`` for "train"; ``root/val``, else ``root/test``, for "val"/"test"."""
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(map(repr, SPLIT_FOLDERS))}")
    for name in SPLIT_FOLDERS[split]:
        if (root / name).is_dir():
            return root / name
    raise DatasetNotFoundError(
        f"no {' or '.join(SPLIT_FOLDERS[split])} folder in {root}; expected {LAYOUT}"
    )


def load_rgb(path: str) -> Image.Image:
    """Decode an image file to an RGB PIL image (the file is closed on return)."""
    with Image.open(path) as image:
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")  # palette transparency needs RGBA first
        return image.convert("RGB")


class ImageFolderRGB(ImageFolder):
    """``ImageFolder`` for one split folder ``<split>/<class>/<image>``, RGB, robust.

    Args:
        root: the split folder (e.g. ``<data>/train``).
        classes: class folder names in label order; default: the sorted subfolders. Give
            the training split's classes for the val split, so labels agree.
        transform: per-sample transform of the RGB PIL image.
        check_files: open every file's header at scan time and leave out non-images
            (a small cost per file); without it they are caught when loaded.

    Raises:
        DatasetNotFoundError: ``root`` is missing or holds no readable image.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        classes: Sequence[str] | None = None,
        transform: Callable[[Any], Any] | None = None,
        check_files: bool = True,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetNotFoundError(f"dataset folder not found: {root}; expected {LAYOUT}")
        self._given_classes = None if classes is None else list(classes)
        super().__init__(str(root), transform=transform, loader=load_rgb, allow_empty=True)
        self._scan_skipped: list[SkippedFile] = []
        self.batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
        if check_files:
            self.drop_unreadable()
        else:
            self._reset_samples(self.samples)

    def _reset_samples(self, samples: list[tuple[str, int]]) -> None:
        if not samples:
            left_out = f" ({len(self._scan_skipped)} unreadable files left out)"
            raise DatasetNotFoundError(
                f"no images in {self.root}{left_out if self._scan_skipped else ''}; "
                f"expected {LAYOUT}"
            )
        self.samples = self.imgs = samples
        self.targets = [t for _, t in samples]
        self._reasons: dict[int, str] = {}
        self._bad = torch.zeros(len(samples), dtype=torch.bool).share_memory_()

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        try:
            found, mapping = super().find_classes(directory)
        except FileNotFoundError:
            raise DatasetNotFoundError(
                f"no class folders in {directory}; expected {LAYOUT}"
            ) from None
        if self._given_classes is None:
            return found, mapping
        extra = set(found) - set(self._given_classes)
        if extra:
            raise ValueError(
                f"class folders {sorted(extra)} in {directory} are not among the given "
                f"classes (those of the training split): {self._given_classes}"
            )
        return self._given_classes, {c: i for i, c in enumerate(self._given_classes)}

    def drop_unreadable(self) -> None:
        """Leave out files whose header PIL cannot read (logged and listed in
        :attr:`skipped`); raises :class:`DatasetNotFoundError` if none is left."""
        kept = []
        for path, target in self.samples:
            try:
                with Image.open(path):
                    pass
            except DECODE_ERRORS as err:
                log.warning("skipping %s: not a readable image (%s)", path, err)
                self._scan_skipped.append(SkippedFile(path, f"not a readable image: {err}"))
                continue
            kept.append((path, target))
        self._reset_samples(kept)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        n = len(self.samples)
        for step in range(n):  # a broken file gives way to the next readable one
            i = (index + step) % n
            if self._bad[i]:
                continue
            path, target = self.samples[i]
            try:
                image = self.loader(path)
            except DECODE_ERRORS as err:
                self._bad[i] = True
                self._reasons[i] = f"failed to decode: {err}"
                log.warning("skipping %s: failed to decode (%s)", path, err)
                continue
            if self.transform is not None:
                image = self.transform(image)
            return image, target
        raise RuntimeError(f"no image under {self.root} could be decoded")

    @property
    def skipped(self) -> list[SkippedFile]:
        """Files left out: at scan time and, so far, at load time (in any process)."""
        late = [
            SkippedFile(self.samples[i][0], self._reasons.get(i, "failed to decode"))
            for i in torch.nonzero(self._bad).flatten().tolist()
        ]
        return self._scan_skipped + late

    @property
    def num_skipped(self) -> int:
        """How many files were left out so far."""
        return len(self._scan_skipped) + int(self._bad.sum())


def image_files(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The image files of ``paths``: files as given, folders searched recursively (in
    sorted order) for files with an image extension.

    Raises a one-line error for a missing path or a folder without images."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMG_EXTENSIONS)
            if not found:
                raise ValueError(f"{p}: no images in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return files
