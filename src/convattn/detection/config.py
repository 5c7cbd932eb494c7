"""The detection recipe: the training engine's sections with a detector and its data.

:class:`DetectionConfig` reuses :mod:`convattn.engine.config`'s optimiser, schedule and
run sections (and their strict YAML and command-line handling), with a ``detector``
section (the torchvision detector and its backbone options) and a detection ``data``
section. Defaults follow torchvision's detection reference: SGD with momentum 0.9,
weight decay 1e-4 and 0.02 for 16 images (``base_lr`` 0.32 per 256), decayed x0.1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.config import RECIPES, OptimConfig, RunConfig, ScheduleConfig, opt, scaled_lr
from ..engine.recipes import packaged_file

__all__ = [
    "DETECTION_RECIPES",
    "DETECTORS",
    "KIND_OPTIONS",
    "UNSUPPORTED",
    "DetectionConfig",
    "DetectionDataConfig",
    "DetectorConfig",
    "detection_recipe",
]

DETECTORS = ("faster_rcnn", "ssd")
#: Recipe keys of the classification engine that detection does not apply, at their
#: neutral values; another value is refused rather than ignored.
UNSUPPORTED = {
    "optim.label_smoothing": 0.0,
    "run.ema_decay": None,
    "run.precise_bn_batches": 0,
    "run.compile": False,
    "run.channels_last": False,
}
#: The detector options only one kind takes; the other kind refuses them at a value
#: other than the default rather than ignoring them.
KIND_OPTIONS = {
    "faster_rcnn": (
        "trainable_layers",
        "frozen_bn",
        "min_size",
        "max_size",
        "fpn_channels",
        "representation_size",
    ),
    "ssd": ("size", "ssd_attn", "attn_placement", "width"),
}
#: Packaged detection recipes (``convattn detect train --config demo``).
DETECTION_RECIPES = RECIPES / "detection"


def detection_recipe(path: str | Path) -> Path:
    """``path`` itself, or the packaged detection recipe of that name ("demo")."""
    return packaged_file(path, DETECTION_RECIPES, "detection recipe")


@dataclass
class DetectorConfig:
    """Which torchvision detector, and how its backbone is built."""

    kind: str = opt("faster_rcnn", "'faster_rcnn' (with an FPN) or 'ssd'", flag="--detector")
    weights: str | None = opt(
        None, "classification weights for the backbone (ours, the CBAM authors', torchvision's)"
    )
    trainable_layers: int | None = opt(
        None, "backbone units trained, from the last stage (default 3 with weights, else all)"
    )
    frozen_bn: bool | None = opt(None, "frozen BatchNorm in the backbone (default: with weights)")
    min_size: int = opt(800, "Faster R-CNN: shorter image side after resizing")
    max_size: int = opt(1333, "Faster R-CNN: longest image side after resizing")
    fpn_channels: int = opt(256, "Faster R-CNN: channels of the feature pyramid")
    representation_size: int = opt(1024, "Faster R-CNN: width of the box head")
    size: int = opt(300, "SSD: square input side")
    ssd_attn: str | None = opt(None, "SSD: attention added by placement ('cbam', 'se')")
    attn_placement: str = opt("heads", "SSD: 'heads' (on every predicted map) or 'stages' (VGG)")
    width: float = opt(1.0, "SSD VGG-16: channel multiplier (1.0 is VGG-16)")
    score_thresh: float = opt(0.05, "detections kept above this score at evaluation")


@dataclass
class DetectionDataConfig:
    """Detection data and its loaders."""

    path: str = opt(
        "synthetic",
        "'synthetic[:train=N,val=N,img_size=S,classes=K,objects=M,seed=X]', "
        "'composed:objects=PATH,backgrounds=PATH[,train=N,val=N,img_size=S,objects_max=M,"
        "seed=X]' (object photos pasted on scenes), a VOC folder (Annotations/) or a COCO "
        "folder (annotations/instances_<split>.json, <split>/)",
        flag="--data",
    )
    batch_size: int = opt(4, "global batch size (split across processes)")
    workers: int = opt(0, "data-loading processes per training process")
    flip: bool = opt(True, "random horizontal flips in training")
    train_split: str = opt("train", "training split (VOC: 'trainval'; COCO: 'train2017')")
    val_split: str = opt("val", "evaluation split (VOC: 'test'; COCO: 'val2017')")
    limit_train: int | None = opt(None, "a seeded subset of N training images")
    limit_val: int | None = opt(None, "a seeded subset of N evaluation images")
    limit_seed: int = opt(0, "which subset limit_train/limit_val take")


def _optim() -> OptimConfig:
    return OptimConfig(base_lr=0.32)


def _schedule() -> ScheduleConfig:
    return ScheduleConfig(epochs=26, milestones=[16, 22])


@dataclass
class DetectionConfig:
    """A whole detection recipe (``convattn detect train``)."""

    model: str = opt(
        "resnet50_cbam", "backbone: a registered name (see `convattn models`); SSD also 'vgg16'"
    )
    attn: dict[str, Any] = opt(
        help="JSON of the backbone attention's options (SSD: of detector.ssd_attn)", factory=dict
    )
    attn_impl: str | None = opt(None, "attention implementation: 'auto', 'eager' or 'fused'")
    model_kwargs: dict[str, Any] = opt(help="JSON of other backbone arguments", factory=dict)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    data: DetectionDataConfig = field(default_factory=DetectionDataConfig)
    optim: OptimConfig = field(default_factory=_optim)
    schedule: ScheduleConfig = field(default_factory=_schedule)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def lr(self) -> float:
        """The learning rate used: ``optim.lr`` or ``base_lr * batch_size / 256``."""
        return scaled_lr(self.optim, self.data.batch_size)
