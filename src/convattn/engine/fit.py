"""``fit``: the paper's recipe from a :class:`~convattn.engine.config.Config` to a run
folder with checkpoints, per-epoch metrics and a Table-4-style summary.

Each epoch trains, evaluates (every ``run.eval_every`` epochs and at the end), exports
the best weights, writes the checkpoint (with the epoch's metrics record) and then
appends the record to ``metrics.jsonl``, so a run killed at any moment resumes from a
checkpoint whose record is either in the file already or appended on resume.
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
from ..models import profile
from .checkpoint import (
    TrainState,
    export_safetensors,
    get_rng_state,
    load_training_state,
    restore_training_state,
    save_training_state,
)
from .config import Config
from .distributed import DistInfo, barrier, cleanup, init_distributed
from .evaluate import evaluate, precise_bn
from .loop import PartialEpoch, SignalStop, StepOptions, train_one_epoch
from .metrics import Meter
from .progress import Progress
from .resume import check_resume, checkpoint_file, saved_config
from .run import Run
from .runtime import configure, seed_epoch
from .setup import RunData, TrainParts, build_data, build_model, build_parts, num_skipped

__all__ = ["StopRequested", "fit"]

log = logging.getLogger("convattn")


class StopRequested(Exception):
    """Raised after a checkpoint was saved because SIGINT/SIGTERM asked to stop."""


def fit(cfg: Config, *, resume: str | Path | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data`` and return the summary row (model, params,
    GFLOPs, top-1/top-5 error, throughput, run folder).

    Args:
        cfg: the recipe. With ``resume`` it must be the run's own recipe, differing at
            most in execution options (see :mod:`convattn.engine.resume`);
            :func:`~convattn.engine.resume.resume_config` builds it from the run.
        resume: a checkpoint file or a run folder to continue (its folder is reused).
    """
    ckpt, folder, changes = None, None, []
    if resume is not None:
        path = checkpoint_file(resume)
        ckpt, folder = load_training_state(path), path.parent
        changes = check_resume(saved_config(ckpt), cfg, done_epochs=ckpt["epoch"])
    device = configure(cfg.run)
    dist = init_distributed(device)
    try:
        run = Run(cfg, main=dist.is_main, folder=folder, resume=ckpt is not None)
        try:
            for change in changes:
                log.info("resume: %s", change)
            return _fit(cfg, run, dist, device, ckpt)
        finally:
            run.close()
    finally:
        cleanup()


def _fit(cfg: Config, run: Run, dist: DistInfo, device: torch.device, ckpt: dict | None):
    summary = run.dir / "summary.json"
    if ckpt is not None and ckpt["epoch"] >= cfg.schedule.epochs and summary.is_file():
        log.info("run %s already finished (%d epochs); nothing to train", run.dir, ckpt["epoch"])
        return json.loads(summary.read_text())[0]
    data = build_data(cfg, dist, progress=dist.is_main and cfg.run.progress)
    run.describe_dataset(data.info)
    job = _Job(cfg, run, dist, data, build_parts(cfg, data, device, dist), TrainState())
    if ckpt is not None:
        job.state = restore_training_state(ckpt, job.parts)
        run.append_missing(job.state.record)
        log.info("resumed %s at epoch %d, step %d", run.dir, job.state.epoch + 1, job.state.step)
    job.log_start()
    with SignalStop() as stop:
        for epoch in range(job.state.epoch, cfg.schedule.epochs):
            job.epoch(epoch, stop)
    return job.summary()


@dataclass
class _Job:
    """One run in progress: its recipe, folder, processes, data, model and state."""

    cfg: Config
    run: Run
    dist: DistInfo
    data: RunData
    parts: TrainParts
    state: TrainState

    @property
    def show(self) -> bool:
        return self.dist.is_main and self.cfg.run.progress

    def log_start(self) -> None:
        c, d = self.cfg, self.data
        params = sum(p.numel() for p in self.parts.model.parameters())
        log.info(
            "%s: %.2fM parameters, %s (%d classes), %d steps/epoch, lr %.4g, run folder %s",
            c.model, params / 1e6, d.info.name, d.info.num_classes, d.steps, c.lr, self.run.dir,
        )  # fmt: skip

    def resumed_part(self) -> PartialEpoch | None:
        """The stopped epoch to continue (its sums and generators: main process only)."""
        s = self.state
        if not s.step:
            return None
        if not self.dist.is_main:
            return PartialEpoch(s.step, Meter())
        return PartialEpoch(s.step, s.partial_meter(), s.partial_rng)

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
            m = result.partial.meter
            state.step, state.partial_sums = (
                result.partial.steps,
                {"count": m.count, "sums": m.sums},
            )
            state.partial_rng = get_rng_state()
            self.checkpoint()
            log.info("stopped by signal; checkpoint saved to %s (resume with --resume %s)",
                     self.run.checkpoint_path, self.run.dir)  # fmt: skip
            raise StopRequested(str(self.run.checkpoint_path))
        record = self.record(epoch, result.stats())
        state.epoch, state.step, state.partial_sums, state.partial_rng = epoch + 1, 0, None, None
        state.record = record
        self.checkpoint()  # before the metrics line: see the module docstring
        self.run.log_metrics(record)
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

    def checkpoint(self) -> None:
        if self.dist.is_main:
            save_training_state(self.run.checkpoint_path, self.parts, self.state, self.cfg)

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
        }
        self.run.write_summary([row])
        return row
