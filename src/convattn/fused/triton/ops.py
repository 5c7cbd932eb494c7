"""The Triton CBAM operators ``convattn::triton_cbam_forward`` and ``triton_cbam_backward``.

Both are :func:`torch.library.custom_op` operators: pure functions (the caller updates
the BatchNorms' running statistics from the forward's ``batch`` and ``hbatch`` results,
the latter for the BatchNorm of a block's tail, :mod:`.norm`) whose bodies are
Triton kernels (:mod:`.kernels`) and a few torch operations on tensors of N*C or N*H*W
values (the channel MLP, the spatial BatchNorm's statistics), with fake (meta) kernels
for ``torch.compile`` and the autograd formula that joins them. The compiler keeps each
as one opaque node, as the C++ operators. (``torch.library.triton_op`` would let Inductor
see the kernels, but its fake kernel is the body itself, which cannot be traced while
Triton's interpreter runs the kernels, so the tests could not check that path.)

``mode`` says what follows the spatial convolution: 0 its bias, 1 a BatchNorm with
running statistics, 2 a BatchNorm with the batch's statistics. Parameters of any
floating dtype are read as float32; gradients come back in their dtypes. Not differentiable twice.
"""

from __future__ import annotations

from typing import Any

import torch
import triton

from ..ops import _grad_like_x
from . import kernels as K
from . import norm as N

__all__ = ["cbam_backward", "cbam_forward"]

Tensor = torch.Tensor
F32 = torch.float32


def _tiles(x: Tensor) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P) of the big tensor's tiles: wide along its contiguous dimension."""
    c, hw = x.shape[1], x.shape[2] * x.shape[3]
    wide_c = x.stride(1) == 1 and c > 1  # channels_last
    bc, bp = (64, 16) if wide_c else (8, 128)
    return min(bc, triton.next_power_of_2(c)), min(bp, triton.next_power_of_2(hw))


def _conv_tiles(conv_w: Tensor, hw: int) -> tuple[int, int, int]:
    """k, the taps padded to a power of 2, and the positions per program of the conv."""
    k = conv_w.shape[-1]
    taps = triton.next_power_of_2(k * k)
    return k, taps, max(1, min(4096 // taps, triton.next_power_of_2(hw)))


def _geometry(x: Tensor) -> tuple[int, int, int, int, int, int]:
    """n, c, hw and the strides of sample, channel and flat position."""
    n, c, h, w = x.shape
    return n, c, h * w, x.stride(0), x.stride(1), x.stride(3)


def _mlp(v: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """Channel logits ``sum_p W1 relu(W0 v_p + b0) + b1``, (P, N, C) -> (N, C)."""
    h = torch.relu(v @ w1.t() + b1)  # (P, N, C/r)
    return (h @ w2.t() + b2).sum(0)


def _gate_stats(s: Tensor, conv_b, bn_w, bn_b, rm, rv, mode: int, eps: float):
    """stats = [A, B, mean, invstd] of the gate sigmoid(A s + B), and the batch's
    [mean, unbiased variance] of s (zeros unless ``mode`` is 2)."""
    one, zero = s.new_ones(()), s.new_zeros(())
    batch = s.new_zeros(2)
    if mode == 0:
        b = zero if conv_b is None else conv_b.to(F32).reshape(())
        return torch.stack([one, b, zero, one]), batch
    if mode == 1:
        mean, var = rm.to(F32).reshape(()), rv.to(F32).reshape(())
    else:
        var, mean = torch.var_mean(s, correction=0)
        m = s.numel()
        batch = torch.stack([mean, var * (m / (m - 1))])
    invstd = torch.rsqrt(var + eps)
    gamma = one if bn_w is None else bn_w.to(F32).reshape(())
    beta = zero if bn_b is None else bn_b.to(F32).reshape(())
    a = gamma * invstd
    return torch.stack([a, beta - mean * a, mean, invstd]), batch


def _placeholder(x: Tensor, dtype: torch.dtype = F32) -> Tensor:
    """A one-element stand-in for a map the channel gate alone does not have."""
    return x.new_zeros(1, dtype=dtype)


def _head(x: Tensor, ab: Tensor | None) -> dict[str, Any]:
    """The kernels' arguments for the folded BatchNorm's [a; b] (``None``: none)."""
    return {"ab_ptr": x if ab is None else ab, "HEAD": ab is not None}


def _pool_positions(x: Tensor, ab, s: Tensor, stats: Tensor, sc: bool) -> tuple[Tensor, ...]:
    """avg, max and argmax over positions of x (of x * ms with ``sc``), each (N, C)."""
    n, c, hw, s_n, s_c, s_p = _geometry(x)
    bc, bp = _tiles(x)
    avg, top = x.new_empty((n, c), dtype=F32), x.new_empty((n, c), dtype=F32)
    idx_hw = x.new_empty((n, c), dtype=torch.int32)
    K.pool_positions[(n, triton.cdiv(c, bc))](
        x, s_ptr=s, stats_ptr=stats, avg_ptr=avg, max_ptr=top, idx_ptr=idx_hw, C=c, HW=hw,
        s_n=s_n, s_c=s_c, s_p=s_p, SC=sc, BLOCK_C=bc, BLOCK_P=bp, **_head(x, ab),
    )  # fmt: skip
    return avg, top, idx_hw


def _spatial(x: Tensor, ab, mc: Tensor, cs: bool, conv_w, conv_b, bn, mode: int, eps: float):
    """The spatial gate's maps, their argmax, its logits, [A, B, mean, invstd] and the
    batch's statistics; the maps pool x over channels (x * mc with ``cs``)."""
    n, c, hw, s_n, s_c, s_p = _geometry(x)
    bc, bp = _tiles(x)
    maps = x.new_empty((n, 2, hw), dtype=F32)
    idx_c = x.new_empty((n, hw), dtype=torch.int32)
    K.pool_channels[(n, triton.cdiv(hw, bp))](
        x, mc_ptr=mc, maps_ptr=maps, idx_ptr=idx_c, C=c, HW=hw, s_n=s_n, s_c=s_c, s_p=s_p,
        CS=cs, BLOCK_C=bc, BLOCK_P=bp, **_head(x, ab),
    )  # fmt: skip
    s = x.new_empty((n, hw), dtype=F32)
    k, taps, bpc = _conv_tiles(conv_w, hw)
    K.conv_kxk[(n, triton.cdiv(hw, bpc))](
        maps, conv_w.to(F32).contiguous(), s, x.shape[2], x.shape[3],
        CIN=2, COUT=1, K=k, TAPS=taps, BLOCK_P=bpc,
    )  # fmt: skip
    return maps, idx_c, s, *_gate_stats(s, conv_b, *bn, mode, eps)


@torch.library.custom_op("convattn::triton_cbam_forward", mutates_args=())
def cbam_forward(
    x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, conv_w: Tensor | None,
    conv_b: Tensor | None, bn_w: Tensor | None, bn_b: Tensor | None,
    running_mean: Tensor | None, running_var: Tensor | None,
    use_avg: bool, use_max: bool, arrangement: int, mode: int, eps: float,
    shortcut: Tensor | None, relu: bool, head: int, head_w: Tensor | None,
    head_b: Tensor | None, head_rm: Tensor | None, head_rv: Tensor | None, head_eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
           Tensor]:  # fmt: skip
    """CBAM on ``x`` with canonical strides (``arrangement``: 0 the channel gate alone,
    1 channel-spatial, 2 spatial-channel, 3 parallel):
    returns ``(y, mc, v, idx_hw, maps, idx_c, s, stats, batch)``: the output, the channel
    gate (N, C), the pooled vectors used (P, N, C), their argmax over positions (N, C),
    the spatial pooling maps (N, 2, H*W), their argmax over channels (N, H*W), the spatial
    logits before normalisation (N, H*W), the gate's [A, B, mean, invstd] and the batch's
    [mean, unbiased variance] of the logits (the channel gate alone: one-element maps,
    logits and argmax, stats [1, 0, 0, 1] and zero batch statistics).

    The residual tail: with ``head`` 1 (running statistics) or 2 (the batch's) CBAM reads
    BatchNorm(x) with the parameters ``head_*``, ``shortcut`` is added to its output and
    ``relu`` applies the ReLU. Two more results: ``hstats`` (2, C) [mean; invstd] that
    normalised x and ``hbatch`` the batch's [mean; unbiased variance] (both (2, 0)
    without ``head``, ``hbatch`` zeros with running statistics)."""
    if shortcut is not None and shortcut.stride() != x.stride():  # the kernels read both alike
        raise ValueError(f"shortcut strides {shortcut.stride()} differ from x's {x.stride()}")
    n, c, hw, s_n, s_c, s_p = _geometry(x)
    bc, bp = _tiles(x)
    params = [t.to(F32) for t in (w1, b1, w2, b2)]
    bn = (bn_w, bn_b, running_mean, running_var)
    ab, hstats, hbatch = None, x.new_zeros((2, 0), dtype=F32), x.new_zeros((2, 0), dtype=F32)
    if head:
        hstats, hbatch = N.head_stats(x, (bc, bp), head, head_rm, head_rv, head_eps)
        ab = N.head_scale_shift(hstats, head_w, head_b)
    maps, idx_c, s = _placeholder(x), _placeholder(x, torch.int32), _placeholder(x)
    stats, batch = _gate_stats(s, None, None, None, None, None, 0, 0.0)
    if arrangement == 2:  # spatial first: the pools over positions read x * ms
        maps, idx_c, s, stats, batch = _spatial(x, ab, s, False, conv_w, conv_b, bn, mode, eps)
    avg, top, idx_hw = _pool_positions(x, ab, s, stats, arrangement == 2)
    v = torch.stack([t for t, used in ((avg, use_avg), (top, use_max)) if used])
    mc = torch.sigmoid(_mlp(v, *params))  # (N, C)
    if arrangement in (1, 3):
        maps, idx_c, s, stats, batch = _spatial(
            x, ab, mc, arrangement == 1, conv_w, conv_b, bn, mode, eps
        )
    y = torch.empty_like(x)
    K.scale[(n, triton.cdiv(c, bc), triton.cdiv(hw, bp))](
        x, y_ptr=y, mc_ptr=mc, s_ptr=s, stats_ptr=stats, r_ptr=x if shortcut is None else shortcut,
        C=c, HW=hw, s_n=s_n, s_c=s_c, s_p=s_p, HAS_MS=arrangement != 0,
        ADD=shortcut is not None, RELU=relu, BLOCK_C=bc, BLOCK_P=bp, **_head(x, ab),
    )  # fmt: skip
    return y, mc, v, idx_hw, maps, idx_c, s, stats, batch, hstats, hbatch


@cbam_forward.register_fake
def _fake_forward(x, w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b, running_mean, running_var,
                  use_avg, use_max, arrangement, mode, eps, shortcut, relu, head, head_w,
                  head_b, head_rm, head_rv, head_eps):  # fmt: skip
    n, c, h, w = x.shape
    i32, pools = torch.int32, int(use_avg) + int(use_max)
    maps, hw = ((n, 2, h * w), (n, h * w)) if arrangement else ((1,), (1,))
    heads = (2, c if head else 0)
    return (
        torch.empty_like(x), x.new_empty((n, c), dtype=F32), x.new_empty((pools, n, c), dtype=F32),
        x.new_empty((n, c), dtype=i32), x.new_empty(maps, dtype=F32),
        x.new_empty(hw, dtype=i32), x.new_empty(hw, dtype=F32),
        x.new_empty(4, dtype=F32), x.new_empty(2, dtype=F32),
        x.new_empty(heads, dtype=F32), x.new_empty(heads, dtype=F32),
    )  # fmt: skip


def _gate_backward(gz: Tensor, s: Tensor, stats: Tensor, mode: int):
    """(gs, sum gz, sum gz * s_hat): the logits' gradient and the gate's bias and weight
    gradients, from the gradient gz of the gate's logit z = A s + B."""
    a, _, mean, invstd = stats.unbind()
    s_hat = (s - mean) * invstd
    g_beta, g_gamma = gz.sum(), (gz * s_hat).sum()
    if mode == 2:  # batch statistics: the mean and variance depend on s
        return a * (gz - gz.mean() - s_hat * (g_gamma / s.numel())), g_beta, g_gamma
    return a * gz, g_beta, g_gamma


def _mlp_backward(glog: Tensor, v: Tensor, w1: Tensor, b1: Tensor, w2: Tensor):
    """Gradients of the channel MLP from the logits' gradient (N, C): those of the pooled
    vectors (P, N, C), of W0, b0, W1 and b1."""
    pre = v @ w1.t() + b1  # (P, N, C/r)
    gpre = (glog @ w2) * (pre > 0)  # relu passes no gradient at 0, as eager's
    gw2 = glog.t() @ torch.relu(pre).sum(0)
    gw1 = torch.einsum("pnh,pnc->hc", gpre, v)
    return gpre @ w1, gw1, gpre.sum((0, 1)), gw2, glog.sum(0) * v.shape[0]


def _spatial_backward(x, gz, s, stats, maps, conv_w, mode: int):
    """From the gate logit's gradient: that of the pooling maps (N, 2, H*W), of the conv
    weight and of the gate's bias and weight."""
    n = x.shape[0]
    gs, g_beta, g_gamma = _gate_backward(gz, s, stats, mode)
    k, taps, bpc = _conv_tiles(conv_w, s.shape[1])
    gmaps = torch.empty_like(maps)  # transposed conv: flipped taps
    flipped = conv_w.to(F32).flip(-1, -2).transpose(0, 1).contiguous()  # (2, 1, k, k)
    K.conv_kxk[(2 * n, triton.cdiv(s.shape[1], bpc))](
        gs, flipped, gmaps, x.shape[2], x.shape[3], CIN=1, COUT=2, K=k, TAPS=taps,
        BLOCK_P=bpc,
    )  # fmt: skip
    part = x.new_empty((2, n, taps), dtype=F32)  # per sample: a deterministic sum
    K.conv_weight_grad[(2, n)](
        gs, maps, part, n, x.shape[2], x.shape[3], K=k, TAPS=taps, BLOCK_P=bpc
    )
    gcw = part.sum(1)[:, : k * k].reshape(conv_w.shape).to(conv_w.dtype)
    return gmaps, gcw, g_beta.reshape(1), g_gamma.reshape(1)


def _pooled_grads(gv: Tensor, use_avg: bool, use_max: bool) -> Tensor:
    """The pooled vectors' gradients (P, N, C) as (2, N, C) [avg; max], zeros if unused."""
    zero = torch.zeros_like(gv[0])
    rows = iter(gv.unbind())
    return torch.stack([next(rows) if use_avg else zero, next(rows) if use_max else zero])


@torch.library.custom_op("convattn::triton_cbam_backward", mutates_args=())
def cbam_backward(
    g: Tensor, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
    conv_w: Tensor | None, mc: Tensor, v: Tensor, idx_hw: Tensor, maps: Tensor,
    idx_c: Tensor, s: Tensor, stats: Tensor, use_avg: bool, use_max: bool,
    arrangement: int, mode: int, need_gx: bool, head: int, head_w: Tensor | None,
    head_b: Tensor | None, hstats: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
           Tensor]:  # fmt: skip
    """Gradients of :func:`cbam_forward` from ``g`` (x's strides; already through the
    ReLU of a residual tail): ``(x, W0, b0, W1, b1, conv weight, gate bias (conv bias or
    BatchNorm bias), BatchNorm weight, folded BatchNorm weight, its bias)``; the input's
    is empty without ``need_gx``, the spatial gate's are empty or zero without one, the
    folded BatchNorm's empty without ``head`` or its parameters."""
    n, c, hw, s_n, s_c, s_p = _geometry(x)
    bc, bp = _tiles(x)
    geo = (c, hw, s_n, s_c, s_p)
    has_ms, cs, sc = arrangement != 0, arrangement == 1, arrangement == 2
    ab = N.head_scale_shift(hstats, head_w, head_b) if head else None
    gmaps, gcw, g_beta, g_gamma = maps, x.new_empty(0), x.new_zeros(1), x.new_zeros(1)
    gv2 = x.new_zeros((2, n, c), dtype=F32)

    def spatial() -> tuple[Tensor, ...]:  # the gate's logit, then the maps' gradients
        gz = x.new_empty((n, hw), dtype=F32)
        K.grad_spatial[(n, triton.cdiv(hw, bp))](
            g, x, mc_ptr=mc, s_ptr=s, stats_ptr=stats, gv_ptr=gv2, idx_hw_ptr=idx_hw, gz_ptr=gz,
            N=n, C=c, HW=hw, s_n=s_n, s_c=s_c, s_p=s_p, SC=sc, BLOCK_C=bc, BLOCK_P=bp,
            **_head(x, ab),
        )  # fmt: skip
        return _spatial_backward(x, gz, s, stats, maps, conv_w, mode)

    if has_ms and not sc:  # channel-spatial, parallel: the spatial gate needs no gv
        gmaps, gcw, g_beta, g_gamma = spatial()
    gmc = x.new_empty((n, c), dtype=F32)
    K.grad_mc[(n, triton.cdiv(c, bc))](
        g, x, s_ptr=s, stats_ptr=stats, gmaps_ptr=gmaps, idx_c_ptr=idx_c, gmc_ptr=gmc, C=c,
        HW=hw, s_n=s_n, s_c=s_c, s_p=s_p, HAS_MS=has_ms, CS=cs, BLOCK_C=bc, BLOCK_P=bp,
        **_head(x, ab),
    )  # fmt: skip
    w1f, b1f, w2f = w1.to(F32), b1.to(F32), w2.to(F32)
    gv, gw1, gb1, gw2, gb2 = _mlp_backward(gmc * mc * (1 - mc), v, w1f, b1f, w2f)
    gv2 = _pooled_grads(gv, use_avg, use_max)
    if sc:  # spatial-channel: the gate's gradient reaches x * ms through the pools too
        gmaps, gcw, g_beta, g_gamma = spatial()
    gx, g_hw, g_hb = x.new_empty(0), x.new_empty(0), x.new_empty(0)
    if need_gx or head:  # the folded BatchNorm's gradients need that of its output
        gx = torch.empty_like(x, dtype=F32 if head else x.dtype)
        K.grad_x[(n, triton.cdiv(c, bc), triton.cdiv(hw, bp))](
            g, s, stats, gmaps, idx_c, mc, gv2, idx_hw, gx, n, *geo, HAS_MS=has_ms, CS=cs,
            SC=sc, BLOCK_C=bc, BLOCK_P=bp,
        )  # fmt: skip
    if head:
        gx, g_hw, g_hb = N.head_backward(gx, x, (bc, bp), hstats, head, head_w, head_b, need_gx)
        g_hw, g_hb = (x.new_empty(0) if t is None else t for t in (g_hw, g_hb))
    return (
        gx, gw1.to(w1.dtype), gb1.to(b1.dtype), gw2.to(w2.dtype), gb2.to(b2.dtype), gcw,
        g_beta, g_gamma, g_hw, g_hb,
    )  # fmt: skip


@cbam_backward.register_fake
def _fake_backward(g, x, w1, b1, w2, b2, conv_w, mc, v, idx_hw, maps, idx_c, s, stats,
                   use_avg, use_max, arrangement, mode, need_gx, head, head_w, head_b,
                   hstats):  # fmt: skip
    gx = torch.empty_like(x) if need_gx else x.new_empty(0)
    grads = [torch.empty_like(t) for t in (w1, b1, w2, b2)]
    gcw = x.new_empty(0) if conv_w is None else torch.empty_like(conv_w)
    heads = [x.new_empty(0) if t is None or not head else torch.empty_like(t)
             for t in (head_w, head_b)]  # fmt: skip
    return gx, *grads, gcw, x.new_empty(1, dtype=F32), x.new_empty(1, dtype=F32), *heads


_FORWARD_ARGS = ("x", "w1", "b1", "w2", "b2", "conv_w", "conv_b", "bn_w", "bn_b",
                 "running_mean", "running_var", "use_avg", "use_max", "arrangement", "mode",
                 "eps", "shortcut", "relu", "head", "head_w", "head_b", "head_rm", "head_rv",
                 "head_eps")  # fmt: skip


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    a = dict(zip(_FORWARD_ARGS, inputs, strict=True))
    y, mc, v, idx_hw, maps, idx_c, s, stats, _, hstats, _ = output
    head = a["head"]
    ctx.save_for_backward(
        a["x"], a["w1"], a["b1"], a["w2"], a["b2"], a["conv_w"], mc, v, idx_hw, maps,
        idx_c, s, stats, a["head_w"] if head else None, a["head_b"] if head else None,
        hstats, y if a["relu"] else None,
    )  # fmt: skip
    ctx.options = (a["use_avg"], a["use_max"], a["arrangement"], a["mode"], head)
    ctx.dtypes = {k: a[k].dtype for k in ("conv_b", "bn_w", "bn_b") if a[k] is not None}
    ctx.mark_non_differentiable(*output[1:])


def _backward(ctx: Any, gy: Tensor, *_: Any) -> tuple[Tensor | None, ...]:
    x, *rest, head_w, head_b, hstats, y = ctx.saved_tensors
    need = dict(zip(_FORWARD_ARGS, ctx.needs_input_grad, strict=True))
    use_avg, use_max, arrangement, mode, head = ctx.options
    if y is not None:  # the tail's ReLU: no gradient where it output 0, as eager's
        gy = torch.where(y > 0, gy, 0)
    g = cbam_backward(
        _grad_like_x(gy, x),
        x,
        *rest,
        use_avg,
        use_max,
        arrangement,
        mode,
        need["x"],
        head,
        head_w,
        head_b,
        hstats,
    )  # looked up at call time, so tests can count the calls
    gx, gw1, gb1, gw2, gb2, gcw, g_beta, g_gamma, g_hw, g_hb = g
    bias = "conv_b" if mode == 0 else "bn_b"
    grads = {"x": gx, "w1": gw1, "b1": gb1, "w2": gw2, "b2": gb2, "conv_w": gcw,
             "shortcut": gy, "head_w": g_hw, "head_b": g_hb}  # fmt: skip
    grads[bias] = g_beta.to(ctx.dtypes.get(bias, g_beta.dtype))
    grads["bn_w"] = g_gamma.to(ctx.dtypes.get("bn_w", g_gamma.dtype))
    return tuple(grads.get(f) if need[f] else None for f in _FORWARD_ARGS)


cbam_forward.register_autograd(_backward, setup_context=_setup_context)
