"""The fused CBAM operators ``torch.ops.convattn.cbam_forward`` and ``cbam_backward``.

The C++ kernels (``convattn/csrc``, built by :mod:`convattn._jit`) register the two
operators; this module adds what makes them ordinary PyTorch operators: fake kernels
(shapes only, for ``torch.compile`` and export tracing) and the autograd formula that
joins them, so that eager mode and compiled graphs run the same operator, opaque to the
compiler. Both operators are pure functions (running statistics are updated by the caller).

``cbam_forward(x, w1, b1, w2, b2, conv_w?, conv_b?, bn_w?, bn_b?, running_mean?,
running_var?, arrangement, use_avg, use_max, norm, batch_stats, eps)`` returns
``[y, mc, v, idx_hw, maps, idx_c, s, stats, batch]``: the output, the channel gate (N, C),
the pooled vectors (P, N, C), the argmax over positions (N, C), the spatial pooling maps
(N, 2, H*W), the argmax over channels (N, H*W), the spatial logits before normalisation
(N, H*W), the float64 ``[A, B, mean, invstd]`` of the spatial gate ``sigmoid(A s + B)`` and
the batch ``[mean, unbiased var]`` of ``s``. Arrangement 0 is the channel gate alone (its
spatial outputs are empty), 1 channel-spatial, 2 spatial-channel, 3 parallel.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from .._jit import FusedOps, load_fused

__all__ = ["fused_forward", "fused_ops"]

_registered: list[bool] = []
_lock = threading.Lock()


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


def _fake_forward(x, w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b, rm, rv, arr, avg, mx, *_):
    n, c, h, w = x.shape
    hw = h * w if arr != 0 else 0
    i32 = torch.int32
    return [
        torch.empty_like(x),
        x.new_empty(n, c),
        x.new_empty(int(avg) + int(mx), n, c),
        x.new_empty((n, c), dtype=i32),
        x.new_empty(n, 2 if arr != 0 else 0, h * w),
        x.new_empty((n, hw), dtype=i32),
        x.new_empty(n, hw),
        x.new_empty(4, dtype=torch.float64),
        x.new_empty(2),
    ]


def _fake_backward(g, x, w1, b1, w2, b2, conv_w, *rest):
    arr, norm, need_gx = rest[7], rest[10], rest[12]
    spatial = arr != 0

    def vec(present: bool) -> torch.Tensor:  # a new tensor each: outputs never alias
        return x.new_empty(1 if present else 0)

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
    ]


def _setup_context(ctx: Any, inputs: tuple, output: list[torch.Tensor]) -> None:
    x, w1, b1, w2, b2, conv_w = inputs[:6]
    ctx.save_for_backward(x, w1, b1, w2, b2, conv_w, *output[1:8])
    ctx.cfg = inputs[11:16]  # arrangement, use_avg, use_max, norm, batch_stats
    ctx.mark_non_differentiable(*output[1:])


def _backward(ctx: Any, grads: list[torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
    return _gradients(ctx, grads[0], below_autograd=False)


def _gradients(ctx: Any, gy: torch.Tensor, below_autograd: bool) -> tuple[torch.Tensor | None, ...]:
    x, w1, b1, w2, b2, conv_w, *saved = ctx.saved_tensors
    fmt = torch.contiguous_format if x.is_contiguous() else torch.channels_last
    g = gy.contiguous(memory_format=fmt)
    if g.stride() != x.stride():  # size-1 dimensions: the kernels want x's strides exactly
        g = torch.empty_like(x).copy_(g)
    need_gx = ctx.needs_input_grad[0]
    ops = fused_ops()
    if ops is None:  # cannot happen: the forward ran them
        raise RuntimeError("convattn: fused operators vanished between forward and backward")
    args = (g, x, w1, b1, w2, b2, conv_w, *saved, *ctx.cfg, need_gx)
    if below_autograd:
        with torch._C._AutoDispatchBelowAutograd():
            grads = ops.backward(*args)
    else:
        grads = ops.backward(*args)
    # Only where asked: an absent (None) input, such as BatchNorm's weight with
    # affine=False, must get None.
    return (
        tuple(gr if need else None for gr, need in zip(grads, ctx.needs_input_grad, strict=False))
        + (None,) * 8
    )


class _EagerFused(torch.autograd.Function):
    """The registered autograd formula, applied in eager mode without the per-call pytree
    handling of the ``torch.library`` wrapper (hundreds of microseconds per call)."""

    @staticmethod
    def forward(ctx: Any, *inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        ops = fused_ops()
        with torch._C._AutoDispatchBelowAutograd():
            out = ops.forward(*inputs)
        x, w1, b1, w2, b2, conv_w = inputs[:6]
        ctx.save_for_backward(x, w1, b1, w2, b2, conv_w, *out[1:8])
        ctx.cfg = inputs[11:16]
        ctx.mark_non_differentiable(out[8])
        return out[0], out[8]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gy: torch.Tensor, _: Any) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        return _gradients(ctx, gy, below_autograd=True)


def fused_forward(ops: FusedOps, *inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, batch)`` of ``cbam_forward(*inputs)`` with autograd (see the module docstring)."""
    if torch.compiler.is_compiling():
        out = torch.ops.convattn.cbam_forward.default(*inputs)
        return out[0], out[8]
    if torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in inputs[:9]
    ):
        return _EagerFused.apply(*inputs)
    with torch._C._AutoDispatchBelowAutograd():
        out = ops.forward(*inputs)
    return out[0], out[8]
