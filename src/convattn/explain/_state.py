"""Running a model for an explanation without leaving a trace on it.

:func:`preserved_state` puts the model in evaluation mode (by default) for the duration of
a block and restores, on exit and after an exception alike, every module's own
``training`` flag (not one flag for the whole model: a model in training mode may hold
BatchNorms frozen in evaluation mode) and, when some module runs in training mode, every
buffer (BatchNorm running statistics and ``num_batches_tracked``), which a training-mode
forward would update.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["preserved_state"]


@contextmanager
def preserved_state(model: nn.Module, *, eval_mode: bool = True) -> Iterator[None]:
    """Run the block with ``model`` in evaluation mode (``eval_mode=True``) or in its own
    modes, and leave every module's mode and every buffer as they were found."""
    modes = [(m, m.training) for m in model.modules()]
    if eval_mode:
        model.eval()
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    if any(m.training for m in model.modules()):
        saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
        for module, training in modes:
            module.training = training
