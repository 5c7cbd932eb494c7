"""Triton kernels of CBAM's forward and backward passes (channel-spatial arrangement).

Paper: Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018,
https://arxiv.org/abs/1807.06521, Eq. (1)-(3). The math is that of
:class:`convattn.layers.CBAM`; see :mod:`convattn.fused.triton` for the plan of passes.

Every kernel addresses an (N, C, H, W) tensor as ``n * s_n + c * s_c + p * s_p`` with
``p = h * W + w`` (valid for contiguous and channels_last tensors with canonical strides),
loads the input's dtype and accumulates in float32. Small maps, of N*C or N*H*W values,
are dense float32: ``mc`` (N, C), ``maps`` (N, 2, H*W) as [max; mean], ``s`` (N, H*W),
``stats`` = [A, B, mean, invstd] of the spatial gate ``sigmoid(A * s + B)``. Maxima send
their gradient to the first maximal element (their argmax indices are int32).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = [
    "conv_kxk",
    "conv_weight_grad",
    "grad_mc",
    "grad_spatial",
    "grad_x",
    "pool_channels",
    "pool_positions",
    "scale",
]


@triton.jit
def pool_positions(x_ptr, avg_ptr, max_ptr, idx_ptr, C, HW, s_n, s_c, s_p,
                   BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """Per (n, channel block): mean, max and first argmax of x over the positions."""
    n, cb = tl.program_id(0), tl.program_id(1)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    base = x_ptr + n.to(tl.int64) * s_n + c[:, None] * s_c
    total = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    best = tl.full((BLOCK_C, BLOCK_P), float("-inf"), dtype=tl.float32)
    where = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.int32)
    for p0 in range(0, HW, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        m = cm[:, None] & (p < HW)[None, :]
        v = tl.load(base + p[None, :] * s_p, mask=m, other=0.0).to(tl.float32)
        total += v
        v = tl.where(m, v, float("-inf"))
        better = v > best  # strict: each lane keeps its first maximum
        best = tl.where(better, v, best)
        where = tl.where(better, p[None, :], where)
    top = tl.max(best, 1)
    first = tl.min(tl.where(best == top[:, None], where, HW), 1)
    out = n * C + c
    tl.store(avg_ptr + out, tl.sum(total, 1) / HW, mask=cm)
    tl.store(max_ptr + out, top, mask=cm)
    tl.store(idx_ptr + out, tl.minimum(first, HW - 1), mask=cm)


@triton.jit
def pool_channels(x_ptr, mc_ptr, maps_ptr, idx_ptr, C, HW, s_n, s_c, s_p,
                  BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """Per (n, position block): max (first argmax) and mean over channels of x * mc."""
    n, pb = tl.program_id(0), tl.program_id(1)
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = p < HW
    base = x_ptr + n.to(tl.int64) * s_n + p[None, :] * s_p
    total = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    best = tl.full((BLOCK_C, BLOCK_P), float("-inf"), dtype=tl.float32)
    where = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.int32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        m = (c < C)[:, None] & pm[None, :]
        g = tl.load(mc_ptr + n * C + c, mask=c < C, other=0.0)
        v = tl.load(base + c[:, None] * s_c, mask=m, other=0.0).to(tl.float32) * g[:, None]
        total += v
        v = tl.where(m, v, float("-inf"))
        better = v > best
        best = tl.where(better, v, best)
        where = tl.where(better, c[:, None], where)
    top = tl.max(best, 0)
    first = tl.min(tl.where(best == top[None, :], where, C), 0)
    out = maps_ptr + n * 2 * HW + p
    tl.store(out, top, mask=pm)
    tl.store(out + HW, tl.sum(total, 0) / C, mask=pm)
    tl.store(idx_ptr + n * HW + p, tl.minimum(first, C - 1), mask=pm)


@triton.jit
def _taps(p, H, W, K: tl.constexpr, TAPS: tl.constexpr):
    """Flat source positions of the K*K taps around positions p, (BLOCK_P, TAPS), and
    their mask (zero padding; TAPS >= K*K, a power of 2)."""
    t = tl.arange(0, TAPS)
    hh = (p // W)[:, None] + (t // K - K // 2)[None, :]
    ww = (p % W)[:, None] + (t % K - K // 2)[None, :]
    inside = (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
    return hh * W + ww, inside & (p < H * W)[:, None] & (t < K * K)[None, :]


@triton.jit
def conv_kxk(in_ptr, w_ptr, out_ptr, H, W, CIN: tl.constexpr, COUT: tl.constexpr,
             K: tl.constexpr, TAPS: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """Zero-padded 'same' k x k cross-correlation of dense float32 (N, CIN, H*W) maps
    with weights (COUT, CIN, K, K), per (n * COUT + co, position block)."""
    row, pb = tl.program_id(0), tl.program_id(1)
    n, co = row // COUT, row % COUT
    HW = H * W
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    src, m = _taps(p, H, W, K, TAPS)
    t = tl.arange(0, TAPS)
    acc = tl.zeros((BLOCK_P, TAPS), dtype=tl.float32)
    for ci in tl.static_range(CIN):
        wt = tl.load(w_ptr + (co * CIN + ci) * K * K + t, mask=t < K * K, other=0.0)
        acc += tl.load(in_ptr + (n * CIN + ci) * HW + src, mask=m, other=0.0) * wt[None, :]
    tl.store(out_ptr + row * HW + p, tl.sum(acc, 1), mask=p < HW)


@triton.jit
def conv_weight_grad(gs_ptr, maps_ptr, part_ptr, N, H, W, K: tl.constexpr,
                     TAPS: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """Per (map, sample): its part of the (1, 2, K, K) weight's gradient,
    ``sum_p gs[n, p] * maps[n, map, p + offset]``, into ``part`` (2, N, TAPS)."""
    ch, n = tl.program_id(0), tl.program_id(1)
    HW = H * W
    acc = tl.zeros((BLOCK_P, TAPS), dtype=tl.float32)
    for p0 in range(0, HW, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        src, m = _taps(p, H, W, K, TAPS)
        gs = tl.load(gs_ptr + n * HW + p, mask=p < HW, other=0.0)
        acc += gs[:, None] * tl.load(maps_ptr + (n * 2 + ch) * HW + src, mask=m, other=0.0)
    t = tl.arange(0, TAPS)
    tl.store(part_ptr + (ch * N + n) * TAPS + t, tl.sum(acc, 0))


@triton.jit
def _gate(s_ptr, stats_ptr, idx):
    """The spatial gate sigmoid(A * s + B) at flat map positions ``idx``."""
    a, b = tl.load(stats_ptr), tl.load(stats_ptr + 1)
    return tl.sigmoid(a * tl.load(s_ptr + idx, mask=idx >= 0, other=0.0) + b)


@triton.jit
def scale(x_ptr, y_ptr, mc_ptr, s_ptr, stats_ptr, C, HW, s_n, s_c, s_p,
          BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """y = x * mc[n, c] * sigmoid(A * s[n, p] + B), per (n, channel block, position block)."""
    n, cb, pb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    m = (c < C)[:, None] & (p < HW)[None, :]
    off = n.to(tl.int64) * s_n + c[:, None] * s_c + p[None, :] * s_p
    x = tl.load(x_ptr + off, mask=m, other=0.0)
    mc = tl.load(mc_ptr + n * C + c, mask=c < C, other=0.0)
    ms = _gate(s_ptr, stats_ptr, tl.where(p < HW, n * HW + p, -1))
    y = x.to(tl.float32) * mc[:, None] * ms[None, :]
    tl.store(y_ptr + off, y.to(x.dtype), mask=m)


@triton.jit
def grad_spatial(g_ptr, x_ptr, mc_ptr, s_ptr, stats_ptr, gz_ptr, C, HW, s_n, s_c, s_p,
                 BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """Per (n, position block): the gradient of the gate's logit z = A s + B,
    ``gz = ms (1 - ms) sum_c g * x * mc``."""
    n, pb = tl.program_id(0), tl.program_id(1)
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = p < HW
    base = n.to(tl.int64) * s_n + p[None, :] * s_p
    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        m = (c < C)[:, None] & pm[None, :]
        off = base + c[:, None] * s_c
        g = tl.load(g_ptr + off, mask=m, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
        mc = tl.load(mc_ptr + n * C + c, mask=c < C, other=0.0)
        acc += g * x * mc[:, None]
    ms = _gate(s_ptr, stats_ptr, tl.where(pm, n * HW + p, -1))
    tl.store(gz_ptr + n * HW + p, tl.sum(acc, 0) * ms * (1.0 - ms), mask=pm)


@triton.jit
def _grad_x1(g_ptr, s_ptr, stats_ptr, gmaps_ptr, idx_c_ptr, n, c, p, m, off, C, HW):
    """Gradient at x1 = x * mc: g * ms + gmean / C + gmax where c is the first argmax."""
    pm = p < HW
    g = tl.load(g_ptr + off, mask=m, other=0.0).to(tl.float32)
    ms = _gate(s_ptr, stats_ptr, tl.where(pm, n * HW + p, -1))
    gmax = tl.load(gmaps_ptr + n * 2 * HW + p, mask=pm, other=0.0)
    gmean = tl.load(gmaps_ptr + n * 2 * HW + HW + p, mask=pm, other=0.0)
    top = tl.load(idx_c_ptr + n * HW + p, mask=pm, other=-1)
    hit = c[:, None] == top[None, :]
    return g * ms[None, :] + gmean[None, :] / C + tl.where(hit, gmax[None, :], 0.0)


@triton.jit
def grad_mc(g_ptr, x_ptr, s_ptr, stats_ptr, gmaps_ptr, idx_c_ptr, gmc_ptr, C, HW,
            s_n, s_c, s_p, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """Per (n, channel block): the channel gate's gradient ``sum_p grad_x1 * x``."""
    n, cb = tl.program_id(0), tl.program_id(1)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    base = n.to(tl.int64) * s_n + c[:, None] * s_c
    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    for p0 in range(0, HW, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        m = (c < C)[:, None] & (p < HW)[None, :]
        off = base + p[None, :] * s_p
        gx1 = _grad_x1(g_ptr, s_ptr, stats_ptr, gmaps_ptr, idx_c_ptr, n, c, p, m, off, C, HW)
        acc += gx1 * tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
    tl.store(gmc_ptr + n * C + c, tl.sum(acc, 1), mask=c < C)


@triton.jit
def grad_x(g_ptr, s_ptr, stats_ptr, gmaps_ptr, idx_c_ptr, mc_ptr, gv_ptr, idx_hw_ptr,
           gx_ptr, N, C, HW, s_n, s_c, s_p, BLOCK_C: tl.constexpr,
           BLOCK_P: tl.constexpr):  # fmt: skip
    """gx = grad_x1 * mc + gavg / HW + gmax at the first argmax over positions;
    ``gv`` is (2, N, C): the gradients of the pooled avg and max vectors."""
    n, cb, pb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    cm = c < C
    m = cm[:, None] & (p < HW)[None, :]
    off = n.to(tl.int64) * s_n + c[:, None] * s_c + p[None, :] * s_p
    gx1 = _grad_x1(g_ptr, s_ptr, stats_ptr, gmaps_ptr, idx_c_ptr, n, c, p, m, off, C, HW)
    mc = tl.load(mc_ptr + n * C + c, mask=cm, other=0.0)
    gavg = tl.load(gv_ptr + n * C + c, mask=cm, other=0.0)
    gmax = tl.load(gv_ptr + N * C + n * C + c, mask=cm, other=0.0)
    top = tl.load(idx_hw_ptr + n * C + c, mask=cm, other=-1)
    gx = gx1 * mc[:, None] + gavg[:, None] / HW
    gx += tl.where(p[None, :] == top[:, None], gmax[:, None], 0.0)
    tl.store(gx_ptr + off, gx, mask=m)  # stored in gx's dtype
