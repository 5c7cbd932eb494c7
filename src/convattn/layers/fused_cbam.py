"""Fused CPU forward and backward of CBAM and of its channel gate (SE included).

Paper: Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018,
https://arxiv.org/abs/1807.06521. The math is that of :mod:`convattn.layers.cbam`; only
the schedule differs: the C++ kernels in ``convattn/csrc`` (built on first use, see
:mod:`convattn._jit`) move 2 reads and 1 write of input-sized tensors forward and 3 reads
and 1 write backward, blocked per sample so that repeated reads of a sample come from cache
(training mode; in evaluation mode 1 + 1 and 2 + 1), and save for backward only
``x`` and tensors of size N*C or N*H*W (gates, pooled vectors and maps, argmax indices,
the spatial logits). Plan of passes: ``convattn/csrc/fused_cbam.cpp``; the operators and
their autograd formula: :mod:`convattn.layers._fused_ops`.

Covered: CPU float32/float64 input, contiguous or channels_last (the output keeps the
format), pools any non-empty subset of {avg, max}, "avgmax" spatial pooling with or without
BatchNorm, any odd kernel size, every arrangement and the channel gate alone, training and
evaluation mode (BatchNorm running statistics and ``num_batches_tracked`` updated as
``nn.BatchNorm2d`` does), any N, H, W. Everything else runs the eager modules.

Deviations from the eager modules: max pooling sends its gradient to the first maximal
element where ``amax`` splits it evenly between tied maxima (ties have measure zero for
real-valued data); the gradient is not differentiable again (no double backward); sums are
accumulated in a different order (float32 results differ from eager's at eager's own
rounding level).

Tracing, scripting, export (ONNX included) and functorch transforms run the eager
operations. Under ``torch.compile`` the module calls the fused operator, which the compiler
keeps as one opaque node (``COMPILE_FUSED``; it was faster than letting the compiler fuse
the eager operations), as long as the extension was already built or builds at trace time.
"""

from __future__ import annotations

import torch
from torch import nn

from ._fused_ops import fused_forward, fused_ops

__all__ = ["COMPILE_FUSED", "IMPLS", "fused_unsupported", "prefer_fused", "run_fused"]

IMPLS = ("auto", "eager", "fused")
#: Whether ``torch.compile`` graphs call the fused operator (else the eager operations).
COMPILE_FUSED = True
_CODES = {"channel-spatial": 1, "spatial-channel": 2, "parallel": 3}
_DTYPES = (torch.float32, torch.float64)


@torch.compiler.assume_constant_result
def _built_for_compile() -> bool:
    """Evaluated once when a graph is traced: build/load the operators outside the graph."""
    return COMPILE_FUSED and fused_ops() is not None


@torch.compiler.assume_constant_result
def _num_threads() -> int:
    return torch.get_num_threads()


def _eager_only() -> bool:
    """Tracing, scripting, exporting or a functorch transform: record eager operations."""
    if torch.compiler.is_compiling():
        return torch.compiler.is_exporting() or not _built_for_compile()
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch._C._are_functorch_transforms_active()  # vmap, grad, jvp: no rules here
    )


def fused_unsupported(module: nn.Module, x: torch.Tensor) -> str | None:
    """Why the fused kernels cannot run ``module`` (a ``CBAM`` or ``ChannelAttention``) on
    ``x``, or ``None`` when they can (the extension's build is not checked here)."""
    if _eager_only():
        return "tracing, scripting, exporting or a functorch transform"
    if x.device.type != "cpu" or x.dtype not in _DTYPES:
        return f"{x.device.type} {x.dtype} input (fused: CPU float32/float64)"
    if x.numel() == 0:
        return "empty input"
    if torch.is_autocast_enabled(x.device.type):
        return "autocast (eager runs the linear layers and the conv in lower precision)"
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        return "input neither contiguous nor channels_last"
    channel = getattr(module, "channel", module)
    if not set(channel.pool_types) <= {"avg", "max"}:
        return f"pool types {channel.pool_types} (fused: avg, max)"
    spatial = getattr(module, "spatial", None)
    if spatial is not None:
        if spatial.compress is not None:
            return "conv1x1 spatial pooling"
        bn = spatial.bn
        if bn is not None:
            if type(bn) is not nn.BatchNorm2d:  # e.g. synchronised across processes
                return f"{type(bn).__name__} in the spatial gate (fused: nn.BatchNorm2d)"
            batch_stats = bn.training or bn.running_mean is None
            if batch_stats and x.shape[0] * x.shape[2] * x.shape[3] == 1:
                return "BatchNorm over one value (eager raises the error)"
            if bn.momentum is None and torch.compiler.is_compiling():
                return "cumulative-average BatchNorm under torch.compile"
    return None


def prefer_fused(module: nn.Module, x: torch.Tensor) -> bool:
    """For ``impl="auto"``: whether the fused kernels are expected to beat eager on ``x``.

    They parallelise over samples only. On the 2-core machine they were measured on they
    won at every batch size (N = 1 included: one thread against eager's two); with far fewer
    samples than threads (N = 1 on a many-core machine) eager's intra-operator parallelism
    may win, so below a quarter of the threads per sample "auto" stays eager.
    """
    return 4 * x.shape[0] >= _num_threads()


def _same_kind(x: torch.Tensor, tensors: tuple[torch.Tensor | None, ...]) -> bool:
    """The kernels read parameters and buffers as contiguous arrays of x's dtype."""
    return all(
        t is None or (t.dtype == x.dtype and t.device == x.device and t.is_contiguous())
        for t in tensors
    )


def run_fused(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """``module(x)`` (a ``CBAM`` or ``ChannelAttention``, already shape-checked) with the
    fused kernels, or ``None`` where its ``impl`` and ``x`` call for the eager path."""
    if fused_unsupported(module, x) is not None:
        return None
    if module.impl == "auto" and not prefer_fused(module, x):
        return None
    ops = None if torch.compiler.is_compiling() else fused_ops()
    if ops is None and not torch.compiler.is_compiling():
        return None
    spatial = getattr(module, "spatial", None)
    channel = getattr(module, "channel", module)
    pools = channel.pool_types
    mlp = (channel.fc1.weight, channel.fc1.bias, channel.fc2.weight, channel.fc2.bias)
    flags = ("avg" in pools, "max" in pools)
    if spatial is None:
        if not _same_kind(x, mlp):
            return None
        return fused_forward(ops, x, *mlp, *(None,) * 6, 0, *flags, False, False, 0.0)[0]
    bn = spatial.bn
    code = _CODES[module.arrangement]
    # model.to(memory_format=torch.channels_last) makes this (1, 2, k, k) weight
    # channels_last too; the kernels read it as a dense row-major array.
    conv_w = spatial.conv.weight.contiguous()
    if bn is None:
        args = (*mlp, conv_w, spatial.conv.bias, None, None, None, None)
        if not _same_kind(x, args):
            return None
        return fused_forward(ops, x, *args, code, *flags, False, False, 0.0)[0]
    rm, rv = bn.running_mean, bn.running_var
    args = (*mlp, conv_w, None, bn.weight, bn.bias, rm, rv)
    if not _same_kind(x, args):
        return None
    # The running-statistics logic of nn.BatchNorm2d.forward.
    factor = 0.0 if bn.momentum is None else bn.momentum
    update = bn.training and bn.track_running_stats
    if update and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            factor = 1.0 / float(bn.num_batches_tracked)
    batch_stats = bn.training or (rm is None and rv is None)
    if batch_stats:  # the kernels read running statistics only when they use them
        args = (*args[:-2], None, None)
    y, batch = fused_forward(ops, x, *args, code, *flags, True, batch_stats, bn.eps)
    if update and rm is not None:
        with torch.no_grad():  # running = (1 - factor) running + factor batch (unbiased var)
            rm.lerp_(batch[0], factor)
            rv.lerp_(batch[1], factor)
    return y
