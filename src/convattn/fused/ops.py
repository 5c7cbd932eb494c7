"""The fused CBAM operators ``torch.ops.convattn.cbam_forward`` and ``cbam_backward``.

The C++ kernels (``convattn/fused/csrc``, built by :mod:`convattn.fused.build`) register
the two operators; this module adds what makes them ordinary PyTorch operators: fake
kernels (shapes only, for ``torch.compile`` and export tracing) and the autograd formula
that joins them, so that eager mode and compiled graphs run the same operator, opaque to
the compiler. Both operators are pure functions (running statistics are updated by the
caller).

Their arguments and results are the named tuples below, whose fields are checked once
against the C++ schema when the operators are registered, so no code addresses them by
position. ``cbam_forward`` computes ``y = [relu](attention(x') [+ shortcut])`` where
``x' = x``, or with ``head`` 1 (running statistics) or 2 (batch statistics)
``x' = BatchNorm(x)`` with the parameters ``head_*``: the tail and the last BatchNorm of a
residual block folded into the attention. Arrangement 0 is the channel gate alone (its
spatial results are empty), 1 channel-spatial, 2 spatial-channel, 3 parallel; a folded
BatchNorm needs arrangement 0 or 1. Argmax indices are left empty (first dimension 0)
without ``need_idx``.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import torch

from .build import FusedOps, load_fused

__all__ = ["BackwardArgs", "ForwardArgs", "ForwardOut", "fused_forward", "fused_ops"]

Tensor = torch.Tensor
OptTensor = torch.Tensor | None


class ForwardArgs(NamedTuple):
    """The arguments of ``cbam_forward``, in the schema's order."""

    x: Tensor
    w1: Tensor  # channel MLP: fc1 weight, bias; fc2 weight, bias
    b1: Tensor
    w2: Tensor
    b2: Tensor
    conv_w: OptTensor  # spatial gate: conv weight, and its bias or its BatchNorm
    conv_b: OptTensor
    bn_w: OptTensor
    bn_b: OptTensor
    running_mean: OptTensor  # read only with running statistics
    running_var: OptTensor
    arrangement: int
    use_avg: bool
    use_max: bool
    norm: bool  # the spatial gate has a BatchNorm
    batch_stats: bool  # ... normalising with the batch's statistics
    eps: float
    shortcut: OptTensor  # the residual added after the attention
    relu: bool  # then a ReLU
    head: int  # the BatchNorm folded in front: 0 none, 1 running, 2 batch statistics
    head_w: OptTensor
    head_b: OptTensor
    head_rm: OptTensor
    head_rv: OptTensor
    head_eps: float
    need_idx: bool  # argmax indices, for a backward


class ForwardOut(NamedTuple):
    """The results of ``cbam_forward``."""

    y: Tensor  # the output
    mc: Tensor  # channel gate (N, C)
    v: Tensor  # pooled vectors (P, N, C)
    idx_hw: Tensor  # argmax over positions (N, C)
    maps: Tensor  # spatial pooling maps (N, 2, H*W)
    idx_c: Tensor  # argmax over channels (N, H*W)
    s: Tensor  # spatial logits before normalisation (N, H*W)
    stats: Tensor  # float64 [A, B, mean, invstd] of the spatial gate sigmoid(A s + B)
    batch: Tensor  # batch [mean, unbiased var] of s
    hstats: Tensor  # folded BatchNorm: float64 [mean; invstd] (2, C)
    hbatch: Tensor  # ... its batch [mean; unbiased var] (2, C), batch statistics only
    zsum: Tensor  # ... per-sample channel sums of its input less its mean (N, C)


class BackwardArgs(NamedTuple):
    """The arguments of ``cbam_backward``, in the schema's order."""

    g: Tensor
    x: Tensor
    w1: Tensor
    b1: Tensor
    w2: Tensor
    b2: Tensor
    conv_w: OptTensor
    mc: Tensor
    v: Tensor
    idx_hw: Tensor
    maps: Tensor
    idx_c: Tensor
    s: Tensor
    stats: Tensor
    arrangement: int
    use_avg: bool
    use_max: bool
    norm: bool
    batch_stats: bool
    need_gx: bool
    out: OptTensor  # the forward's output, for the ReLU's mask
    relu: bool
    head: int
    head_w: OptTensor
    head_b: OptTensor
    hstats: OptTensor
    zsum: OptTensor


class BackwardOut(NamedTuple):
    """The results of ``cbam_backward`` (absent gradients are empty tensors)."""

    x: Tensor
    w1: Tensor
    b1: Tensor
    w2: Tensor
    b2: Tensor
    conv_w: Tensor
    conv_b: Tensor
    bn_w: Tensor
    bn_b: Tensor
    shortcut: Tensor
    head_w: Tensor
    head_b: Tensor


_registered: list[bool] = []
_lock = threading.Lock()


def _check_schema(op: Any, fields: tuple[str, ...]) -> None:
    names = tuple(a.name for a in op._schema.arguments)
    if names != fields:
        raise RuntimeError(f"convattn: operator {op} takes {names}; Python expects {fields}")


def fused_ops() -> FusedOps | None:
    """The operators, built and registered on first call; ``None`` if they cannot be built."""
    ops = load_fused()
    if ops is not None and not _registered:
        with _lock:
            if not _registered:
                _check_schema(ops.forward, ForwardArgs._fields)
                _check_schema(ops.backward, BackwardArgs._fields)
                torch.library.register_fake("convattn::cbam_forward", _fake_forward)
                torch.library.register_fake("convattn::cbam_backward", _fake_backward)
                torch.library.register_autograd(
                    "convattn::cbam_forward", _backward, setup_context=_setup_context
                )
                _registered.append(True)
    return ops


def _fake_forward(*args: Any) -> list[Tensor]:
    a = ForwardArgs(*args)
    x, i32 = a.x, torch.int32
    n, c, h, w = x.shape
    spatial = a.arrangement != 0
    hw = h * w if spatial else 0
    rows = n if a.need_idx else 0
    out = ForwardOut(
        y=torch.empty_like(x),
        mc=x.new_empty(n, c),
        v=x.new_empty(int(a.use_avg) + int(a.use_max), n, c),
        idx_hw=x.new_empty((rows, c), dtype=i32),
        maps=x.new_empty(n, 2 if spatial else 0, h * w),
        idx_c=x.new_empty((rows, hw), dtype=i32),
        s=x.new_empty(n, hw),
        stats=x.new_empty(4, dtype=torch.float64),
        batch=x.new_empty(2),
        hstats=x.new_empty((2 if a.head else 0, c), dtype=torch.float64),
        hbatch=x.new_empty(2 if a.head == 2 else 0, c),
        zsum=x.new_empty(n if a.head else 0, c),
    )
    return list(out)


def _fake_backward(*args: Any) -> list[Tensor]:
    a = BackwardArgs(*args)
    x, c, spatial = a.x, a.x.shape[1], a.arrangement != 0

    def vec(present: bool) -> Tensor:  # a new tensor each: outputs never alias
        return x.new_empty(1 if present else 0)

    out = BackwardOut(
        x=torch.empty_like(x) if a.need_gx else vec(False),
        w1=torch.empty_like(a.w1),
        b1=torch.empty_like(a.b1),
        w2=torch.empty_like(a.w2),
        b2=torch.empty_like(a.b2),
        conv_w=torch.empty_like(a.conv_w) if spatial else vec(False),
        conv_b=vec(spatial and not a.norm),
        bn_w=vec(spatial and a.norm),
        bn_b=vec(spatial and a.norm),
        shortcut=torch.empty_like(x) if a.relu else vec(False),
        head_w=x.new_empty(c if a.head else 0),
        head_b=x.new_empty(c if a.head else 0),
    )
    return list(out)


def _save(ctx: Any, inputs: tuple, output: list[Tensor] | tuple) -> None:
    """Saves what the backward reads: x, the parameters, the small results, y for the
    ReLU's mask, and the folded BatchNorm's parameters and statistics."""
    a, o = ForwardArgs(*inputs), ForwardOut(*output)
    head = a.head
    ctx.save_for_backward(
        a.x, a.w1, a.b1, a.w2, a.b2, a.conv_w,
        o.mc, o.v, o.idx_hw, o.maps, o.idx_c, o.s, o.stats,
        o.y if a.relu else None,
        a.head_w if head else None, a.head_b if head else None,
        o.hstats if head else None, o.zsum if head else None,
    )  # fmt: skip
    ctx.options = (a.arrangement, a.use_avg, a.use_max, a.norm, a.batch_stats, a.relu, head)


def _setup_context(ctx: Any, inputs: tuple, output: list[Tensor]) -> None:
    _save(ctx, inputs, output)
    ctx.mark_non_differentiable(*output[1:])


def _backward(ctx: Any, grads: list[Tensor]) -> tuple[Tensor | None, ...]:
    return _gradients(ctx, grads[0], below_autograd=False)


def _grad_like_x(gy: Tensor, x: Tensor) -> Tensor:
    """``gy`` with exactly ``x``'s strides, as the kernels read it."""
    fmt = torch.contiguous_format if x.is_contiguous() else torch.channels_last
    g = gy.contiguous(memory_format=fmt)
    return g if g.stride() == x.stride() else torch.empty_like(x).copy_(g)  # size-1 dims


def _gradients(ctx: Any, gy: Tensor, below_autograd: bool) -> tuple[Tensor | None, ...]:
    x, w1, b1, w2, b2, conv_w, mc, v, ihw, maps, ic, s, stats, *rest = ctx.saved_tensors
    out, head_w, head_b, hstats, zsum = rest
    arr, use_avg, use_max, norm, batch_stats, relu, head = ctx.options
    need = dict(zip(ForwardArgs._fields, ctx.needs_input_grad, strict=True))
    ops = fused_ops()
    if ops is None:  # cannot happen: the forward ran them
        raise RuntimeError("convattn: fused operators vanished between forward and backward")
    args = BackwardArgs(
        _grad_like_x(gy, x), x, w1, b1, w2, b2, conv_w, mc, v, ihw, maps, ic, s, stats,
        arr, use_avg, use_max, norm, batch_stats, need["x"], out, relu, head,
        head_w, head_b, hstats, zsum,
    )  # fmt: skip
    if below_autograd:
        with torch._C._AutoDispatchBelowAutograd():
            g = BackwardOut(*ops.backward(*args))
    else:
        g = BackwardOut(*ops.backward(*args))
    by_name = g._asdict()
    by_name["shortcut"] = g.shortcut if relu else gy  # without the ReLU it is g itself
    # Only where asked: an absent (None) input, such as BatchNorm's weight with
    # affine=False, must get None.
    return tuple(by_name.get(f) if need[f] else None for f in ForwardArgs._fields)


class _EagerFused(torch.autograd.Function):
    """The registered autograd formula, applied in eager mode without the per-call pytree
    handling of the ``torch.library`` wrapper, whose cost per call is large beside the
    kernels' at small shapes)."""

    @staticmethod
    def forward(ctx: Any, *inputs: Any) -> tuple[Tensor, ...]:  # type: ignore[override]
        ops = fused_ops()
        with torch._C._AutoDispatchBelowAutograd():
            out = ForwardOut(*ops.forward(*inputs))
        _save(ctx, inputs, out)
        ctx.mark_non_differentiable(out.batch, out.hbatch)
        return out.y, out.batch, out.hbatch

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gy: Tensor, *_: Any) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        return _gradients(ctx, gy, below_autograd=True)


def fused_forward(ops: FusedOps | None, args: ForwardArgs) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, batch, hbatch)`` of ``cbam_forward(args)`` with autograd; ``ops`` may be
    ``None`` while compiling."""
    if torch.compiler.is_compiling():
        out = ForwardOut(*torch.ops.convattn.cbam_forward.default(*args))
        return out.y, out.batch, out.hbatch
    if torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in args):
        return _EagerFused.apply(*args)
    with torch._C._AutoDispatchBelowAutograd():
        out = ForwardOut(*ops.forward(*args))
    return out.y, out.batch, out.hbatch
