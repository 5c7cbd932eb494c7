"""The block's last BatchNorm folded in front of the Triton CBAM kernels: its statistics
forward, its gradients backward.

In a residual block's tail ``relu(attn(bn(z)) + shortcut)`` the attention kernels read
``z`` and apply ``bn`` as a per-channel scale and shift ``a z + b`` wherever they load it
(``_load`` in :mod:`.kernels`), so ``bn(z)`` is never written. Here: the batch's
per-channel mean and variance of ``z`` in one pass (a two-level Chan et al. combination
of per-tile moments, so no large sums of squares cancel), and, backward, from the
gradient ``gx`` of ``bn(z)``, the BatchNorm's weight and bias gradients and that of
``z`` (``nn.BatchNorm2d``'s formulas: with batch statistics
``gz = a (gx - mean(gx) - x_hat mean(gx x_hat))``, with running statistics ``gz = a gx``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["head_backward", "head_scale_shift", "head_stats"]

Tensor = torch.Tensor
F32, F64 = torch.float32, torch.float64


@triton.jit
def moments(z_ptr, out_ptr, N, C, HW, s_n, s_c, s_p, BLOCK_C: tl.constexpr,
            BLOCK_P: tl.constexpr):  # fmt: skip
    """Per (n, channel block): mean and sum of squared deviations over the positions of z
    into out (2, N, C), tile by tile combined as Chan et al.'s parallel variance."""
    n, cb = tl.program_id(0), tl.program_id(1)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    base = n.to(tl.int64) * s_n + c[:, None] * s_c
    mean = tl.zeros((BLOCK_C,), dtype=tl.float32)
    m2 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for p0 in range(0, HW, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        m = (c < C)[:, None] & (p < HW)[None, :]
        z = tl.load(z_ptr + base + p[None, :] * s_p, mask=m, other=0.0).to(tl.float32)
        seen, count = p0 * 1.0, tl.minimum(HW - p0, BLOCK_P) * 1.0
        t_mean = tl.sum(z, 1) / count
        d = tl.where(m, z - t_mean[:, None], 0.0)
        delta = t_mean - mean
        mean += delta * (count / (seen + count))
        m2 += tl.sum(d * d, 1) + delta * delta * (seen * count / (seen + count))
    tl.store(out_ptr + n * C + c, mean, mask=c < C)
    tl.store(out_ptr + N * C + n * C + c, m2, mask=c < C)


@triton.jit
def grad_sums(g_ptr, z_ptr, mean_ptr, out_ptr, N, C, HW, s_n, s_c, s_p,
              BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """Per (n, channel block): ``sum_p g`` and ``sum_p g (z - mean[c])`` into out (2, N, C)."""
    n, cb = tl.program_id(0), tl.program_id(1)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    mu = tl.load(mean_ptr + c, mask=c < C, other=0.0)[:, None]
    base = n.to(tl.int64) * s_n + c[:, None] * s_c
    sg = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    sgz = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    for p0 in range(0, HW, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        m = (c < C)[:, None] & (p < HW)[None, :]
        off = base + p[None, :] * s_p
        g = tl.load(g_ptr + off, mask=m, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + off, mask=m, other=0.0).to(tl.float32)
        sg += g
        sgz += g * tl.where(m, z - mu, 0.0)
    tl.store(out_ptr + n * C + c, tl.sum(sg, 1), mask=c < C)
    tl.store(out_ptr + N * C + n * C + c, tl.sum(sgz, 1), mask=c < C)


@triton.jit
def input_grad(g_ptr, z_ptr, k_ptr, gz_ptr, C, HW, s_n, s_c, s_p, BLOCK_C: tl.constexpr,
               BLOCK_P: tl.constexpr):  # fmt: skip
    """gz = k0[c] g + k1[c] z + k2[c], per (n, channel block, position block)."""
    n, cb, pb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    m = (c < C)[:, None] & (p < HW)[None, :]
    off = n.to(tl.int64) * s_n + c[:, None] * s_c + p[None, :] * s_p
    k0 = tl.load(k_ptr + c, mask=c < C, other=0.0)[:, None]
    k1 = tl.load(k_ptr + C + c, mask=c < C, other=0.0)[:, None]
    k2 = tl.load(k_ptr + 2 * C + c, mask=c < C, other=0.0)[:, None]
    g = tl.load(g_ptr + off, mask=m, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + off, mask=m, other=0.0).to(tl.float32)
    tl.store(gz_ptr + off, (k0 * g + k1 * z + k2).to(gz_ptr.dtype.element_ty), mask=m)


def _launch(kernel, z: Tensor, tiles: tuple[int, int], *args, grid3: bool = False) -> None:
    n, c, h, w = z.shape
    bc, bp = tiles
    grid = (n, triton.cdiv(c, bc), triton.cdiv(h * w, bp)) if grid3 else (n, triton.cdiv(c, bc))
    geo = (c, h * w, z.stride(0), z.stride(1), z.stride(3))
    kernel[grid](*args, *(() if grid3 else (n,)), *geo, BLOCK_C=bc, BLOCK_P=bp)


def head_stats(z: Tensor, tiles, head: int, rm, rv, eps: float) -> tuple[Tensor, Tensor]:
    """``hstats`` (2, C) [mean; invstd] that normalise z (the batch's with ``head`` 2,
    the running statistics with 1), and the batch's [mean; unbiased variance] (2, C)
    (zeros with running statistics)."""
    c = z.shape[1]
    if head == 1:
        mean, var = rm.to(F32), rv.to(F32)
        return torch.stack([mean, torch.rsqrt(var + eps)]), z.new_zeros((2, c), dtype=F32)
    part = z.new_empty((2, z.shape[0], c), dtype=F32)
    _launch(moments, z, tiles, z, part)
    means, m2 = part.to(F64).unbind()  # (N, C): per sample, HW values each
    count = z.numel() // c
    mean = means.mean(0)
    m2 = m2.sum(0) + (means - mean).square().sum(0) * (count // z.shape[0])
    var = m2 / count
    hstats = torch.stack([mean, torch.rsqrt(var + eps)]).to(F32)
    return hstats, torch.stack([mean, m2 / max(count - 1, 1)]).to(F32)


def head_scale_shift(hstats: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
    """[a; b] (2, C) with ``bn(z) = a z + b``."""
    mean, invstd = hstats.unbind()
    a = invstd if w is None else w.to(F32) * invstd
    shift = -mean * a if b is None else b.to(F32) - mean * a
    return torch.stack([a, shift]).contiguous()


def head_backward(gx: Tensor, z: Tensor, tiles, hstats: Tensor, head: int, w, b, need_gz: bool):
    """From ``gx`` (float32, z's strides), the gradient of ``bn(z)``: those of z (empty
    without ``need_gz``), of the BatchNorm's weight and of its bias."""
    mean, invstd = hstats.unbind()
    part = z.new_empty((2, z.shape[0], z.shape[1]), dtype=F32)
    _launch(grad_sums, z, tiles, gx, z, mean.contiguous(), part)
    sg, sgz = part.to(F64).sum(1).unbind()
    g_b, g_w = sg, sgz * invstd.to(F64)  # sum g, sum g x_hat
    gz = z.new_empty(0)
    if need_gz:
        a = head_scale_shift(hstats, w, b)[0].to(F64)
        k0, k1, k2 = a, torch.zeros_like(a), torch.zeros_like(a)
        if head == 2:  # batch statistics: the mean and variance depend on z
            count = z.numel() // z.shape[1]
            m1, m2 = sg / count, g_w / count
            istd = invstd.to(F64)
            k1, k2 = -a * istd * m2, a * (istd * mean.to(F64) * m2 - m1)
        k = torch.stack([k0, k1, k2]).to(F32).contiguous()
        gz = torch.empty_like(z)
        _launch(input_grad, z, tiles, gx, z, k, gz, grid3=True)
    g_w = None if w is None else g_w.to(w.dtype)
    g_b = None if b is None else g_b.to(b.dtype)
    return gz, g_w, g_b
