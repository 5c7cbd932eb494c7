"""Triton kernels of the forward and backward passes of CBAM (every arrangement) and of
the channel gate alone (SE).

Paper: Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018,
https://arxiv.org/abs/1807.06521, Eq. (1)-(3). The math is that of
:class:`convattn.layers.CBAM`; see :mod:`convattn.fused.triton` for the plan of passes.

Every kernel addresses an (N, C, H, W) tensor as ``n * s_n + c * s_c + p * s_p`` with
``p = h * W + w`` (valid for contiguous and channels_last tensors with canonical strides),
loads the input's dtype and accumulates in float32. Small maps, of N*C or N*H*W values,
are dense float32: ``mc`` (N, C), ``maps`` (N, 2, H*W) as [max; mean], ``s`` (N, H*W),
``stats`` = [A, B, mean, invstd] of the spatial gate ``ms = sigmoid(A * s + B)``, ``gv``
(2, N, C) the gradients of the pooled [avg; max] vectors. Maxima send their gradient to
the first maximal element (their argmax indices are int32).

Every arrangement computes ``y = x * mc * ms``; they differ in what the pools read:
channel-spatial pools ``x * mc`` over channels, spatial-channel pools ``x * ms`` over
positions, parallel pools ``x`` for both. With ``V`` the gradient reaching x through the
pooled vectors (``gavg / HW`` and ``gmax`` at the argmax position) and ``M`` that through
the pooling maps (``gmean / C`` and ``gmax`` at the argmax channel):
``gx = g mc ms + V (ms if spatial-channel) + M (mc if channel-spatial)``,
``gmc = sum_p x (g ms + M if channel-spatial)`` and
``gz = ms (1 - ms) sum_c x (g mc + V if spatial-channel)``, z the gate's logit.
The flags are compile-time constants: ``HAS_MS`` (a spatial gate), ``CS`` and ``SC``;
for a block's tail, ``HEAD`` (x is ``a[c] z + b[c]``, the BatchNorm applied to the z
stored, ``ab`` (2, C)) and, in ``scale``, ``ADD`` (the shortcut) and ``RELU``.
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
def _gate(s_ptr, stats_ptr, n, p, HW):
    """The spatial gate sigmoid(A * s + B) at positions p of sample n (0 outside)."""
    a, b = tl.load(stats_ptr), tl.load(stats_ptr + 1)
    pm = p < HW
    return tl.where(pm, tl.sigmoid(a * tl.load(s_ptr + n * HW + p, mask=pm, other=0.0) + b), 0.0)


@triton.jit
def _load(x_ptr, off, m, ab_ptr, c, C, HEAD: tl.constexpr):
    """x at the offsets in float32 (0 where masked), or ``a[c] x + b[c]`` with ``HEAD``:
    the block's last BatchNorm folded in front, ``ab`` (2, C) its scale and shift."""
    x = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
    if HEAD:
        a = tl.load(ab_ptr + c, mask=c < C, other=0.0)[:, None]
        b = tl.load(ab_ptr + C + c, mask=c < C, other=0.0)[:, None]
        x = tl.where(m, x * a + b, 0.0)
    return x


@triton.jit
def pool_positions(x_ptr, ab_ptr, s_ptr, stats_ptr, avg_ptr, max_ptr, idx_ptr, C, HW, s_n,
                   s_c, s_p, HEAD: tl.constexpr, SC: tl.constexpr, BLOCK_C: tl.constexpr,
                   BLOCK_P: tl.constexpr):  # fmt: skip
    """Per (n, channel block): mean, max and first argmax over the positions of x
    (of x * ms with ``SC``)."""
    n, cb = tl.program_id(0), tl.program_id(1)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    base = n.to(tl.int64) * s_n + c[:, None] * s_c
    total = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    best = tl.full((BLOCK_C, BLOCK_P), float("-inf"), dtype=tl.float32)
    where = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.int32)
    for p0 in range(0, HW, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        m = cm[:, None] & (p < HW)[None, :]
        v = _load(x_ptr, base + p[None, :] * s_p, m, ab_ptr, c, C, HEAD)
        if SC:
            v = v * _gate(s_ptr, stats_ptr, n, p, HW)[None, :]
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
def pool_channels(x_ptr, ab_ptr, mc_ptr, maps_ptr, idx_ptr, C, HW, s_n, s_c, s_p,
                  HEAD: tl.constexpr, CS: tl.constexpr, BLOCK_C: tl.constexpr,
                  BLOCK_P: tl.constexpr):  # fmt: skip
    """Per (n, position block): max (first argmax) and mean over channels of x
    (of x * mc with ``CS``)."""
    n, pb = tl.program_id(0), tl.program_id(1)
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = p < HW
    base = n.to(tl.int64) * s_n + p[None, :] * s_p
    total = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    best = tl.full((BLOCK_C, BLOCK_P), float("-inf"), dtype=tl.float32)
    where = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.int32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        m = (c < C)[:, None] & pm[None, :]
        v = _load(x_ptr, base + c[:, None] * s_c, m, ab_ptr, c, C, HEAD)
        if CS:
            v = v * tl.load(mc_ptr + n * C + c, mask=c < C, other=0.0)[:, None]
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
def _tile(C, HW, s_n, s_c, s_p, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """The (n, channel block, position block) tile of this program: n, its channels and
    positions, their mask and offsets."""
    n, cb, pb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    m = (c < C)[:, None] & (p < HW)[None, :]
    return n, c, p, m, n.to(tl.int64) * s_n + c[:, None] * s_c + p[None, :] * s_p


@triton.jit
def scale(x_ptr, ab_ptr, y_ptr, mc_ptr, s_ptr, stats_ptr, r_ptr, C, HW, s_n, s_c, s_p,
          HEAD: tl.constexpr, HAS_MS: tl.constexpr, ADD: tl.constexpr, RELU: tl.constexpr,
          BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """y = x * mc[n, c] (* ms[n, p] with ``HAS_MS``), plus the residual r with ``ADD``,
    then the ReLU with ``RELU``; per (n, channel block, position block)."""
    n, c, p, m, off = _tile(C, HW, s_n, s_c, s_p, BLOCK_C, BLOCK_P)
    y = _load(x_ptr, off, m, ab_ptr, c, C, HEAD)
    y = y * tl.load(mc_ptr + n * C + c, mask=c < C, other=0.0)[:, None]
    if HAS_MS:
        y = y * _gate(s_ptr, stats_ptr, n, p, HW)[None, :]
    if ADD:
        y += tl.load(r_ptr + off, mask=m, other=0.0).to(tl.float32)
    if RELU:
        y = tl.maximum(y, 0.0)
    tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _v_term(gv_ptr, idx_hw_ptr, N, n, c, p, C, HW):
    """V: the gradient at (c, p) through the pooled vectors, gavg / HW + gmax at argmax."""
    cm = c < C
    gavg = tl.load(gv_ptr + n * C + c, mask=cm, other=0.0)
    gmax = tl.load(gv_ptr + N * C + n * C + c, mask=cm, other=0.0)
    top = tl.load(idx_hw_ptr + n * C + c, mask=cm, other=-1)
    return gavg[:, None] / HW + tl.where(p[None, :] == top[:, None], gmax[:, None], 0.0)


@triton.jit
def _m_term(gmaps_ptr, idx_c_ptr, n, c, p, C, HW):
    """M: the gradient at (c, p) through the pooling maps, gmean / C + gmax at argmax."""
    pm = p < HW
    gmax = tl.load(gmaps_ptr + n * 2 * HW + p, mask=pm, other=0.0)
    gmean = tl.load(gmaps_ptr + n * 2 * HW + HW + p, mask=pm, other=0.0)
    top = tl.load(idx_c_ptr + n * HW + p, mask=pm, other=-1)
    return gmean[None, :] / C + tl.where(c[:, None] == top[None, :], gmax[None, :], 0.0)


@triton.jit
def grad_spatial(g_ptr, x_ptr, ab_ptr, mc_ptr, s_ptr, stats_ptr, gv_ptr, idx_hw_ptr, gz_ptr,
                 N, C, HW, s_n, s_c, s_p, HEAD: tl.constexpr, SC: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """Per (n, position block): the gradient of the gate's logit z = A s + B,
    ``gz = ms (1 - ms) sum_c x (g mc + V if SC)``."""
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
        x = _load(x_ptr, off, m, ab_ptr, c, C, HEAD)
        gx1 = g * tl.load(mc_ptr + n * C + c, mask=c < C, other=0.0)[:, None]
        if SC:
            gx1 += _v_term(gv_ptr, idx_hw_ptr, N, n, c, p, C, HW)
        acc += tl.where(m, gx1 * x, 0.0)
    ms = _gate(s_ptr, stats_ptr, n, p, HW)
    tl.store(gz_ptr + n * HW + p, tl.sum(acc, 0) * ms * (1.0 - ms), mask=pm)


@triton.jit
def grad_mc(g_ptr, x_ptr, ab_ptr, s_ptr, stats_ptr, gmaps_ptr, idx_c_ptr, gmc_ptr, C, HW,
            s_n, s_c, s_p, HEAD: tl.constexpr, HAS_MS: tl.constexpr, CS: tl.constexpr,
            BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """Per (n, channel block): the channel gate's gradient ``sum_p x (g ms + M if CS)``."""
    n, cb = tl.program_id(0), tl.program_id(1)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    base = n.to(tl.int64) * s_n + c[:, None] * s_c
    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    for p0 in range(0, HW, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        m = (c < C)[:, None] & (p < HW)[None, :]
        off = base + p[None, :] * s_p
        gx1 = tl.load(g_ptr + off, mask=m, other=0.0).to(tl.float32)
        if HAS_MS:
            gx1 = gx1 * _gate(s_ptr, stats_ptr, n, p, HW)[None, :]
        if CS:
            gx1 += _m_term(gmaps_ptr, idx_c_ptr, n, c, p, C, HW)
        acc += gx1 * _load(x_ptr, off, m, ab_ptr, c, C, HEAD)
    tl.store(gmc_ptr + n * C + c, tl.sum(acc, 1), mask=c < C)


@triton.jit
def grad_x(g_ptr, s_ptr, stats_ptr, gmaps_ptr, idx_c_ptr, mc_ptr, gv_ptr, idx_hw_ptr,
           gx_ptr, N, C, HW, s_n, s_c, s_p, HAS_MS: tl.constexpr, CS: tl.constexpr,
           SC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """gx = g mc ms + V (ms if SC) + M (mc if CS), M only with ``HAS_MS``."""
    n, c, p, m, off = _tile(C, HW, s_n, s_c, s_p, BLOCK_C, BLOCK_P)
    mc = tl.load(mc_ptr + n * C + c, mask=c < C, other=0.0)[:, None]
    gx = tl.load(g_ptr + off, mask=m, other=0.0).to(tl.float32) * mc
    v = _v_term(gv_ptr, idx_hw_ptr, N, n, c, p, C, HW)
    if HAS_MS:
        ms = _gate(s_ptr, stats_ptr, n, p, HW)[None, :]
        if SC:
            v = v * ms
        mt = _m_term(gmaps_ptr, idx_c_ptr, n, c, p, C, HW)
        if CS:
            mt = mt * mc
        gx = gx * ms + mt
    gx += v
    tl.store(gx_ptr + off, gx, mask=m)  # stored in gx's dtype
