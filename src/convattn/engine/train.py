"""Training: one epoch, and ``fit`` (the whole recipe with checkpoints and a run folder).

Determinism: every epoch reseeds Python, NumPy and torch from ``(seed, epoch, rank)`` and
the loader shuffles by ``(seed, epoch)``, so a run resumed from a checkpoint written at
the end of epoch k repeats exactly what the uninterrupted run did (CPU, ``deterministic``,
``data.workers=0``; worker processes restart their augmentation streams on resume).
A SIGINT/SIGTERM stops at the next step and saves a checkpoint of the partial epoch;
resuming from it skips the batches already done.
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .checkpoint import (
    atomic_save,
    export_safetensors,
    get_rng_state,
    load_training_state,
    set_rng_state,
)
from .config import Config, config_to_dict
from .evaluate import autocast, move_batch
from .metrics import Meter, topk_correct

__all__ = [
    "SignalStop",
    "StopRequested",
    "TrainState",
    "export_best",
    "resolve_device",
    "restore_training_state",
    "save_training_state",
    "seed_epoch",
    "train_one_epoch",
]


class StopRequested(Exception):
    """Raised after a checkpoint was saved because SIGINT/SIGTERM asked to stop."""


@dataclass
class TrainState:
    """Where training stands: the next epoch, steps done in it, the best error so far."""

    epoch: int = 0
    step: int = 0
    best_top1_err: float = math.inf


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; valid: 'auto', 'cpu', 'cuda', 'cuda:N'")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but CUDA is not available")
    return torch.device(name)


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed every generator from (seed, epoch, rank)."""
    s = (seed * 1_000_003 + epoch * 7919 + rank) % 2**31
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


class SignalStop:
    """Turns SIGINT/SIGTERM into a flag checked between steps (a second signal aborts)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> SignalStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train_one_epoch(
    model: nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    cfg: Config,
    *,
    epoch: int,
    steps: int,
    skip: int = 0,
    scaler: torch.amp.GradScaler | None = None,
    ema: nn.Module | None = None,
    stop: SignalStop | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Train for ``steps`` batches (skipping the first ``skip``, already done before a
    resume). Returns mean loss, top-1/top-5 error (%) and images/s; ``"stopped_at"``
    is set when a signal stopped the epoch early."""
    model.train()
    meter = Meter()
    bar = tqdm(
        total=steps, initial=skip, desc=f"epoch {epoch + 1}", disable=not progress, leave=False
    )
    start, step, stopped_at = time.perf_counter(), 0, None
    for step, (images, labels) in enumerate(loader):
        if step >= steps:
            break
        if step < skip:
            continue
        images, labels = move_batch(images, device, cfg.run.channels_last), labels.to(device)
        with autocast(device, cfg.run.amp):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.optim.label_smoothing)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if cfg.optim.clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        top1, top5 = topk_correct(logits.detach(), labels)
        meter.update(len(labels), loss=loss.item() * len(labels), top1=top1, top5=top5)
        rate = meter.count / max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(
            loss=f"{meter.mean('loss'):.3f}",
            acc=f"{100 * meter.mean('top1'):.1f}",
            img_s=f"{rate:.0f}",
        )
        bar.update()
        if stop is not None and stop.requested:
            stopped_at = step + 1
            break
    bar.close()
    elapsed = time.perf_counter() - start
    total = meter.reduce()
    n = max(total.count, 1)
    out = {
        "loss": total.sums.get("loss", 0.0) / n,
        "top1_err": 100.0 * (1 - total.sums.get("top1", 0.0) / n),
        "top5_err": 100.0 * (1 - total.sums.get("top5", 0.0) / n),
        "images_per_s": total.count / max(elapsed, 1e-9),
        "lr": optimizer.param_groups[0]["lr"],
    }
    if stopped_at is not None:
        out["stopped_at"] = stopped_at
    return out


def save_training_state(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    ema: nn.Module | None,
    state: TrainState,
    cfg: Config,
) -> None:
    """Everything ``--resume`` needs, written atomically."""
    from .. import __version__

    atomic_save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": None if scaler is None else scaler.state_dict(),
            "ema": None if ema is None else ema.state_dict(),
            "epoch": state.epoch,
            "step": state.step,
            "best_top1_err": state.best_top1_err,
            "rng": get_rng_state(),
            "config": config_to_dict(cfg),
            "version": __version__,
        },
        path,
    )


def restore_training_state(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    ema: nn.Module | None,
) -> TrainState:
    ckpt = load_training_state(path)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    if ema is not None and ckpt.get("ema"):
        ema.load_state_dict(ckpt["ema"])
    set_rng_state(ckpt["rng"])
    return TrainState(ckpt["epoch"], ckpt["step"], ckpt["best_top1_err"])


def export_best(model: nn.Module, path: Path, cfg: Config, top1_err: float) -> None:
    export_safetensors(model.state_dict(), path, model=cfg.model, top1_err=f"{top1_err:.4f}")
