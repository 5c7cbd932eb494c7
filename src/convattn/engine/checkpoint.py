"""Checkpoints that survive crashes: atomic writes and everything needed to resume exactly.

A checkpoint holds the model, optimiser, scheduler, AMP scaler and EMA states, the epoch,
the best metric so far, every random generator's state and the resolved config. It is
written to a temporary file in the same folder and renamed over the old one, so a crash
mid-write never leaves a truncated checkpoint. Reading goes through
:func:`convattn.models.weights.read_torch_file` (``weights_only=True``, one-line errors).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.weights import read_torch_file

__all__ = [
    "atomic_save",
    "export_safetensors",
    "get_rng_state",
    "load_training_state",
    "set_rng_state",
]


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


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint without executing pickled code.

    Raises:
        FileNotFoundError: there is no such file.
        CheckpointError: the file is refused or unreadable (see ``read_torch_file``).
    """
    return read_torch_file(path)


def export_safetensors(state_dict: dict[str, torch.Tensor], path: str | Path, **meta: str) -> None:
    """Write model weights as ``.safetensors`` (atomically), with string metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, str(tmp), metadata=meta
    )
    os.replace(tmp, path)
