"""``fit_detection``: a :class:`~convattn.detection.config.DetectionConfig` to a run folder.

The classification engine's ``fit`` computes cross-entropy in its loop; detectors
compute their own losses, so this is a loop of its own on the engine's parts: the run
folder and its lock (:class:`~convattn.engine.run.Run`), seeding per epoch
(:func:`~convattn.engine.runtime.seed_epoch`), SGD and the per-step schedule
(:mod:`convattn.engine.optim`), atomic checkpoints with every generator's state
(:mod:`convattn.engine.checkpoint`), resume rules (:mod:`convattn.engine.resume`),
SIGINT/SIGTERM stops mid-epoch (:class:`~convattn.engine.loop.SignalStop`), AMP
autocast and gradient scaling, DDP and progress display.

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
from torch import nn
from torch.utils.data import DataLoader

from .._validate import check_choice
from ..data import set_epoch
from ..engine.checkpoint import (
    TrainState,
    export_safetensors,
    get_rng_state,
    load_training_state,
    restore_training_state,
    save_training_state,
)
from ..engine.distributed import DistInfo, barrier, cleanup, init_distributed
from ..engine.fit import StopRequested
from ..engine.loop import PartialEpoch, SignalStop
from ..engine.metrics import Meter
from ..engine.optim import build_optimizer, build_scheduler
from ..engine.progress import Progress
from ..engine.resume import check_resume, checkpoint_file, saved_config
from ..engine.run import Run
from ..engine.runtime import configure, seed_epoch
from ..engine.setup import TrainParts
from ..engine.sync_bn import convert_sync_batchnorm
from .config import DETECTORS, UNSUPPORTED, DetectionConfig
from .data import build_detection_loader
from .evaluate import detection_metrics, predict_loader
from .loop import DetectionEpoch, train_detection_epoch
from .setup import build_detector, detection_dataset, limit
from .ssd import PLACEMENTS

__all__ = ["DetectionData", "fit_detection"]

log = logging.getLogger("convattn")


def check_supported(cfg: DetectionConfig) -> None:
    """Refuse, before a run folder is made, what detection runs do not take."""
    check_choice("detector", cfg.detector.kind, DETECTORS)
    check_choice("attn_placement", cfg.detector.attn_placement, PLACEMENTS)
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


def fit_detection(cfg: DetectionConfig, *, resume: str | Path | None = None) -> dict[str, Any]:
    """Train the recipe's detector; return its summary row (see :meth:`_Job.summary`).

    Args:
        cfg: the recipe; with ``resume``, the run's own (execution options may differ,
            see :mod:`convattn.engine.resume`).
        resume: a run folder or its checkpoint to continue.
    """
    check_supported(cfg)
    ckpt, folder, changes = None, None, []
    if resume is not None:
        path = checkpoint_file(resume)
        ckpt, folder = load_training_state(path), path.parent
        saved = saved_config(ckpt, DetectionConfig)
        changes = check_resume(saved, cfg, done_epochs=ckpt["epoch"])
    device = configure(cfg.run)
    dist = init_distributed(device)
    try:
        run = Run(cfg, main=dist.is_main, folder=folder, resume=ckpt is not None)  # type: ignore[arg-type]
        try:
            for change in changes:
                log.info("resume: %s", change)
            return _fit(cfg, run, dist, device, ckpt)
        finally:
            run.close()
    finally:
        cleanup()


def _fit(cfg: DetectionConfig, run: Run, dist: DistInfo, device: torch.device, ckpt: dict | None):
    summary = run.dir / "summary.json"
    if ckpt is not None and ckpt["epoch"] >= cfg.schedule.epochs and summary.is_file():
        log.info("run %s already finished (%d epochs); nothing to train", run.dir, ckpt["epoch"])
        return json.loads(summary.read_text())[0]
    data = build_detection_data(cfg, dist)
    job = _Job(cfg, run, dist, data, build_detection_parts(cfg, data, device, dist), TrainState())
    job.describe()
    if ckpt is not None:
        job.state = restore_training_state(ckpt, job.parts)
        run.append_missing(job.state.record)
        log.info("resumed %s at epoch %d, step %d", run.dir, job.state.epoch + 1, job.state.step)
    job.log_start()
    with SignalStop() as stop:
        for epoch in range(job.state.epoch, cfg.schedule.epochs):
            job.epoch(epoch, stop)
    return job.summary()


#: (heading, key, format) of a detection run's summary table.
SUMMARY_COLUMNS = [
    ("backbone", "model", "{}"),
    ("detector", "detector", "{}"),
    ("params (M)", "params_m", "{:.2f}"),
    ("mAP", "map", "{:.1f}"),
    ("AP50", "map_50", "{:.1f}"),
    ("AP75", "map_75", "{:.1f}"),
    ("VOC07 mAP", "voc07_map", "{:.1f}"),
    ("VOC mAP", "voc_map", "{:.1f}"),
    ("train img/s", "train_images_per_s", "{:.1f}"),
    ("eval img/s", "eval_images_per_s", "{:.1f}"),
]


def format_detection_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of detection summaries (COCO figures and VOC mAP in percent)."""
    lines = ["| " + " | ".join(c[0] for c in SUMMARY_COLUMNS) + " |"]
    lines.append("| --- | --- |" + " ---: |" * (len(SUMMARY_COLUMNS) - 2))
    for row in rows:
        cells = []
        for _, key, fmt in SUMMARY_COLUMNS:
            v = row.get(key)
            bad = v is None or (isinstance(v, float) and not math.isfinite(v))
            cells.append("-" if bad else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class _Job:
    """One detection run in progress."""

    cfg: DetectionConfig
    run: Run
    dist: DistInfo
    data: DetectionData
    parts: TrainParts
    state: TrainState

    @property
    def show(self) -> bool:
        return self.dist.is_main and self.cfg.run.progress

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

    def resumed_part(self) -> PartialEpoch | None:
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
            self.stopped(result)
        record = self.record(epoch, result.stats())
        state.epoch, state.step, state.partial_sums, state.partial_rng = epoch + 1, 0, None, None
        state.record = record
        self.checkpoint()  # before the metrics line, as the classification engine
        self.run.log_metrics(record)
        shown = (
            ""
            if "val_map" not in record
            else (
                f"  val mAP {record['val_map']:.1f} AP50 {record['val_map_50']:.1f}"
                f" VOC07 {record['val_voc07_map']:.1f}"
            )
        )
        log.info(
            "%s  train loss %.4f%s  %.1f img/s",
            desc,
            result.losses.get("loss", math.nan),
            shown,
            result.images_per_s,
        )
        barrier()

    def stopped(self, result: DetectionEpoch) -> None:
        m = result.partial.meter
        self.state.step = result.partial.steps
        self.state.partial_sums = {"count": m.count, "sums": m.sums}
        self.state.partial_rng = get_rng_state()
        self.checkpoint()
        log.info(
            "stopped by signal; checkpoint saved to %s (resume with --resume %s)",
            self.run.checkpoint_path,
            self.run.dir,
        )
        raise StopRequested(str(self.run.checkpoint_path))

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

    def checkpoint(self) -> None:
        if self.dist.is_main:
            save_training_state(self.run.checkpoint_path, self.parts, self.state, self.cfg)  # type: ignore[arg-type]

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
