"""Fused CPU forward and backward of CBAM and of its channel gate (SE included).

Paper: Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018,
https://arxiv.org/abs/1807.06521. The math is that of :mod:`convattn.layers.cbam`; only
the schedule differs: the C++ kernels in ``convattn/csrc`` (built on first use, see
:mod:`convattn._jit`) make 3 tensor-sized memory passes forward and 4 backward, blocked
per sample so that repeated reads of a sample come from cache, and save for backward only
``x`` and tensors of size N*C or N*H*W (gates, pooled vectors and maps, argmax indices,
the spatial logits). Plan of passes: ``convattn/csrc/fused_cbam.cpp``.

Covered: CPU float32/float64 input, contiguous or channels_last (the output keeps the
format), pools any non-empty subset of {avg, max}, "avgmax" spatial pooling with or without
BatchNorm, any odd kernel size, every arrangement and the channel gate alone, training and
evaluation mode (BatchNorm running statistics and ``num_batches_tracked`` updated as
``nn.BatchNorm2d`` does), any N, H, W. Everything else runs the eager modules.

Deviations from the eager modules: max pooling sends its gradient to the first maximal
element where ``amax`` splits it evenly between tied maxima (ties have measure zero for
real-valued data); the gradient is not differentiable again (no double backward); sums are
accumulated in a different order (float rounding differs at the 1e-7 relative level).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._jit import load_fused

__all__ = ["IMPLS", "fused_unsupported", "prefer_fused", "run_fused"]

IMPLS = ("auto", "eager", "fused")
_CODES = {"channel-spatial": 1, "spatial-channel": 2, "parallel": 3}
_DTYPES = (torch.float32, torch.float64)


def _exporting() -> bool:
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch._C._are_functorch_transforms_active()  # vmap, grad, jvp: no rules here
    )


def fused_unsupported(module: nn.Module, x: torch.Tensor) -> str | None:
    """Why the fused kernels cannot run ``module`` (a ``CBAM`` or ``ChannelAttention``) on
    ``x``, or ``None`` when they can (the extension's build is not checked here)."""
    if _exporting():
        return "tracing, scripting, compiling or exporting"
    if x.device.type != "cpu" or x.dtype not in _DTYPES:
        return f"{x.device.type} {x.dtype} input (fused: CPU float32/float64)"
    if x.numel() == 0:
        return "empty input"
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        return "input neither contiguous nor channels_last"
    channel = getattr(module, "channel", module)
    if not set(channel.pool_types) <= {"avg", "max"}:
        return f"pool types {channel.pool_types} (fused: avg, max)"
    tensors = list(module.parameters()) + list(module.buffers())
    if any(t.dtype != x.dtype and t.is_floating_point() for t in tensors):
        return "parameters of another dtype than the input"
    if any(t.device != x.device for t in tensors):
        return "parameters on another device than the input"
    spatial = getattr(module, "spatial", None)
    if spatial is not None:
        if spatial.compress is not None:
            return "conv1x1 spatial pooling"
        bn = spatial.bn
        if bn is not None and bn.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return "BatchNorm over one value (eager raises the error)"
    return None


def prefer_fused(module: nn.Module, x: torch.Tensor) -> bool:
    """For ``impl="auto"``: whether the fused kernels are expected to beat eager on ``x``."""
    return True


class _FusedFunction(torch.autograd.Function):
    """y = CBAM(x) (or the channel gate alone) with the fused C++ kernels."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        w1: torch.Tensor,
        b1: torch.Tensor,
        w2: torch.Tensor,
        b2: torch.Tensor,
        conv_w: torch.Tensor | None,
        conv_b: torch.Tensor | None,
        bn_w: torch.Tensor | None,
        bn_b: torch.Tensor | None,
        rm: torch.Tensor | None,
        rv: torch.Tensor | None,
        cfg: tuple,
    ) -> torch.Tensor:
        ext, code, avg, mx, norm, batch_stats, factor, eps = cfg
        y, *saved = ext.forward(
            x, w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b, rm, rv,
            code, avg, mx, norm, batch_stats, factor, eps,
        )  # fmt: skip
        ctx.save_for_backward(x, w1, b1, w2, b2, conv_w, *saved)
        ctx.cfg = cfg
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        ext, code, avg, mx, norm, batch_stats, _, _ = ctx.cfg
        x, w1, b1, w2, b2, conv_w, *saved = ctx.saved_tensors
        fmt = torch.contiguous_format if x.is_contiguous() else torch.channels_last
        g = gy.contiguous(memory_format=fmt)
        if g.stride() != x.stride():  # degenerate sizes: match x's strides exactly
            g = torch.empty_like(x).copy_(gy)
        grads = ext.backward(
            g, x, w1, b1, w2, b2, conv_w, *saved,
            code, avg, mx, norm, batch_stats, ctx.needs_input_grad[0],
        )  # fmt: skip
        return (*grads, None, None, None)


def _run(x: torch.Tensor, params: tuple[torch.Tensor | None, ...], cfg: tuple) -> torch.Tensor:
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or any(p is not None and p.requires_grad for p in params[:8])
    )
    if needs_grad:
        return _FusedFunction.apply(x, *params, cfg)
    ext, code, avg, mx, norm, batch_stats, factor, eps = cfg
    with torch.no_grad():
        return ext.forward(x, *params, code, avg, mx, norm, batch_stats, factor, eps)[0]


def _mlp(channel: nn.Module) -> tuple[torch.Tensor, ...]:
    return (channel.fc1.weight, channel.fc1.bias, channel.fc2.weight, channel.fc2.bias)


def _fused_channel(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """``x * Mc(x)`` of a ``ChannelAttention`` with the fused kernels; ``None`` if the
    extension is unavailable."""
    ext = load_fused()
    if ext is None:
        return None
    pools = module.pool_types
    cfg = (ext, 0, "avg" in pools, "max" in pools, False, False, 0.0, 0.0)
    return _run(x, (*_mlp(module), None, None, None, None, None, None), cfg)


def _fused_cbam(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """``CBAM(x)`` with the fused kernels; ``None`` if the extension is unavailable."""
    ext = load_fused()
    if ext is None:
        return None
    if module.spatial is None:
        return _fused_channel(module.channel, x)
    pools = module.channel.pool_types
    sa = module.spatial
    bn = sa.bn
    conv_w = sa.conv.weight
    bn_w = bn_b = rm = rv = None
    batch_stats, factor, eps = False, 0.0, 0.0
    if bn is not None:  # the running-statistics logic of nn.BatchNorm2d.forward
        bn_w, bn_b, eps = bn.weight, bn.bias, bn.eps
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:
                factor = 1.0 / float(bn.num_batches_tracked)
        batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
        if not bn.training or bn.track_running_stats:
            rm, rv = bn.running_mean, bn.running_var
    code = _CODES[module.arrangement]
    cfg = (ext, code, "avg" in pools, "max" in pools, bn is not None, batch_stats, factor, eps)
    params = (*_mlp(module.channel), conv_w, sa.conv.bias, bn_w, bn_b, rm, rv)
    return _run(x, params, cfg)


def run_fused(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """``module(x)`` (a ``CBAM`` or ``ChannelAttention``, already shape-checked) with the
    fused kernels, or ``None`` where its ``impl`` and ``x`` call for the eager path."""
    if fused_unsupported(module, x) is not None:
        return None
    if module.impl == "auto" and not prefer_fused(module, x):
        return None
    if hasattr(module, "spatial"):
        return _fused_cbam(module, x)
    return _fused_channel(module, x)
