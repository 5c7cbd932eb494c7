"""What the C++ and the Triton kernels' dispatch share: when the eager operations must be
recorded, the BatchNorm rules and bookkeeping around the pure operators (the logic of
``nn.BatchNorm2d.forward``), and how a residual tail's shortcut is handed to them."""

from __future__ import annotations

import torch
from torch import nn

from .ops import fused_ops

__all__ = ["CODES", "batchnorm_unsupported", "bn_plan", "eager_only", "shortcut_fits",
           "shortcut_like", "update_running_stats"]  # fmt: skip

#: The operators' arrangement codes (0 is the channel gate alone).
CODES = {"channel-spatial": 1, "spatial-channel": 2, "parallel": 3}


@torch.compiler.assume_constant_result
def _built_for_compile() -> bool:
    """Evaluated once when a graph is traced: build/load the operators outside the graph."""
    from . import COMPILE_FUSED

    return COMPILE_FUSED and fused_ops() is not None


def eager_only() -> bool:
    """Tracing, scripting, exporting or a functorch transform: record eager operations."""
    if torch.compiler.is_compiling():
        return torch.compiler.is_exporting() or not _built_for_compile()
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch._C._are_functorch_transforms_active()  # vmap, grad, jvp: no rules here
    )


def batchnorm_unsupported(bn: nn.BatchNorm2d, x: torch.Tensor) -> str | None:
    """Why the kernels cannot run ``bn`` on ``x`` (``None`` when they can)."""
    batch_stats = bn.training or bn.running_mean is None
    if batch_stats and x.shape[0] * x.shape[2] * x.shape[3] == 1:
        return "BatchNorm over one value (eager raises the error)"
    if bn.momentum is None and torch.compiler.is_compiling():
        return "cumulative-average BatchNorm under torch.compile"
    return None


def bn_plan(bn: nn.BatchNorm2d) -> tuple[bool, float, bool]:
    """The running-statistics logic of ``nn.BatchNorm2d.forward``: counts the batch and
    returns (use batch statistics, update factor, update the running statistics)."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    update = bn.training and bn.track_running_stats
    if update and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            factor = 1.0 / float(bn.num_batches_tracked)
    batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    return batch_stats, factor, update and bn.running_mean is not None


def update_running_stats(bn: nn.BatchNorm2d, batch: torch.Tensor, factor: float) -> None:
    with torch.no_grad():  # running = (1 - factor) running + factor batch (unbiased var)
        bn.running_mean.lerp_(batch[0].to(bn.running_mean.dtype), factor)
        bn.running_var.lerp_(batch[1].to(bn.running_var.dtype), factor)


def shortcut_fits(x: torch.Tensor, shortcut: torch.Tensor | None) -> bool:
    """Whether the kernels can add ``shortcut`` to their output for input ``x`` (absent, or
    of x's shape, dtype and device; otherwise eager's broadcasting and promotion apply)."""
    if shortcut is None:
        return True
    return (shortcut.shape, shortcut.dtype, shortcut.device) == (x.shape, x.dtype, x.device)


def shortcut_like(x: torch.Tensor, shortcut: torch.Tensor | None) -> torch.Tensor | None:
    """The shortcut with exactly x's strides (a copy where they differ), as the kernels
    read it."""
    if shortcut is None or shortcut.stride() == x.stride():
        return shortcut
    return torch.empty_like(x).copy_(shortcut)
