"""Fused CPU forward and backward of CBAM and of its channel gate (SE included), optionally
with the residual block around it: the last BatchNorm before it and the residual addition
and ReLU after it.

Paper: Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018,
https://arxiv.org/abs/1807.06521. The math is that of :mod:`convattn.layers.cbam`; only
the schedule differs: the C++ kernels in ``convattn/csrc`` (built on first use, see
:mod:`convattn._jit`) move 2 reads and 1 write of input-sized tensors forward and 3 reads
and 1 write backward, blocked per sample so that repeated reads of a sample come from cache
(training mode; in evaluation mode 1 + 1 and 2 + 1), and save for backward only
``x`` and tensors of size N*C or N*H*W (gates, pooled vectors and maps, argmax indices,
the spatial logits). Plan of passes: ``convattn/csrc/fused_cbam.cpp``; the operators and
their autograd formula: :mod:`convattn.layers._fused_ops`.

Residual blocks (:func:`residual_tail`, the modules' ``forward_residual``) fold
``relu(attention(bn(z)) + shortcut)`` into the same passes: the output is written once,
the BatchNorm's output and the sum are never materialised, and backward reads the ReLU's
mask from the saved output and writes the shortcut's gradient and the BatchNorm input's
gradient (plain ``relu(bn(z) + shortcut)`` writes two tensors forward and two backward).
The BatchNorm's training statistics take one more read of ``z``; its running statistics
and ``num_batches_tracked`` are updated as ``nn.BatchNorm2d`` does.

Covered: CPU float32/float64 input, contiguous or channels_last (the output keeps the
format), pools any non-empty subset of {avg, max}, "avgmax" spatial pooling with or without
BatchNorm, any odd kernel size, every arrangement and the channel gate alone, training and
evaluation mode (BatchNorm running statistics and ``num_batches_tracked`` updated as
``nn.BatchNorm2d`` does), any N, H, W. The block's BatchNorm is folded for the
channel-spatial arrangement and the channel gate alone, for ``nn.BatchNorm2d`` itself
(affine or not, with or without running statistics); other normalisations (synchronised
BatchNorm included) run eagerly before the fused attention and tail. Modules with hooks
run eagerly. Everything else runs the eager modules.

Deviations from the eager modules: max pooling sends its gradient to the first maximal
element where ``amax`` splits it evenly between tied maxima (ties have measure zero for
real-valued data, except where a BatchNorm weight is exactly zero, as with
``zero_init_last``: then every position ties and its gradient goes to the first); the
gradient is not differentiable again (no double backward); sums are accumulated in a
different order (float32 results differ from eager's at eager's own rounding level, also for
maps whose mean is many times their spread, as in trained networks).

Tracing, scripting, export (ONNX included) and functorch transforms run the eager
operations. Under ``torch.compile`` the module calls the fused operator, which the compiler
keeps as one opaque node (``COMPILE_FUSED``; it was faster than letting the compiler fuse
the eager operations), as long as the extension was already built or builds at trace time.
"""

from __future__ import annotations

import torch
from torch import nn

from ._fused_ops import fused_forward, fused_ops

__all__ = [
    "COMPILE_FUSED",
    "IMPLS",
    "fused_unsupported",
    "has_hooks",
    "norm_unsupported",
    "prefer_fused",
    "residual_tail",
    "run_fused",
]

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
            return _batchnorm_unsupported(bn, x)
    return None


def _batchnorm_unsupported(bn: nn.BatchNorm2d, x: torch.Tensor) -> str | None:
    """Why the kernels cannot run ``bn`` on ``x`` (``None`` when they can)."""
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

    Under ``torch.compile`` with gradients off (inference), "auto" records the eager
    operations: the compiler fuses them with their neighbours (the block's BatchNorm, the
    addition and the ReLU), which measured faster than the opaque fused operator there
    (ResNet-50, batch 16: 1.05x against 1.18x the plain network; see BENCHMARKS.md).
    """
    if torch.compiler.is_compiling() and not torch.is_grad_enabled():
        return False
    return 4 * x.shape[0] >= _num_threads()


def _same_kind(x: torch.Tensor, tensors: tuple[torch.Tensor | None, ...]) -> bool:
    """The kernels read parameters and buffers as contiguous arrays of x's dtype."""
    return all(
        t is None or (t.dtype == x.dtype and t.device == x.device and t.is_contiguous())
        for t in tensors
    )


def has_hooks(*modules: nn.Module | None) -> bool:
    """Whether these modules have hooks of their own, which the fused block tail would skip
    (it does not call them). Global hooks (``register_module_forward_hook`` and kin) are
    instrumentation and do not change the path: they see the block, not the modules
    folded into it."""
    return any(
        m is not None
        and bool(
            m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        )
        for m in modules
    )


def norm_unsupported(module: nn.Module, norm: nn.Module, x: torch.Tensor) -> str | None:
    """Why ``norm`` (the BatchNorm whose output ``module`` gates) cannot be folded into the
    fused kernels for input ``x``, or ``None`` when it can."""
    if type(norm) is not nn.BatchNorm2d:  # e.g. synchronised across processes
        return f"{type(norm).__name__} (folded: nn.BatchNorm2d)"
    if getattr(module, "spatial", None) is not None and module.arrangement != "channel-spatial":
        return f"{module.arrangement} arrangement (folded: channel-spatial, channel gate)"
    if norm.num_features != x.shape[1]:
        return "BatchNorm channels differ from the input's"
    tensors = (norm.weight, norm.bias, norm.running_mean, norm.running_var)
    if not _same_kind(x, tensors):
        return "BatchNorm parameters or statistics of another dtype or not contiguous"
    return _batchnorm_unsupported(norm, x)


def _bn_plan(bn: nn.BatchNorm2d) -> tuple[bool, float, bool]:
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


def _update(bn: nn.BatchNorm2d, batch: torch.Tensor, factor: float) -> None:
    with torch.no_grad():  # running = (1 - factor) running + factor batch (unbiased var)
        bn.running_mean.lerp_(batch[0], factor)
        bn.running_var.lerp_(batch[1], factor)


def run_fused(
    module: nn.Module,
    x: torch.Tensor,
    *,
    shortcut: torch.Tensor | None = None,
    relu: bool = False,
    norm: nn.Module | None = None,
) -> torch.Tensor | None:
    """``module(x)`` (a ``CBAM`` or ``ChannelAttention``, already shape-checked) with the
    fused kernels, or ``None`` where its ``impl`` and ``x`` call for the eager path.

    With ``norm``, ``x`` is that BatchNorm's input and the result is
    ``module(norm(x))``; with ``shortcut`` it is added to the attention's output, then
    ``relu`` applies the ReLU."""
    if fused_unsupported(module, x) is not None:
        return None
    if module.impl == "auto" and not prefer_fused(module, x):
        return None
    compiling = torch.compiler.is_compiling()
    ops = None if compiling else fused_ops()
    if ops is None and not compiling:
        return None
    if shortcut is not None:
        if shortcut.shape != x.shape or shortcut.dtype != x.dtype or shortcut.device != x.device:
            return None
        if shortcut.stride() != x.stride():  # the kernels want x's strides exactly
            shortcut = torch.empty_like(x).copy_(shortcut)
    if norm is not None and norm_unsupported(module, norm, x) is not None:
        x, norm = norm(x), None  # the BatchNorm runs eagerly, the rest fused
    spatial = getattr(module, "spatial", None)
    channel = getattr(module, "channel", module)
    pools = channel.pool_types
    mlp = (channel.fc1.weight, channel.fc1.bias, channel.fc2.weight, channel.fc2.bias)
    flags = ("avg" in pools, "max" in pools)
    bn = None if spatial is None else spatial.bn
    if spatial is None:
        gate = (*mlp, *(None,) * 6, 0, *flags, False, False, 0.0)
    else:
        # model.to(memory_format=torch.channels_last) makes this (1, 2, k, k) weight
        # channels_last too; the kernels read it as a dense row-major array.
        conv_w = spatial.conv.weight.contiguous()
        if bn is None:
            sp = (conv_w, spatial.conv.bias, None, None, None, None)
        else:
            sp = (conv_w, None, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        gate = (*mlp, *sp, _CODES[module.arrangement], *flags, bn is not None, False, 0.0)
    if not _same_kind(x, gate[:10]):
        return None
    tensors = [x, *gate[:10], shortcut]
    if norm is not None:
        tensors += [norm.weight, norm.bias]
    need_idx = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    # From here on the call happens: BatchNorm bookkeeping as nn.BatchNorm2d's.
    if bn is not None:
        batch_stats, factor, update = _bn_plan(bn)
        rs = (None, None) if batch_stats else gate[8:10]  # read only when used
        gate = (*gate[:8], *rs, gate[10], *flags, True, batch_stats, bn.eps)
    head: tuple = (0, None, None, None, None, 0.0)
    if norm is not None:
        h_batch, h_factor, h_update = _bn_plan(norm)
        rs = (None, None) if h_batch else (norm.running_mean, norm.running_var)
        head = (2 if h_batch else 1, norm.weight, norm.bias, *rs, norm.eps)
    y, batch, hbatch = fused_forward(ops, x, *gate, shortcut, relu, *head, need_idx)
    if bn is not None and update:
        _update(bn, batch, factor)
    if norm is not None and h_update:
        _update(norm, hbatch, h_factor)
    return y


def residual_tail(
    module: nn.Module, x: torch.Tensor, shortcut: torch.Tensor, norm: nn.Module | None = None
) -> torch.Tensor:
    """``relu(module(norm(x)) + shortcut)``, the tail of a residual block, fused where the
    kernels apply (see the module docstring) and composed of the eager calls elsewhere."""
    if module.impl != "eager" and not has_hooks(module, norm):
        y = run_fused(module, x, shortcut=shortcut, relu=True, norm=norm)
        if y is not None:
            return y
    out = module(x if norm is None else norm(x))
    return torch.relu_(out + shortcut)
