"""Gradients of the float64 reference (``reference.py``) by central finite differences.

The loss is ``sum(ref.cbam(x, m) * g)``; a gradient is checked along random directions
(its inner product with each), or element by element. Nothing here calls convattn: the
module is only a holder of float64 parameters that the reference reads, perturbed in
place and restored.
"""

from __future__ import annotations

import numpy as np
import torch

import reference as ref

EPS = 1e-6


def loss(m64: torch.nn.Module, x: np.ndarray, g: np.ndarray, training: bool) -> float:
    return float((ref.cbam(x, m64, training=training) * g).sum())


def _fd(f, a: np.ndarray, d: np.ndarray) -> float:
    """(f(a + eps d) - f(a - eps d)) / 2 eps, with ``a`` perturbed in place."""
    a += EPS * d
    up = f()
    a -= 2 * EPS * d
    down = f()
    a += EPS * d
    return (up - down) / (2 * EPS)


def directional(m64, x, g, training, grads: dict, *, rtol: float, dirs: int = 2) -> None:
    """Check ``grads`` ({"x": ..., parameter name: ...}) against the reference along
    ``dirs`` random directions each: |<grad, d> - fd| <= rtol * sum |grad_i d_i| + 1e-9."""
    holders = {"x": x, **holders_of(m64)}
    along_directions(lambda: loss(m64, x, g, training), holders, grads, rtol=rtol, dirs=dirs)


def holders_of(m64: torch.nn.Module) -> dict[str, np.ndarray]:
    """The module's float64 parameters by name, as arrays viewing them (perturbed in place)."""
    return {n: p.detach().numpy() for n, p in m64.named_parameters()}


def along_directions(f, holders: dict, grads: dict, *, rtol: float, dirs: int = 2) -> None:
    """Check ``grads`` of the scalar ``f()`` in the arrays ``holders`` (by the same names)
    along ``dirs`` random directions each, as :func:`directional`."""
    rng = np.random.default_rng(0)
    for name, got in grads.items():
        a = holders[name]
        got = ref.arr(got).reshape(a.shape)
        for _ in range(dirs):
            d = rng.standard_normal(a.shape)
            fd = _fd(f, a, d)
            inner = float((got * d).sum())
            scale = float(np.abs(got * d).sum())
            assert abs(inner - fd) <= rtol * scale + 1e-9, (name, inner, fd, scale)


def elementwise(m64, x, g, training, name: str) -> np.ndarray:
    """The reference's gradient in parameter ``name`` (or "x"), element by element."""
    a = x if name == "x" else dict(m64.named_parameters())[name].detach().numpy()
    out = np.zeros(a.shape)
    for i in np.ndindex(a.shape):
        d = np.zeros(a.shape)
        d[i] = 1.0
        out[i] = _fd(lambda: loss(m64, x, g, training), a, d)
    return out


def running_stats(m64, x: np.ndarray) -> tuple[float, float]:
    """The spatial BatchNorm's running mean and variance after one training step on x."""
    ch, sp = m64.channel, m64.spatial
    if m64.arrangement == "channel-spatial":  # the spatial gate sees x * Mc(x)
        x = x * ref.channel_gate(x, ch, ch.pool_types)
    s = ref.spatial_logits(x, sp)
    bn, mom = sp.bn, sp.bn.momentum
    rm, rv = ref.arr(bn.running_mean)[0], ref.arr(bn.running_var)[0]
    return (1 - mom) * rm + mom * s.mean(), (1 - mom) * rv + mom * s.var(ddof=1)
