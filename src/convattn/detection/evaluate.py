"""Scoring a detector: predictions over a loader, COCO and VOC metrics, saved runs.

:func:`predict_loader` runs the detector over a loader (each process its share, gathered
on every process when distributed), :func:`detection_metrics` turns the predictions into
COCO's twelve figures (through pycocotools) and VOC's mAP at IoU 0.5 with both methods
and per class, and :func:`evaluate_run` does both for a run folder's weights.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from ..engine.evaluate import autocast
from ..engine.progress import Progress
from ..engine.recipes import load_config
from ..engine.runtime import resolve_device
from ..models.weights import CheckpointError, read_state_dict
from .config import DetectionConfig
from .data import Target, build_detection_loader
from .metrics import coco_evaluate, voc_evaluate
from .setup import build_detector, detection_dataset, limit

__all__ = [
    "Predictions",
    "detection_metrics",
    "evaluate_run",
    "load_run_detector",
    "predict_loader",
    "run_config",
]


@dataclass
class Predictions:
    """Per image (by ``image_id`` order): its target, the detector's output and its size."""

    targets: list[Target]
    outputs: list[Target]
    sizes: list[tuple[int, int]]
    images_per_s: float


def _gather(rows: list[tuple[int, Target, Target, tuple[int, int]]]) -> list:
    """Every process's rows, each image once, by image id."""
    if dist.is_available() and dist.is_initialized():
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, rows)
        rows = [r for part in parts for r in part]
    return sorted({r[0]: r for r in rows}.values(), key=lambda r: r[0])


@torch.no_grad()
def predict_loader(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    *,
    amp: str = "none",
    progress: bool = False,
) -> Predictions:
    """The detector's outputs (on the CPU) for every image of ``loader``."""
    was_training = model.training
    model.eval()
    rows, start, n = [], time.perf_counter(), 0
    total = len(loader) if hasattr(loader, "__len__") else 0
    with Progress(total, "eval", enabled=progress) as bar:
        for images, targets in loader:
            with autocast(device, amp):
                outs = model([im.to(device) for im in images])
            for im, t, o in zip(images, targets, outs, strict=True):
                o = {
                    k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
                    for k, v in o.items()
                }
                rows.append((int(t["image_id"]), t, o, (im.shape[-2], im.shape[-1])))
            n += len(images)
            bar.update()
    elapsed = time.perf_counter() - start
    model.train(was_training)
    rows = _gather(rows)
    return Predictions(
        [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows], n / max(elapsed, 1e-9)
    )


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x


def detection_metrics(pred: Predictions, classes: list[str]) -> dict[str, Any]:
    """COCO's figures (``map``, ``map_50``, ... in percent), VOC mAP at IoU 0.5 by the
    11-point (``voc07_map``) and area (``voc_map``) methods, and per-class AP (area, %)."""
    coco = coco_evaluate(pred.targets, pred.outputs, sizes=pred.sizes, num_classes=len(classes) + 1)
    out: dict[str, Any] = {k: 100 * v if v >= 0 else v for k, v in coco.as_dict().items()}
    voc07 = voc_evaluate(pred.targets, pred.outputs, classes, method="11point")
    voc = voc_evaluate(pred.targets, pred.outputs, classes, method="area")
    out["voc07_map"], out["voc_map"] = 100 * voc07.map, 100 * voc.map
    out["ap_per_class"] = {c: _finite(100 * v) for c, v in voc.per_class.items()}
    out["images_per_s"] = pred.images_per_s
    return out


def run_config(run_dir: str | Path) -> tuple[DetectionConfig, list[str]]:
    """A detection run's recipe (``config.yaml``) and class names (``dataset.json``)."""
    folder = Path(run_dir)
    for name in ("config.yaml", "dataset.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is no run folder (no {name})")
    info = json.loads((folder / "dataset.json").read_text())
    if info.get("task") != "detection":
        raise ValueError(f"{folder} is a classification run, not a detection run")
    return load_config(folder / "config.yaml", cls=DetectionConfig), list(info["classes"])


def load_run_detector(
    run_dir: str | Path, *, last: bool = False
) -> tuple[nn.Module, DetectionConfig, list[str]]:
    """The detector of a run folder with its best weights (``last``: the checkpoint's),
    its recipe and its class names."""
    run_dir = Path(run_dir)
    cfg, classes = run_config(run_dir)
    path = run_dir / ("checkpoint.pt" if last else "best.safetensors")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (train the run, or pass --last)")
    d = cfg.detector  # the layout the weights were trained with, without fetching weights
    d.frozen_bn = d.frozen_bn if d.frozen_bn is not None else d.weights is not None
    d.weights = None
    model = build_detector(cfg, len(classes) + 1)
    try:
        model.load_state_dict(read_state_dict(path))
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(f"{path}: does not fit the run's detector ({first})") from None
    return model.eval(), cfg, classes


def _device(name: str | None, run_device: str) -> torch.device:
    """``name``, or the run's device when this machine has it, else the CPU."""
    if name is not None:
        return resolve_device(name)
    try:
        return resolve_device(run_device)
    except ValueError:  # trained on CUDA, scored where there is none
        return torch.device("cpu")


def evaluate_run(
    run_dir: str | Path,
    *,
    data: str | None = None,
    split: str | None = None,
    batch_size: int = 4,
    workers: int = 0,
    last: bool = False,
    device: str | None = None,
) -> dict[str, Any]:
    """COCO and VOC metrics of a run folder's weights on its (or ``data``'s) evaluation
    split, on ``device`` (default: the run's when available, else the CPU). On the run's
    own data and evaluation split, ``data.limit_val`` picks the same subset as in
    training, so the figures are those of its records; another split is scored whole."""
    model, cfg, classes = load_run_detector(run_dir, last=last)
    split = split or cfg.data.val_split
    ds = detection_dataset(data or cfg.data.path, split, train=False)
    if ds.classes != classes:
        raise ValueError(f"the data's classes {ds.classes} are not the run's {classes}")
    scored: Dataset[Any] = ds
    if (data or cfg.data.path) == cfg.data.path and split == cfg.data.val_split:
        scored = limit(ds, cfg.data.limit_val, cfg.data.limit_seed, "evaluation")
    loader = build_detection_loader(scored, batch_size, train=False, workers=workers)
    dev = _device(device, cfg.run.device)
    amp = "none" if cfg.run.amp == "fp16" and dev.type != "cuda" else cfg.run.amp
    metrics = detection_metrics(predict_loader(model.to(dev), loader, dev, amp=amp), classes)
    return {
        "model": cfg.model,
        "detector": cfg.detector.kind,
        "data": data or cfg.data.path,
        "split": split,
        "weights": "checkpoint.pt" if last else "best.safetensors",
        "device": str(dev),
        "images": len(scored),  # type: ignore[arg-type]
        **metrics,
    }
