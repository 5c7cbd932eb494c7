"""``fit``: the paper's recipe from a :class:`~convattn.engine.config.Config` to a run
folder with checkpoints, per-epoch metrics and a Table-4-style summary.

Each epoch trains, evaluates (every ``run.eval_every`` epochs and at the end), exports
the best weights, writes the checkpoint (with the epoch's metrics record) and then
appends the record to ``metrics.jsonl``, so a run killed at any moment resumes from a
checkpoint whose record is either in the file already or appended on resume.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._version import code_record
from ..data import set_epoch
from ..models import profile
from .checkpoint import TrainState, export_safetensors
from .config import Config
from .distributed import DistInfo, barrier, broadcast_buffers
from .evaluate import evaluate, precise_bn
from .job import Job, StopRequested, finished_summary, run_fit
from .loop import SignalStop, StepOptions, train_one_epoch
from .progress import Progress
from .run import Run
from .runtime import seed_epoch
from .setup import RunData, TrainParts, build_data, build_model, build_parts, num_skipped

__all__ = ["StopRequested", "fit"]

log = logging.getLogger("convattn")


def fit(cfg: Config, *, resume: str | Path | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data`` and return the summary row (model, params,
    GFLOPs, top-1/top-5 error, throughput, run folder).

    Args:
        cfg: the recipe. With ``resume`` it must be the run's own recipe, differing at
            most in execution options (see :mod:`convattn.engine.resume`);
            :func:`~convattn.engine.resume.resume_config` builds it from the run.
        resume: a checkpoint file or a run folder to continue (its folder is reused).
    """
    return run_fit(cfg, resume, Config, _fit)


def _fit(cfg: Config, run: Run, dist: DistInfo, device: torch.device, ckpt: dict | None):
    done = finished_summary(cfg, run, ckpt)
    if done is not None:
        return done
    data = build_data(cfg, dist, progress=dist.is_main and cfg.run.progress)
    run.describe_dataset(data.info)
    job = _Job(cfg, run, dist, data, build_parts(cfg, data, device, dist), TrainState())
    return job.train(ckpt)


@dataclass
class _Job(Job):
    """One classification run in progress."""

    cfg: Config
    data: RunData
    parts: TrainParts

    def log_start(self) -> None:
        c, d = self.cfg, self.data
        params = sum(p.numel() for p in self.parts.model.parameters())
        log.info(
            "%s: %.2fM parameters, %s (%d classes), %d steps/epoch, lr %.4g, run folder %s",
            c.model, params / 1e6, d.info.name, d.info.num_classes, d.steps, c.lr, self.run.dir,
        )  # fmt: skip
        log.info("code: %s", code_record())  # read now, while the sources are the ones loaded

    def epoch(self, epoch: int, stop: SignalStop) -> None:
        """Train, evaluate, checkpoint and record epoch ``epoch`` (0-based)."""
        cfg, state = self.cfg, self.state
        seed_epoch(cfg.run.seed, epoch, self.dist.rank)
        set_epoch(self.data.train, epoch)
        desc = f"epoch {epoch + 1}/{cfg.schedule.epochs}"
        with Progress(self.data.steps, desc, enabled=self.show, initial=state.step) as bar:
            result = train_one_epoch(
                self.parts, self.data.train, StepOptions.from_config(cfg), epoch=epoch,
                steps=self.data.steps, resume=self.resumed_part(), stop=stop, progress=bar,
            )  # fmt: skip
        if result.stopped:
            self.save_stopped(result.partial)
        record = self.record(epoch, result.stats())
        self.finish_epoch(epoch, record)
        val = record.get("val_top1_err")
        shown = "" if val is None else f"  val err {val:.2f}% / {record['val_top5_err']:.2f}%"
        log.info("%s  train loss %.4f err %.2f%%%s  %.0f img/s", desc, result.loss,
                 result.top1_err, shown, result.images_per_s)  # fmt: skip
        barrier()

    def record(self, epoch: int, stats: dict[str, float]) -> dict[str, Any]:
        """The metrics record of finished epoch ``epoch``, evaluated when it is due."""
        record: dict[str, Any] = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in stats.items()}}
        skipped = num_skipped(self.data.train) + num_skipped(self.data.val)
        record["skipped_files"] = skipped
        if skipped:
            log.warning("%d unreadable image files skipped so far (see train.log)", skipped)
        last = epoch + 1 == self.cfg.schedule.epochs
        if last or (epoch + 1) % self.cfg.run.eval_every == 0:
            record.update(self.validate())
        return record

    def validate(self) -> dict[str, Any]:
        """Evaluate (after precise BN) and export the best weights; the ``val_*`` entries."""
        cfg, parts = self.cfg, self.parts
        broadcast_buffers(parts.model)  # the statistics rank 0 checkpoints
        kw = {"amp": cfg.run.amp, "channels_last": cfg.run.channels_last}
        if cfg.run.precise_bn_batches:
            precise_bn(parts.model, self.data.train, cfg.run.precise_bn_batches, parts.device,
                       channels_last=cfg.run.channels_last)  # fmt: skip
        val = evaluate(parts.model, self.data.val, parts.device, progress=self.show, **kw)
        out = {f"val_{k}": v for k, v in val.items()}
        if parts.ema is not None:
            ev = evaluate(parts.ema.module, self.data.val, parts.device, **kw)
            out.update({f"ema_val_{k}": v for k, v in ev.items()})
        if val["top1_err"] < self.state.best_top1_err:
            self.state.best_top1_err = val["top1_err"]
            if self.dist.is_main:
                export_safetensors(parts.model.state_dict(), self.run.best_path, model=cfg.model,
                                   top1_err=f"{val['top1_err']:.4f}")  # fmt: skip
        return out

    def summary(self) -> dict[str, Any]:
        """The run's Table-4 row (from the last epoch's record), written to its summary."""
        cfg, info, rec = self.cfg, self.data.info, self.state.record
        with torch.device("meta"):  # counting needs shapes only
            meta = build_model(cfg, info.num_classes)
        row = {
            "model": cfg.model,
            "params_m": sum(p.numel() for p in meta.parameters()) / 1e6,
            "gmacs": profile(meta, (3, info.img_size, info.img_size)).gmacs,
            "top1_err": rec.get("val_top1_err", math.nan),
            "top5_err": rec.get("val_top5_err", math.nan),
            "best_top1_err": self.state.best_top1_err,
            "train_images_per_s": rec.get("train_images_per_s", math.nan),
            "eval_images_per_s": rec.get("val_images_per_s", math.nan),
            "epochs": cfg.schedule.epochs,
            "skipped_files": rec.get("skipped_files", 0),
            "run_dir": str(self.run.dir),
            "code": code_record(),
        }
        self.run.write_summary([row])
        return row
