"""A detection recipe's parts: its datasets (by the ``data.path`` they are named with),
their loaders, the detector, and its optimiser, schedule and gradient scaler."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from .._validate import check_choice
from ..data import find_data
from ..engine.distributed import DistInfo
from ..engine.optim import build_optimizer, build_scheduler
from ..engine.setup import TrainParts
from ..engine.sync_bn import convert_sync_batchnorm
from ..layers import set_impl
from .composed import composed_detection, composed_options
from .config import DETECTORS, KIND_OPTIONS, UNSUPPORTED, DetectionConfig, DetectorConfig
from .data import DetectionDataset, build_detection_loader, synthetic_detection
from .faster_rcnn import build_faster_rcnn
from .readers import read_coco, read_voc
from .ssd import build_ssd, check_ssd_arguments

__all__ = [
    "DetectionData",
    "build_detection_data",
    "build_detection_parts",
    "build_detector",
    "check_supported",
    "detection_dataset",
    "limit",
    "synthetic_options",
]

log = logging.getLogger("convattn")

_SYNTHETIC = {
    "train": "size",
    "val": "size",
    "img_size": "img_size",
    "classes": "num_classes",
    "objects": "max_objects",
    "seed": "seed",
}


def synthetic_options(text: str, split: str) -> dict[str, int]:
    """``"train=64,val=16,img_size=96"`` as :func:`synthetic_detection` arguments of
    ``split`` (``train`` sets the training split's size, ``val`` the other's)."""
    out: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = item.partition("=")
        if key not in _SYNTHETIC:
            raise ValueError(f"unknown synthetic option {key!r}; valid: {', '.join(_SYNTHETIC)}")
        if not value.isdigit():
            raise ValueError(f"synthetic option {key}={value!r} is not a whole number")
        if key in ("train", "val") and (key == "train") != (split == "train"):
            continue
        out[_SYNTHETIC[key]] = int(value)
    return out


def detection_dataset(path: str, split: str, *, train: bool, flip: bool = True) -> DetectionDataset:
    """The dataset ``path`` names (see :class:`~convattn.detection.config.DetectionDataConfig`);
    flips only when ``train`` and ``flip``."""
    name, _, rest = path.partition(":")
    if name == "synthetic":
        check_choice("synthetic split", split, ("train", "val"))
        return synthetic_detection(split, flip=train and flip, **synthetic_options(rest, split))
    if name == "composed":
        return composed_detection(split=split, flip=train and flip, **composed_options(rest, split))
    root = find_data(path)
    if (root / "Annotations").is_dir():
        return read_voc(root, split, flip=train and flip)
    ann = root / "annotations" / f"instances_{split}.json"
    if ann.is_file():
        return read_coco(ann, root / split, flip=train and flip)
    raise FileNotFoundError(
        f"no detection data at {path!r}: expected 'synthetic[:options]', "
        "'composed:objects=PATH,backgrounds=PATH[,options]', a VOC folder "
        f"(Annotations/, JPEGImages/) or a COCO folder (annotations/instances_{split}.json)"
    )


def limit(ds: DetectionDataset, n: int | None, seed: int, what: str) -> DetectionDataset | Subset:
    """A seeded subset of ``n`` images of ``ds`` (in their order), or ``ds``."""
    if n is None or n >= len(ds):
        return ds
    g = torch.Generator().manual_seed(seed)
    keep = sorted(torch.randperm(len(ds), generator=g)[:n].tolist())
    log.info("%s: a subset of %d of %d images (seed %d)", what, n, len(ds), seed)
    return Subset(ds, keep)


def build_detector(cfg: DetectionConfig, num_classes: int) -> nn.Module:
    """The recipe's torchvision detector for ``num_classes`` (with the background)."""
    d = cfg.detector
    check_choice("detector", d.kind, DETECTORS)
    if d.kind == "faster_rcnn":
        return build_faster_rcnn(
            cfg.model,
            num_classes,
            weights=d.weights,
            trainable_layers=d.trainable_layers,
            frozen_bn=d.frozen_bn,
            fpn_channels=d.fpn_channels,
            representation_size=d.representation_size,
            min_size=d.min_size,
            max_size=d.max_size,
            attn=cfg.attn or None,
            model_kwargs=cfg.model_kwargs,
            box_score_thresh=d.score_thresh,
            attn_impl=cfg.attn_impl,
        )
    model = build_ssd(
        cfg.model,
        num_classes,
        attn=d.ssd_attn,
        attn_options=cfg.attn or None,
        attn_placement=d.attn_placement,
        size=d.size,
        width=d.width,
        weights=d.weights,
        model_kwargs=cfg.model_kwargs,
        score_thresh=d.score_thresh,
    )
    if cfg.attn_impl is not None:
        set_impl(model, cfg.attn_impl)
    return model


def check_supported(cfg: DetectionConfig) -> None:
    """Refuse, before a run folder is made, what detection runs do not take."""
    d = cfg.detector
    check_choice("detector", d.kind, DETECTORS)
    if d.kind == "ssd":
        check_ssd_arguments(cfg.model, attn=d.ssd_attn, attn_placement=d.attn_placement,
                            size=d.size)  # fmt: skip
    default = DetectorConfig()
    other = [
        f"detector.{name}={getattr(d, name)!r}"
        for kind, names in KIND_OPTIONS.items()
        if kind != d.kind
        for name in names
        if getattr(d, name) != getattr(default, name)
    ]
    if other:
        raise ValueError(f"detector.kind={d.kind!r} does not take {', '.join(other)}")
    for key, neutral in UNSUPPORTED.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value != neutral:
            raise ValueError(f"{key}={value!r} is not supported by detection runs")


@dataclass
class DetectionData:
    """A run's loaders, class names and steps per epoch."""

    train: DataLoader
    val: DataLoader
    classes: list[str]
    name: str
    steps: int
    skipped: int


def build_detection_data(cfg: DetectionConfig, dist: DistInfo) -> DetectionData:
    """The recipe's training and evaluation loaders, this process's share of each."""
    d = cfg.data
    train_ds = detection_dataset(d.path, d.train_split, train=True, flip=d.flip)
    val_ds = detection_dataset(d.path, d.val_split, train=False)
    if train_ds.classes != val_ds.classes:
        raise ValueError(f"training classes {train_ds.classes} differ from {val_ds.classes}")
    if d.batch_size % dist.world_size:
        raise ValueError(f"batch_size {d.batch_size} must divide by {dist.world_size} processes")
    kw = {
        "seed": cfg.run.seed,
        "workers": d.workers,
        "rank": dist.rank,
        "world_size": dist.world_size,
    }
    per = d.batch_size // dist.world_size
    train_sub = limit(train_ds, d.limit_train, d.limit_seed, "training")
    train = build_detection_loader(train_sub, per, train=True, **kw)
    val = build_detection_loader(
        limit(val_ds, d.limit_val, d.limit_seed, "evaluation"), per, train=False, **kw
    )
    if len(train) == 0:
        raise ValueError(f"batch_size {d.batch_size} exceeds the {len(train_sub)} training images")
    steps = len(train) if cfg.run.max_steps is None else min(len(train), cfg.run.max_steps)
    skipped = train_ds.num_skipped + val_ds.num_skipped
    return DetectionData(train, val, train_ds.classes, train_ds.name, steps, skipped)


def build_detection_parts(
    cfg: DetectionConfig, data: DetectionData, device: torch.device, dist: DistInfo
) -> TrainParts:
    """The detector (seeded by ``run.seed``) and its optimiser, schedule and scaler."""
    torch.manual_seed(cfg.run.seed)
    model: nn.Module = build_detector(cfg, len(data.classes) + 1)
    if cfg.run.sync_bn and dist.enabled:
        model = convert_sync_batchnorm(model, device)
    model = model.to(device)
    optimizer = build_optimizer(model, cfg)  # type: ignore[arg-type]
    scheduler = build_scheduler(optimizer, data.steps, cfg)  # type: ignore[arg-type]
    scaler = torch.amp.GradScaler("cuda") if cfg.run.amp == "fp16" else None
    train_model = model
    if dist.enabled:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return TrainParts(model, train_model, optimizer, scheduler, scaler, None, device)
