"""Checkpoints that survive crashes: atomic writes and everything needed to resume exactly.

A checkpoint holds the model, optimiser, scheduler, AMP scaler and EMA states, where
training stands (:class:`TrainState`: epochs done, steps and running sums of a stopped
epoch, the best error, the last epoch's metrics record), every random generator's state
and the resolved config. It is written to a temporary file in the same folder and renamed
over the old one, so a crash mid-write never leaves a truncated checkpoint. Reading goes
through :func:`convattn.models.weights.read_torch_file` (``weights_only=True``, one-line
errors).
"""

from __future__ import annotations

import math
import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._version import __version__
from ..models.weights import read_torch_file
from .config import Config
from .metrics import Meter
from .recipes import config_to_dict

if TYPE_CHECKING:
    from .setup import TrainParts

__all__ = [
    "TrainState",
    "atomic_save",
    "export_safetensors",
    "get_rng_state",
    "load_training_state",
    "restore_training_state",
    "save_training_state",
    "set_rng_state",
]


@dataclass
class TrainState:
    """Where training stands.

    Attributes:
        epoch: epochs finished.
        step: steps done in the next epoch (after a signal stopped it; else 0).
        best_top1_err: the best validation top-1 error so far.
        partial_sums: the stopped epoch's running sums (count and sums of its meter).
        partial_rng: every generator's state when that epoch stopped.
        record: the metrics record of the last finished epoch.
    """

    epoch: int = 0
    step: int = 0
    best_top1_err: float = math.inf
    partial_sums: dict[str, Any] | None = None
    partial_rng: dict[str, Any] | None = None
    record: dict[str, Any] = field(default_factory=dict)

    def partial_meter(self) -> Meter:
        meter = Meter()
        if self.partial_sums:
            meter.count, meter.sums = self.partial_sums["count"], dict(self.partial_sums["sums"])
        return meter


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def get_rng_state() -> dict[str, Any]:
    """Every generator's state, as tensors and plain values (loadable weights-only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    """Lists back to tuples (RNG states round-trip through the weights-only unpickler)."""
    return tuple(_tuples(v) for v in x) if isinstance(x, list | tuple) else x


def load_training_state(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """Read a training checkpoint without executing pickled code (``mmap``: tensors are
    mapped, not read, for a look at the small entries).

    Raises:
        FileNotFoundError: there is no such file.
        CheckpointError: the file is refused or unreadable (see ``read_torch_file``).
    """
    return read_torch_file(path, mmap=mmap)


def save_training_state(path: Path, parts: TrainParts, state: TrainState, cfg: Config) -> None:
    """Everything ``--resume`` needs, written atomically."""
    atomic_save(
        {
            "model": parts.model.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "scaler": None if parts.scaler is None else parts.scaler.state_dict(),
            "ema": None if parts.ema is None else parts.ema.state_dict(),
            "epoch": state.epoch,
            "step": state.step,
            "best_top1_err": state.best_top1_err,
            "partial_sums": state.partial_sums,
            "partial_rng": state.partial_rng,
            "record": state.record,
            "rng": get_rng_state(),
            "config": config_to_dict(cfg),
            "version": __version__,
        },
        path,
    )


def restore_training_state(ckpt: dict[str, Any], parts: TrainParts) -> TrainState:
    """Load a checkpoint read by :func:`load_training_state` into ``parts``."""
    parts.model.load_state_dict(ckpt["model"])
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    parts.scheduler.load_state_dict(ckpt["scheduler"])
    if parts.scaler is not None and ckpt.get("scaler"):
        parts.scaler.load_state_dict(ckpt["scaler"])
    if parts.ema is not None and ckpt.get("ema"):
        parts.ema.load_state_dict(ckpt["ema"])
    set_rng_state(ckpt["rng"])
    return TrainState(
        epoch=ckpt["epoch"],
        step=ckpt["step"],
        best_top1_err=ckpt["best_top1_err"],
        partial_sums=ckpt.get("partial_sums"),
        partial_rng=ckpt.get("partial_rng"),
        record=ckpt.get("record") or {},
    )


def export_safetensors(state_dict: dict[str, torch.Tensor], path: str | Path, **meta: str) -> None:
    """Write model weights as ``.safetensors`` (atomically), with string metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, str(tmp), metadata=meta
    )
    os.replace(tmp, path)
