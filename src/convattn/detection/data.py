"""Detection datasets as torchvision's detectors read them, and their loaders.

A sample is ``(image, target)``: the image a float32 ``(3, H, W)`` tensor in [0, 1]
(the detectors normalise and resize it themselves) and the target torchvision's dict,
``boxes`` (n, 4) float32 ``xyxy`` pixel edges, ``labels`` (n,) int64 in ``1..K`` (0 is
the background), ``iscrowd`` (n,) int64 (COCO's crowd regions and VOC's "difficult"
objects, which evaluation ignores) and ``image_id`` (the sample's index).

Every dataset is a :class:`DetectionDataset` of :class:`ImageRecord` s: the embedded
:func:`synthetic_detection` (scenes of :mod:`convattn.data.scenes`), and COCO- and
VOC-format files read by :mod:`convattn.detection.readers`, which report and skip
bad records. Training takes horizontal flips (every shape of the synthetic set is
left-right symmetric) drawn from the torch generator of the process that loads the
sample. With ``workers=0`` that is the global one, which the engine seeds per epoch, so
a run and its resumption repeat the same flips exactly. Loading processes
(``workers > 0``) draw from their own generators, seeded once from the loader's seed
when they start: a run repeats from its start, but a resumed run draws other flips
than the uninterrupted one.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .._seed import mix_seed
from ..data import SHAPES, EpochSampler
from ..data.scenes import render_scenes

__all__ = [
    "DetectionDataset",
    "ImageRecord",
    "Target",
    "build_detection_loader",
    "collate",
    "hflip",
    "synthetic_detection",
]

Target = dict[str, torch.Tensor]


@dataclass
class ImageRecord:
    """One image and its objects: ``path`` (a file) or ``index`` (into an in-memory
    tensor), its size, boxes (n, 4) ``xyxy``, labels ``1..K`` and crowd flags."""

    width: int
    height: int
    boxes: torch.Tensor
    labels: torch.Tensor
    iscrowd: torch.Tensor | None = None
    path: Path | None = None
    index: int | None = None
    name: str = ""

    def target(self, image_id: int) -> Target:
        crowd = torch.zeros_like(self.labels) if self.iscrowd is None else self.iscrowd
        return {
            "boxes": self.boxes.reshape(-1, 4).float(),
            "labels": self.labels.long(),
            "iscrowd": crowd.long(),
            "image_id": torch.tensor(image_id),
        }


@dataclass(eq=False)
class DetectionDataset(Dataset[tuple[torch.Tensor, Target]]):
    """Images and their targets.

    Attributes:
        records: one :class:`ImageRecord` per usable image.
        classes: class names, ``classes[k - 1]`` naming label ``k``.
        name: what the data is (for logs and run folders).
        flip: random horizontal flips (training).
        images: the ``uint8`` (N, 3, H, W) tensor records' ``index`` points into.
        problems: the bad records that were skipped, one line each.
    """

    records: list[ImageRecord]
    classes: list[str]
    name: str = "detection"
    flip: bool = False
    images: torch.Tensor | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return len(self.problems)

    @property
    def num_classes(self) -> int:
        """Object classes plus the background (what the detectors' ``num_classes`` is)."""
        return len(self.classes) + 1

    def __len__(self) -> int:
        return len(self.records)

    def load_image(self, i: int) -> torch.Tensor:
        """Image ``i`` as float32 (3, H, W) in [0, 1], unflipped."""
        rec = self.records[i]
        if rec.index is not None and self.images is not None:
            pixels = self.images[rec.index]
        else:
            with Image.open(rec.path) as im:
                rgb = im.convert("RGB")
            pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
            pixels = pixels.view(rgb.height, rgb.width, 3).permute(2, 0, 1)
        return pixels.float().div_(255)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Target]:
        image, target = self.load_image(i), self.records[i].target(i)
        if self.flip and bool(torch.rand(()) < 0.5):
            image, target = hflip(image, target)
        return image, target


def hflip(image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
    """Mirror an image (3, H, W) and its boxes left-right."""
    w = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes}


@functools.lru_cache(maxsize=4)
def _scenes(split: str, size: int, seed: int, img_size: int, classes: int, objects: int):
    parts = [
        render_scenes(
            range(a, min(size, a + 256)),
            split=split,
            seed=seed,
            img_size=img_size,
            num_classes=classes,
            max_objects=objects,
        )
        for a in range(0, size, 256)  # chunks bound the float32 working memory
    ]
    images = torch.cat([p.images for p in parts])
    return images, [b for p in parts for b in p.boxes], [lb for p in parts for lb in p.labels]


def synthetic_detection(
    split: str = "train",
    *,
    size: int | None = None,
    img_size: int = 128,
    num_classes: int = 5,
    max_objects: int = 4,
    seed: int = 0,
    flip: bool | None = None,
) -> DetectionDataset:
    """The embedded detection set: ``size`` scenes (default 512 train, 128 val) of
    ``img_size`` px with 1 to ``max_objects`` objects of ``num_classes`` shapes."""
    size = size if size is not None else (512 if split == "train" else 128)
    images, boxes, labels = _scenes(split, size, seed, img_size, num_classes, max_objects)
    records = [
        ImageRecord(img_size, img_size, b, lb + 1, index=i, name=f"{split}-{i}")
        for i, (b, lb) in enumerate(zip(boxes, labels, strict=True))
    ]
    flip = split == "train" if flip is None else flip
    return DetectionDataset(
        records, list(SHAPES[:num_classes]), "synthetic-detection", flip, images
    )


def collate(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[list, list]:
    """Images and targets as lists (the detectors take images of different sizes)."""
    return [b[0] for b in batch], [b[1] for b in batch]


def build_detection_loader(
    dataset: Dataset[Any],
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Batches of ``(images, targets)`` lists; training shuffles by ``(seed, epoch)``
    (:class:`~convattn.data.EpochSampler`, each process its share) and drops the last
    incomplete batch; evaluation keeps the order (each process its share)."""
    sampler = None
    if train or world_size > 1:
        sampler = EpochSampler(
            dataset,
            num_replicas=world_size,
            rank=rank,
            shuffle=train,
            seed=seed,
            drop_last=train and world_size > 1,
        )
    generator = torch.Generator().manual_seed(mix_seed(seed, 0, rank) % 2**63)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=train,
        persistent_workers=workers > 0,
        generator=generator,
    )
