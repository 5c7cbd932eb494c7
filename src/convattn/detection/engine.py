"""``fit_detection``: a :class:`~convattn.detection.config.DetectionConfig` to a run folder.

The classification engine's ``fit`` computes cross-entropy in its loop; detectors
compute their own losses, so the epoch is a loop of its own
(:func:`~convattn.detection.loop.train_detection_epoch`), run by the engine's
:class:`~convattn.engine.job.Job` like a classification run: the resume checks and the
run folder with its lock, the checkpoint with every generator's state, SIGINT/SIGTERM
stops mid-epoch; with the engine's seeding per epoch, SGD and the per-step schedule,
AMP autocast and gradient scaling, DDP and progress display.

Each epoch trains, evaluates (every ``run.eval_every`` epochs and after the last: COCO
and VOC figures, see :mod:`convattn.detection.evaluate`), exports the best weights by
COCO mAP, writes the checkpoint with the epoch's record, then the record's line, as the
classification engine does; the record carries ``best_map`` so a resumed run knows it.
On the CPU with ``data.workers=0`` and the same threads, a resumed run ends with the
uninterrupted run's weights and records. Deviations from torchvision's reference: no
aspect-ratio grouping of batches, warm-up in epochs of the schedule (``warmup_epochs``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import set_epoch
from ..engine.checkpoint import (
    TrainState,
    export_safetensors,
)
from ..engine.distributed import DistInfo, barrier, broadcast_buffers
from ..engine.job import Job, finished_summary, run_fit
from ..engine.loop import SignalStop
from ..engine.progress import Progress
from ..engine.run import Run
from ..engine.runtime import seed_epoch
from ..engine.setup import TrainParts
from .config import DetectionConfig
from .evaluate import detection_metrics, predict_loader
from .loop import DetectionEpoch, train_detection_epoch
from .setup import DetectionData, build_detection_data, build_detection_parts, check_supported
from .summary import format_detection_table

__all__ = ["fit_detection"]

log = logging.getLogger("convattn")


def fit_detection(cfg: DetectionConfig, *, resume: str | Path | None = None) -> dict[str, Any]:
    """Train the recipe's detector; return its summary row (see :meth:`_Job.summary`).

    Args:
        cfg: the recipe; with ``resume``, the run's own (execution options may differ,
            see :mod:`convattn.engine.resume`).
        resume: a run folder or its checkpoint to continue.
    """
    check_supported(cfg)
    return run_fit(cfg, resume, DetectionConfig, _fit)


def _fit(cfg: DetectionConfig, run: Run, dist: DistInfo, device: torch.device, ckpt: dict | None):
    done = finished_summary(cfg, run, ckpt)
    if done is not None:
        return done
    data = build_detection_data(cfg, dist)
    job = _Job(cfg, run, dist, data, build_detection_parts(cfg, data, device, dist), TrainState())
    job.describe()
    return job.train(ckpt)


def _epoch_line(record: dict[str, Any], result: DetectionEpoch) -> str:
    line = f"train loss {result.losses.get('loss', math.nan):.4f}"
    if "val_map" in record:
        line += (f"  val mAP {record['val_map']:.1f} AP50 {record['val_map_50']:.1f}"
                 f" VOC07 {record['val_voc07_map']:.1f}")  # fmt: skip
    return f"{line}  {result.images_per_s:.1f} img/s"


@dataclass
class _Job(Job):
    """One detection run in progress."""

    cfg: DetectionConfig
    data: DetectionData
    parts: TrainParts

    def describe(self) -> None:
        """``dataset.json``: what tools reading the run without its data need."""
        path = self.run.dir / "dataset.json"
        if self.dist.is_main and not path.exists():
            info = {
                "task": "detection",
                "name": self.data.name,
                "classes": self.data.classes,
                "num_classes": len(self.data.classes) + 1,
            }
            path.write_text(json.dumps(info, indent=2) + "\n")

    def log_start(self) -> None:
        c, d = self.cfg, self.data
        params = sum(p.numel() for p in self.parts.model.parameters())
        log.info(
            "%s %s: %.2fM parameters, %s (%d classes), %d steps/epoch, lr %.4g, run folder %s",
            c.detector.kind,
            c.model,
            params / 1e6,
            d.name,
            len(d.classes),
            d.steps,
            c.lr,
            self.run.dir,
        )
        if d.skipped:
            log.warning("%d bad annotation records were skipped (see train.log)", d.skipped)

    def epoch(self, epoch: int, stop: SignalStop) -> None:
        """Train, evaluate, checkpoint and record epoch ``epoch`` (0-based)."""
        cfg, state = self.cfg, self.state
        seed_epoch(cfg.run.seed, epoch, self.dist.rank)
        set_epoch(self.data.train, epoch)
        desc = f"epoch {epoch + 1}/{cfg.schedule.epochs}"
        with Progress(self.data.steps, desc, enabled=self.show, initial=state.step) as bar:
            result = train_detection_epoch(
                self.parts,
                self.data.train,
                steps=self.data.steps,
                amp=cfg.run.amp,
                clip_grad=cfg.optim.clip_grad,
                resume=self.resumed_part(),
                stop=stop,
                progress=bar,
            )
        if result.stopped:
            self.save_stopped(result.partial)
        record = self.record(epoch, result.stats())
        self.finish_epoch(epoch, record)
        log.info("%s  %s", desc, _epoch_line(record, result))
        barrier()

    def record(self, epoch: int, stats: dict[str, float]) -> dict[str, Any]:
        """The metrics record of finished epoch ``epoch``, evaluated when it is due."""
        record: dict[str, Any] = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in stats.items()}}
        record["skipped_records"] = self.data.skipped
        last = epoch + 1 == self.cfg.schedule.epochs
        if last or (epoch + 1) % self.cfg.run.eval_every == 0:
            record.update(self.validate())
        record["best_map"] = self.state.record.get("best_map")
        if record.get("val_map") is not None and (
            record["best_map"] is None or record["val_map"] > record["best_map"]
        ):
            record["best_map"] = record["val_map"]
            self.export_best(record["val_map"])
        return record

    def validate(self) -> dict[str, Any]:
        broadcast_buffers(self.parts.model)  # the statistics rank 0 checkpoints
        pred = predict_loader(
            self.parts.model,
            self.data.val,
            self.parts.device,
            amp=self.cfg.run.amp,
            progress=self.show,
        )
        return {f"val_{k}": v for k, v in detection_metrics(pred, self.data.classes).items()}

    def export_best(self, value: float) -> None:
        if self.dist.is_main:
            export_safetensors(
                self.parts.model.state_dict(),
                self.run.best_path,
                model=self.cfg.model,
                map=f"{value:.4f}",
            )

    def summary(self) -> dict[str, Any]:
        """The run's row: backbone, detector, parameters, last COCO/VOC figures, speed."""
        cfg, rec = self.cfg, self.state.record
        row = {
            "task": "detection",
            "model": cfg.model,
            "detector": cfg.detector.kind,
            "params_m": sum(p.numel() for p in self.parts.model.parameters()) / 1e6,
            **{
                k: rec.get(f"val_{k}", math.nan)
                for k in ("map", "map_50", "map_75", "voc07_map", "voc_map")
            },
            "best_map": rec.get("best_map"),
            "train_images_per_s": rec.get("train_images_per_s", math.nan),
            "eval_images_per_s": rec.get("val_images_per_s", math.nan),
            "epochs": cfg.schedule.epochs,
            "skipped_records": self.data.skipped,
            "run_dir": str(self.run.dir),
        }
        if self.dist.is_main:
            (self.run.dir / "summary.json").write_text(json.dumps([row], indent=2) + "\n")
            (self.run.dir / "summary.md").write_text(format_detection_table([row]) + "\n")
        return row
