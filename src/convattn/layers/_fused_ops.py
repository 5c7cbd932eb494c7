"""The fused CBAM operators ``torch.ops.convattn.cbam_forward`` and ``cbam_backward``.

The C++ kernels (``convattn/csrc``, built by :mod:`convattn._jit`) register the two
operators; this module adds what makes them ordinary PyTorch operators: fake kernels
(shapes only, for ``torch.compile`` and export tracing) and the autograd formula that
joins them, so that eager mode and compiled graphs run the same operator, opaque to the
compiler. Both operators are pure functions (running statistics are updated by the caller).

``cbam_forward(x, w1, b1, w2, b2, conv_w?, conv_b?, bn_w?, bn_b?, running_mean?,
running_var?, arrangement, use_avg, use_max, norm, batch_stats, eps, shortcut?, relu, head,
head_w?, head_b?, head_rm?, head_rv?, head_eps, need_idx)`` computes
``y = [relu](attention(x') [+ shortcut])`` where ``x' = x``, or with ``head`` 1 (running
statistics) or 2 (batch statistics) ``x' = BatchNorm(x)`` with the parameters ``head_*``:
the tail and the last BatchNorm of a residual block folded into the attention. It returns
``[y, mc, v, idx_hw, maps, idx_c, s, stats, batch, hstats, hbatch, zsum]``: the output,
the channel gate (N, C), the pooled vectors (P, N, C), the argmax over positions (N, C),
the spatial pooling maps (N, 2, H*W), the argmax over channels (N, H*W), the spatial
logits before normalisation (N, H*W), the float64 ``[A, B, mean, invstd]`` of the spatial
gate ``sigmoid(A s + B)``, the batch ``[mean, unbiased var]`` of ``s``; for a folded
BatchNorm its float64 ``[mean; invstd]`` (2, C), its batch ``[mean; unbiased var]``
(2, C, batch statistics only) and the per-sample channel sums of ``x`` less that mean
(rounded to ``x``'s dtype; N, C). Argmax indices are left empty (first dimension 0) without
``need_idx``. Arrangement 0 is the channel gate alone (its spatial outputs are empty),
1 channel-spatial, 2 spatial-channel, 3 parallel; a folded BatchNorm needs arrangement 0
or 1.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from .._jit import FusedOps, load_fused

__all__ = ["fused_forward", "fused_ops"]

_registered: list[bool] = []
_lock = threading.Lock()
# Positions in cbam_forward's arguments.
_X, _SHORTCUT, _HEAD_W, _HEAD_B = 0, 17, 20, 21
_N_ARGS = 26


def fused_ops() -> FusedOps | None:
    """The operators, built and registered on first call; ``None`` if they cannot be built."""
    ops = load_fused()
    if ops is not None and not _registered:
        with _lock:
            if not _registered:
                torch.library.register_fake("convattn::cbam_forward", _fake_forward)
                torch.library.register_fake("convattn::cbam_backward", _fake_backward)
                torch.library.register_autograd(
                    "convattn::cbam_forward", _backward, setup_context=_setup_context
                )
                _registered.append(True)
    return ops


def _fake_forward(x, w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b, rm, rv, arr, avg, mx, *rest):
    head, need_idx = rest[5], rest[11]
    n, c, h, w = x.shape
    spatial = arr != 0
    hw = h * w if spatial else 0
    i32 = torch.int32
    return [
        torch.empty_like(x),
        x.new_empty(n, c),
        x.new_empty(int(avg) + int(mx), n, c),
        x.new_empty((n if need_idx else 0, c), dtype=i32),
        x.new_empty(n, 2 if spatial else 0, h * w),
        x.new_empty((n if need_idx else 0, hw), dtype=i32),
        x.new_empty(n, hw),
        x.new_empty(4, dtype=torch.float64),
        x.new_empty(2),
        x.new_empty((2 if head else 0, c), dtype=torch.float64),
        x.new_empty(2 if head == 2 else 0, c),
        x.new_empty(n if head else 0, c),
    ]


def _fake_backward(g, x, w1, b1, w2, b2, conv_w, *rest):
    arr, norm, need_gx, relu, head = rest[7], rest[10], rest[12], rest[14], rest[15]
    spatial = arr != 0

    def vec(present: bool) -> torch.Tensor:  # a new tensor each: outputs never alias
        return x.new_empty(1 if present else 0)

    c = x.shape[1]
    return [
        torch.empty_like(x) if need_gx else vec(False),
        torch.empty_like(w1),
        torch.empty_like(b1),
        torch.empty_like(w2),
        torch.empty_like(b2),
        torch.empty_like(conv_w) if spatial else vec(False),
        vec(spatial and not norm),
        vec(spatial and norm),
        vec(spatial and norm),
        torch.empty_like(x) if relu else vec(False),
        x.new_empty(c if head else 0),
        x.new_empty(c if head else 0),
    ]


def _save(ctx: Any, inputs: tuple, out: list[torch.Tensor] | tuple) -> None:
    """Saves what the backward reads: x, the parameters, the small outputs, y for the
    ReLU's mask, and the folded BatchNorm's parameters and statistics."""
    x, w1, b1, w2, b2, conv_w = inputs[:6]
    relu, head = inputs[18], inputs[19]
    ctx.save_for_backward(
        x,
        w1,
        b1,
        w2,
        b2,
        conv_w,
        *out[1:8],
        out[0] if relu else None,
        inputs[_HEAD_W] if head else None,
        inputs[_HEAD_B] if head else None,
        out[9] if head else None,
        out[11] if head else None,
    )
    ctx.cfg = (*inputs[11:16], relu, head)  # arrangement, use_avg, use_max, norm, batch_stats


def _setup_context(ctx: Any, inputs: tuple, output: list[torch.Tensor]) -> None:
    _save(ctx, inputs, output)
    ctx.mark_non_differentiable(*output[1:])


def _backward(ctx: Any, grads: list[torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
    return _gradients(ctx, grads[0], below_autograd=False)


def _gradients(ctx: Any, gy: torch.Tensor, below_autograd: bool) -> tuple[torch.Tensor | None, ...]:
    x, w1, b1, w2, b2, conv_w, *saved = ctx.saved_tensors
    small, (out, head_w, head_b, hstats, zsum) = saved[:7], saved[7:]
    arr, use_avg, use_max, norm, batch_stats, relu, head = ctx.cfg
    fmt = torch.contiguous_format if x.is_contiguous() else torch.channels_last
    g = gy.contiguous(memory_format=fmt)
    if g.stride() != x.stride():  # size-1 dimensions: the kernels want x's strides exactly
        g = torch.empty_like(x).copy_(g)
    need = ctx.needs_input_grad
    ops = fused_ops()
    if ops is None:  # cannot happen: the forward ran them
        raise RuntimeError("convattn: fused operators vanished between forward and backward")
    args = (
        g, x, w1, b1, w2, b2, conv_w, *small, arr, use_avg, use_max, norm, batch_stats,
        need[_X], out, relu, head, head_w, head_b, hstats, zsum,
    )  # fmt: skip
    if below_autograd:
        with torch._C._AutoDispatchBelowAutograd():
            grads = ops.backward(*args)
    else:
        grads = ops.backward(*args)
    gx, gw1, gb1, gw2, gb2, gconv_w, gconv_b, gbn_w, gbn_b, gsc, ghead_w, ghead_b = grads
    res: list[torch.Tensor | None] = [None] * _N_ARGS
    res[:9] = [gx, gw1, gb1, gw2, gb2, gconv_w, gconv_b, gbn_w, gbn_b]
    res[_SHORTCUT] = gsc if relu else gy  # without the ReLU the shortcut's gradient is g
    res[_HEAD_W], res[_HEAD_B] = ghead_w, ghead_b
    # Only where asked: an absent (None) input, such as BatchNorm's weight with
    # affine=False, must get None.
    return tuple(r if n else None for r, n in zip(res, need, strict=True))


class _EagerFused(torch.autograd.Function):
    """The registered autograd formula, applied in eager mode without the per-call pytree
    handling of the ``torch.library`` wrapper (hundreds of microseconds per call)."""

    @staticmethod
    def forward(ctx: Any, *inputs: Any) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        ops = fused_ops()
        with torch._C._AutoDispatchBelowAutograd():
            out = ops.forward(*inputs)
        _save(ctx, inputs, out)
        ctx.mark_non_differentiable(out[8], out[10])
        return out[0], out[8], out[10]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gy: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        return _gradients(ctx, gy, below_autograd=True)


def fused_forward(ops: FusedOps | None, *inputs: Any) -> tuple[torch.Tensor, ...]:
    """``(y, batch, hbatch)`` of ``cbam_forward(*inputs)`` with autograd (see the module
    docstring); ``ops`` may be ``None`` while compiling."""
    if torch.compiler.is_compiling():
        out = torch.ops.convattn.cbam_forward.default(*inputs)
        return out[0], out[8], out[10]
    if torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in inputs
    ):
        return _EagerFused.apply(*inputs)
    with torch._C._AutoDispatchBelowAutograd():
        out = ops.forward(*inputs)
    return out[0], out[8], out[10]
