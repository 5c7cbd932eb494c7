"""A detection recipe's parts: its datasets (by the ``data.path`` they are named with)
and its detector."""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.utils.data import Subset

from .._validate import check_choice
from ..data import find_data
from ..layers import set_impl
from .config import DETECTORS, DetectionConfig
from .data import DetectionDataset, synthetic_detection
from .faster_rcnn import build_faster_rcnn
from .readers import read_coco, read_voc
from .ssd import build_ssd

__all__ = ["build_detector", "detection_dataset", "limit", "synthetic_options"]

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
    root = find_data(path)
    if (root / "Annotations").is_dir():
        return read_voc(root, split, flip=train and flip)
    ann = root / "annotations" / f"instances_{split}.json"
    if ann.is_file():
        return read_coco(ann, root / split, flip=train and flip)
    raise FileNotFoundError(
        f"no detection data at {path!r}: expected 'synthetic[:options]', a VOC folder "
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
