"""A training run in progress, shared by the classification engine (:mod:`.fit`) and
the detection engine (:mod:`convattn.detection.engine`): the resume checks and the run
folder around it (:func:`run_fit`), the restored state, the epoch loop under
SIGINT/SIGTERM, the mid-epoch stop and the checkpoint written before each metrics line.

A task subclasses :class:`Job` with ``log_start``, ``epoch`` (train, evaluate and
record one epoch, ending with :meth:`Job.finish_epoch`) and ``summary``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

from .checkpoint import (
    TrainState,
    get_rng_state,
    load_training_state,
    restore_training_state,
    save_training_state,
)
from .distributed import DistInfo, cleanup, init_distributed
from .loop import PartialEpoch, SignalStop
from .metrics import Meter
from .resume import check_resume, checkpoint_file, saved_config
from .run import Run
from .runtime import configure

__all__ = ["Job", "StopRequested", "finished_summary", "run_fit"]

log = logging.getLogger("convattn")

#: What trains a run once its folder is open: ``(cfg, run, dist, device, checkpoint)``.
Trainer = Callable[[Any, Run, DistInfo, torch.device, "dict | None"], dict[str, Any]]


class StopRequested(Exception):
    """Raised after a checkpoint was saved because SIGINT/SIGTERM asked to stop."""


def run_fit(cfg: Any, resume: str | Path | None, config_cls: type, train: Trainer) -> dict:
    """Check a resume against the run's saved recipe (a ``config_cls``), set up the
    device and the processes, open the run folder and call ``train`` in it."""
    ckpt, folder, changes = None, None, []
    if resume is not None:
        path = checkpoint_file(resume)
        ckpt, folder = load_training_state(path), path.parent
        saved = saved_config(ckpt, config_cls)
        changes = check_resume(saved, cfg, done_epochs=ckpt["epoch"])
    device = configure(cfg.run)
    dist = init_distributed(device)
    try:
        run = Run(cfg, main=dist.is_main, folder=folder, resume=ckpt is not None)
        try:
            for change in changes:
                log.info("resume: %s", change)
            return train(cfg, run, dist, device, ckpt)
        finally:
            run.close()
    finally:
        cleanup()


def finished_summary(cfg: Any, run: Run, ckpt: dict | None) -> dict[str, Any] | None:
    """The summary row of a run that has trained all its epochs already, else ``None``."""
    summary = run.dir / "summary.json"
    if ckpt is not None and ckpt["epoch"] >= cfg.schedule.epochs and summary.is_file():
        log.info("run %s already finished (%d epochs); nothing to train", run.dir, ckpt["epoch"])
        return json.loads(summary.read_text())[0]
    return None


@dataclass
class Job:
    """One run in progress: its recipe, folder, processes, data, parts and state."""

    cfg: Any
    run: Run
    dist: DistInfo
    data: Any
    parts: Any
    state: TrainState

    @property
    def show(self) -> bool:
        """Whether this process draws progress bars."""
        return self.dist.is_main and self.cfg.run.progress

    def log_start(self) -> None:
        raise NotImplementedError

    def epoch(self, epoch: int, stop: SignalStop) -> None:
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        raise NotImplementedError

    def train(self, ckpt: dict | None) -> dict[str, Any]:
        """Restore ``ckpt`` (if any), train the remaining epochs, return the summary."""
        if ckpt is not None:
            self.state = restore_training_state(ckpt, self.parts)
            self.run.append_missing(self.state.record)
            log.info("resumed %s at epoch %d, step %d", self.run.dir, self.state.epoch + 1,
                     self.state.step)  # fmt: skip
        self.log_start()
        with SignalStop() as stop:
            for epoch in range(self.state.epoch, self.cfg.schedule.epochs):
                self.epoch(epoch, stop)
        return self.summary()

    def resumed_part(self) -> PartialEpoch | None:
        """The stopped epoch to continue (its sums and generators: main process only)."""
        s = self.state
        if not s.step:
            return None
        if not self.dist.is_main:
            return PartialEpoch(s.step, Meter())
        return PartialEpoch(s.step, s.partial_meter(), s.partial_rng)

    def save_stopped(self, partial: PartialEpoch) -> NoReturn:
        """Checkpoint an epoch stopped by a signal part-way, then raise StopRequested."""
        m = partial.meter
        self.state.step, self.state.partial_sums = partial.steps, {"count": m.count, "sums": m.sums}
        self.state.partial_rng = get_rng_state()
        self.checkpoint()
        log.info("stopped by signal; checkpoint saved to %s (resume with --resume %s)",
                 self.run.checkpoint_path, self.run.dir)  # fmt: skip
        raise StopRequested(str(self.run.checkpoint_path))

    def finish_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        """Epoch ``epoch`` is done: its checkpoint (with ``record``), then its metrics line."""
        state = self.state
        state.epoch, state.step, state.partial_sums, state.partial_rng = epoch + 1, 0, None, None
        state.record = record
        self.checkpoint()  # before the metrics line: see the fit module's docstring
        self.run.log_metrics(record)

    def checkpoint(self) -> None:
        """Write the training checkpoint (main process)."""
        if self.dist.is_main:
            save_training_state(self.run.checkpoint_path, self.parts, self.state, self.cfg)
