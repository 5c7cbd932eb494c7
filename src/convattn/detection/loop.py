"""One detection training epoch: the detector's own losses, summed, one SGD step each.

Determinism and stopping are the classification loop's (:mod:`convattn.engine.loop`):
the generators are reseeded per epoch by the engine, a signal stops the epoch after the
current step, and a resumed epoch skips the steps done, restores the generators' state
of the moment it stopped and continues its running sums.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ..engine.evaluate import autocast
from ..engine.loop import PartialEpoch, SignalStop, optimizer_step, resumable_batches
from ..engine.metrics import Meter
from ..engine.progress import Progress
from ..engine.setup import TrainParts
from .data import Target

__all__ = ["DetectionEpoch", "train_detection_epoch", "training_targets"]


@dataclass
class DetectionEpoch:
    """An epoch's mean losses (``loss`` and each of the detector's), images/s and the
    learning rate; ``stopped`` when a signal ended it (see ``partial``)."""

    losses: dict[str, float]
    images_per_s: float
    lr: float
    partial: PartialEpoch
    stopped: bool = False

    def stats(self) -> dict[str, float]:
        return {**self.losses, "images_per_s": self.images_per_s, "lr": self.lr}


def training_targets(targets: list[Target], device: torch.device) -> list[Target]:
    """Boxes and labels the detector learns from (crowd/difficult objects left out)."""
    out = []
    for t in targets:
        keep = (
            t["iscrowd"] == 0 if "iscrowd" in t else torch.ones_like(t["labels"], dtype=torch.bool)
        )
        out.append({"boxes": t["boxes"][keep].to(device), "labels": t["labels"][keep].to(device)})
    return out


def _step(parts: TrainParts, images: list, targets: list, amp: str, clip: float | None):
    with autocast(parts.device, amp):
        losses = parts.train_model(images, targets)
    loss = sum(v.float() for v in losses.values())
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"loss is {loss.item()} ({ {k: float(v) for k, v in losses.items()} })"
        )
    optimizer_step(parts, loss, clip)
    return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in losses.items()}}


def train_detection_epoch(
    parts: TrainParts,
    loader: Any,
    *,
    steps: int,
    amp: str = "none",
    clip_grad: float | None = None,
    resume: PartialEpoch | None = None,
    stop: SignalStop | None = None,
    progress: Progress | None = None,
) -> DetectionEpoch:
    """Train ``steps`` batches of ``loader`` (after the ``resume.steps`` done before an
    interruption; ``resume.meter`` on the main process only); stops when ``stop`` asks."""
    parts.train_model.train()
    skip = 0 if resume is None else resume.steps
    meter = Meter() if resume is None else resume.meter
    start, done, stopped = time.perf_counter(), skip, False
    for step, (images, targets) in resumable_batches(loader, steps, resume):
        images = [im.to(parts.device, non_blocking=True) for im in images]
        losses = _step(parts, images, training_targets(targets, parts.device), amp, clip_grad)
        meter.update(len(images), **{k: v * len(images) for k, v in losses.items()})
        done = step + 1
        if progress is not None:
            progress.update(loss=f"{meter.mean('loss'):.3f}")
        if stop is not None and stop.requested:
            stopped = True
            break
    elapsed = time.perf_counter() - start
    total = meter.reduce()
    resumed = 0 if resume is None else resume.meter.count
    return DetectionEpoch(
        {k: total.mean(k) for k in total.sums},
        (total.count - resumed) / max(elapsed, 1e-9),
        parts.optimizer.param_groups[0]["lr"],
        PartialEpoch(done, total),
        stopped,
    )
