"""One training epoch, and stopping cleanly on SIGINT/SIGTERM.

Determinism: :func:`convattn.engine.runtime.seed_epoch` reseeds every generator at the
start of each epoch and the loader shuffles by ``(seed, epoch)``, so a run resumed at an
epoch boundary repeats what the uninterrupted run did (CPU, same threads,
``data.workers=0``; worker processes restart their augmentation streams on resume). A
signal stops the epoch after the current step; resuming that partial epoch skips the
steps already done, restores the generators' state of the moment it stopped and
continues the epoch's running sums, so the epoch's figures are those of one whole pass.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import set_rng_state
from .config import Config
from .evaluate import autocast, move_batch
from .metrics import Meter, topk_correct
from .progress import Progress
from .setup import TrainParts

__all__ = [
    "EpochResult",
    "PartialEpoch",
    "SignalStop",
    "StepOptions",
    "optimizer_step",
    "resumable_batches",
    "train_one_epoch",
]


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


@dataclass(frozen=True)
class StepOptions:
    """What a training step reads from the recipe."""

    amp: str = "none"
    channels_last: bool = False
    clip_grad: float | None = None
    label_smoothing: float = 0.0

    @classmethod
    def from_config(cls, cfg: Config) -> StepOptions:
        o = cfg.optim
        return cls(cfg.run.amp, cfg.run.channels_last, o.clip_grad, o.label_smoothing)


@dataclass
class PartialEpoch:
    """Where a stopped epoch stood: steps done, its running sums, the generators' state."""

    steps: int
    meter: Meter
    rng: dict[str, Any] | None = None


@dataclass
class EpochResult:
    """An epoch's figures; ``stopped`` when a signal ended it early (see ``partial``)."""

    loss: float
    top1_err: float
    top5_err: float
    images_per_s: float
    lr: float
    partial: PartialEpoch = field(repr=False)
    stopped: bool = False

    def stats(self) -> dict[str, float]:
        """The figures as the run's metrics record them (``train_<name>``)."""
        keys = ("loss", "top1_err", "top5_err", "images_per_s", "lr")
        return {k: getattr(self, k) for k in keys}


def optimizer_step(parts: TrainParts, loss: torch.Tensor, clip_grad: float | None) -> None:
    """Back-propagate ``loss`` and step the optimiser and the schedule: through the AMP
    grad scaler when there is one, with the gradient norm clipped at ``clip_grad``."""
    opt, scaler = parts.optimizer, parts.scaler
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    else:
        loss.backward()
    if clip_grad:
        nn.utils.clip_grad_norm_(parts.model.parameters(), clip_grad)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    parts.scheduler.step()


def resumable_batches(
    loader: Any, steps: int, resume: PartialEpoch | None = None
) -> Iterator[tuple[int, Any]]:
    """``(step, batch)`` for the first ``steps`` batches of ``loader`` but the
    ``resume.steps`` done before an interruption: those are drawn and dropped, and the
    random state is set back to the one saved when the epoch stopped, so the batches that
    follow are those an uninterrupted epoch would see."""
    skip = 0 if resume is None else resume.steps
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        if step < skip:
            if step == skip - 1 and resume is not None and resume.rng is not None:
                set_rng_state(resume.rng)  # as when the epoch stopped, before the next batch
            continue
        yield step, batch


def _step(parts: TrainParts, images: torch.Tensor, labels: torch.Tensor, opts: StepOptions):
    with autocast(parts.device, opts.amp):
        logits = parts.train_model(images)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=opts.label_smoothing)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()}")
    optimizer_step(parts, loss, opts.clip_grad)
    if parts.ema is not None:
        parts.ema.update_parameters(parts.model)
    return loss.detach(), logits.detach()


def train_one_epoch(
    parts: TrainParts,
    loader: Any,
    opts: StepOptions,
    *,
    epoch: int,
    steps: int,
    resume: PartialEpoch | None = None,
    stop: SignalStop | None = None,
    progress: Progress | None = None,
) -> EpochResult:
    """Train ``parts`` for ``steps`` batches of ``loader`` (after the ``resume.steps``
    already done before an interruption); stops early when ``stop`` is requested.

    ``resume.meter`` holds the stopped epoch's sums over every process: give it to the
    main process only (the others start from an empty one)."""
    parts.train_model.train()
    skip = 0 if resume is None else resume.steps
    meter = Meter() if resume is None else resume.meter
    start, done, stopped = time.perf_counter(), skip, False
    for step, (images, labels) in resumable_batches(loader, steps, resume):
        images, labels = (
            move_batch(images, parts.device, opts.channels_last),
            labels.to(parts.device),
        )
        try:
            loss, logits = _step(parts, images, labels, opts)
        except FloatingPointError as err:
            raise FloatingPointError(f"{err} at epoch {epoch + 1}, step {step}") from None
        top1, top5 = topk_correct(logits, labels)
        meter.update(len(labels), loss=loss.item() * len(labels), top1=top1, top5=top5)
        done = step + 1
        if progress is not None:
            progress.update(loss=f"{meter.mean('loss'):.3f}", acc=f"{100 * meter.mean('top1'):.1f}")
        if stop is not None and stop.requested:
            stopped = True
            break
    elapsed = time.perf_counter() - start
    total = meter.reduce()  # over processes; a resumed epoch's sums live on the main one
    resumed = 0 if resume is None else resume.meter.count
    return EpochResult(
        **total.errors(),
        images_per_s=(total.count - resumed) / max(elapsed, 1e-9),
        lr=parts.optimizer.param_groups[0]["lr"],
        partial=PartialEpoch(done, total),
        stopped=stopped,
    )
