"""``fit``: the paper's recipe from a :class:`~convattn.engine.config.Config` to a run
folder with checkpoints, per-epoch metrics and a Table-4-style summary."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from ..data import build_dataset, build_loader, build_mix, set_epoch
from ..models import create_model, profile
from .config import Config, load_config
from .distributed import DistInfo, barrier, cleanup, init_distributed
from .evaluate import evaluate, precise_bn
from .optim import build_optimizer, build_scheduler
from .run import Run
from .sync_bn import convert_sync_batchnorm
from .train import (
    SignalStop,
    StopRequested,
    TrainState,
    export_best,
    resolve_device,
    restore_training_state,
    save_training_state,
    seed_epoch,
    train_one_epoch,
)

__all__ = ["build_data", "fit"]

log = logging.getLogger("convattn")


def build_data(cfg: Config, dist: DistInfo, *, progress: bool) -> tuple[Any, Any, Any]:
    """Training and validation loaders and the dataset info."""
    d = cfg.data
    common = {"img_size": d.img_size, "cache_dir": d.cache_dir, "progress": progress}
    train_ds, info = build_dataset(
        d.path, d.train_split, augment=d.augment, auto_augment=d.auto_augment, **common
    )
    common["img_size"] = info.img_size
    val_ds, _ = build_dataset(d.path, d.val_split, augment=d.augment, **common)
    if d.limit_train:
        train_ds = Subset(train_ds, range(min(d.limit_train, len(train_ds))))
    if d.limit_val:
        val_ds = Subset(val_ds, range(min(d.limit_val, len(val_ds))))
    if d.batch_size % dist.world_size:
        raise ValueError(
            f"batch_size {d.batch_size} must divide by the {dist.world_size} processes"
        )
    per_process = d.batch_size // dist.world_size
    mix = build_mix(info.num_classes, mixup_alpha=d.mixup, cutmix_alpha=d.cutmix)
    kw = {"workers": d.workers, "seed": cfg.run.seed, "distributed": dist.enabled}
    train_loader = build_loader(train_ds, per_process, train=True, mix=mix, **kw)
    val_loader = build_loader(val_ds, per_process, train=False, **kw)
    if len(train_loader) == 0:
        raise ValueError(f"batch_size {d.batch_size} exceeds the {len(train_ds)} training samples")
    return train_loader, val_loader, info


def _num_skipped(loader: Any) -> int:
    """Unreadable files the loader's dataset has left out so far (0 if it cannot tell)."""
    ds = loader.dataset
    while isinstance(ds, Subset):
        ds = ds.dataset
    return int(getattr(ds, "num_skipped", 0))


def _resume_path(resume: str | Path | None) -> Path | None:
    if resume is None:
        return None
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {path} does not exist")
    return path


def fit(cfg: Config, *, resume: str | Path | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data`` and return the summary row (model, params,
    GFLOPs, top-1/top-5 error, throughput, run folder).

    Args:
        cfg: the recipe.
        resume: a checkpoint file or a run folder to continue (its folder is reused).
    """
    device = resolve_device(cfg.run.device)
    dist = init_distributed(device)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    if cfg.run.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    progress = dist.is_main and cfg.run.progress
    folder = None
    if resume is not None:
        folder = Path(resume) if Path(resume).is_dir() else Path(resume).parent
    run = Run(cfg, main=dist.is_main, folder=folder)
    try:
        return _fit(cfg, device, dist, run, resume, progress)
    finally:
        run.close()
        cleanup()


def _fit(
    cfg: Config,
    device: torch.device,
    dist: DistInfo,
    run: Run,
    resume: str | Path | None,
    progress: bool,
) -> dict[str, Any]:
    train_loader, val_loader, info = build_data(cfg, dist, progress=progress)
    torch.manual_seed(cfg.run.seed)  # the same initial weights on every process
    model = create_model(cfg.model, num_classes=info.num_classes, **cfg.model_kwargs)
    if cfg.run.sync_bn and dist.enabled:
        model = convert_sync_batchnorm(model, device)
    fmt = torch.channels_last if cfg.run.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    steps = (
        len(train_loader)
        if cfg.run.max_steps is None
        else min(len(train_loader), cfg.run.max_steps)
    )
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, steps, cfg)
    scaler = torch.amp.GradScaler("cuda") if cfg.run.amp == "fp16" else None
    ema = None
    if cfg.run.ema_decay:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(cfg.run.ema_decay), use_buffers=True
        )
    state = TrainState()
    ckpt = _resume_path(resume)
    if ckpt is not None:
        state = restore_training_state(
            ckpt, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema
        )
        log.info("resumed from %s at epoch %d, step %d", ckpt, state.epoch + 1, state.step)
    train_model: nn.Module = model
    if dist.enabled:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.run.compile:
        train_model = torch.compile(train_model)
    params = sum(p.numel() for p in model.parameters())
    log.info(
        "%s: %.2fM parameters, %s (%d classes), %d steps/epoch, lr %.4g, run folder %s",
        cfg.model,
        params / 1e6,
        info.name,
        info.num_classes,
        steps,
        cfg.lr,
        run.dir,
    )
    val: dict[str, float] = {}
    train_stats: dict[str, float] = {}

    def save_checkpoint() -> None:
        if dist.is_main:
            save_training_state(
                run.checkpoint_path,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                scaler=scaler,
                ema=ema,
                state=state,
                cfg=cfg,
            )

    with SignalStop() as stop:
        for epoch in range(state.epoch, cfg.schedule.epochs):
            seed_epoch(cfg.run.seed, epoch, dist.rank)
            set_epoch(train_loader, epoch)
            skip, state.step = state.step, 0
            train_stats = train_one_epoch(
                train_model,
                train_loader,
                optimizer,
                scheduler,
                device,
                cfg,
                epoch=epoch,
                steps=steps,
                skip=skip,
                scaler=scaler,
                ema=ema,
                stop=stop,
                progress=progress,
            )
            if "stopped_at" in train_stats:
                state.epoch, state.step = epoch, int(train_stats["stopped_at"])
                save_checkpoint()
                log.info(
                    "stopped by signal; checkpoint saved to %s (resume with --resume %s)",
                    run.checkpoint_path,
                    run.dir,
                )
                raise StopRequested(str(run.checkpoint_path))
            last = epoch + 1 == cfg.schedule.epochs
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                **{f"train_{k}": v for k, v in train_stats.items()},
            }
            skipped = _num_skipped(train_loader) + _num_skipped(val_loader)
            record["skipped_files"] = skipped
            if skipped:
                log.warning("%d unreadable image files skipped so far (see train.log)", skipped)
            if last or (epoch + 1) % cfg.run.eval_every == 0:
                if cfg.run.precise_bn_batches:
                    precise_bn(
                        model,
                        train_loader,
                        cfg.run.precise_bn_batches,
                        device,
                        channels_last=cfg.run.channels_last,
                    )
                val = evaluate(
                    model,
                    val_loader,
                    device,
                    amp=cfg.run.amp,
                    channels_last=cfg.run.channels_last,
                    progress=progress,
                )
                record.update({f"val_{k}": v for k, v in val.items()})
                if ema is not None:
                    ev = evaluate(
                        ema.module,
                        val_loader,
                        device,
                        amp=cfg.run.amp,
                        channels_last=cfg.run.channels_last,
                    )
                    record.update({f"ema_val_{k}": v for k, v in ev.items()})
                if val["top1_err"] < state.best_top1_err:
                    state.best_top1_err = val["top1_err"]
                    if dist.is_main:
                        export_best(model, run.best_path, cfg, val["top1_err"])
            run.log_metrics(record)
            log.info(
                "epoch %d/%d  train loss %.4f err %.2f%%  %s  %.0f img/s",
                epoch + 1,
                cfg.schedule.epochs,
                train_stats["loss"],
                train_stats["top1_err"],
                f"val err {val['top1_err']:.2f}% / {val['top5_err']:.2f}%"
                if "top1_err" in val
                else "",
                train_stats["images_per_s"],
            )
            state.epoch = epoch + 1
            save_checkpoint()
            barrier()
    size = info.img_size
    with torch.device("meta"):
        meta_model = create_model(cfg.model, num_classes=info.num_classes, **cfg.model_kwargs)
    row = {
        "model": cfg.model,
        "params_m": params / 1e6,
        "gmacs": profile(meta_model, (3, size, size)).gmacs,
        "top1_err": val.get("top1_err", math.nan),
        "top5_err": val.get("top5_err", math.nan),
        "best_top1_err": state.best_top1_err,
        "train_images_per_s": train_stats.get("images_per_s", math.nan),
        "eval_images_per_s": val.get("images_per_s", math.nan),
        "epochs": cfg.schedule.epochs,
        "skipped_files": _num_skipped(train_loader) + _num_skipped(val_loader),
        "run_dir": str(run.dir),
    }
    run.write_summary([row])
    return row


def fit_from_file(
    path: str | Path | None, overrides: dict[str, Any] | None = None, **kw: Any
) -> dict[str, Any]:
    """Convenience: :func:`fit` on a YAML recipe with dotted overrides."""
    return fit(load_config(path, overrides), **kw)
