"""Independent float64 NumPy re-computations of the attention modules, from the papers'
equations. Nothing here calls convattn; parameters are read out of a module and fed in as
arrays, so a bug in the library cannot cancel against itself."""

from __future__ import annotations

import numpy as np
import torch


def arr(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0)


def conv2d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
    """Direct convolution: x (N, Cin, H, W), w (Cout, Cin/groups, k, k)."""
    n, _, h, wd = x.shape
    cout, cin_g, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    wo = (wd + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    out = np.zeros((n, cout, ho, wo))
    cout_g = cout // groups
    for g in range(groups):
        xs = xp[:, g * cin_g : (g + 1) * cin_g]
        ws = w[g * cout_g : (g + 1) * cout_g]
        for i in range(k):
            for j in range(k):
                patch = xs[
                    :,
                    :,
                    i * dilation : i * dilation + stride * (ho - 1) + 1 : stride,
                    j * dilation : j * dilation + stride * (wo - 1) + 1 : stride,
                ]
                out[:, g * cout_g : (g + 1) * cout_g] += np.einsum(
                    "nchw,oc->nohw", patch, ws[:, :, i, j]
                )
    if b is not None:
        out += b[None, :, None, None]
    return out


def batchnorm(x, bn: torch.nn.Module, *, training: bool = False):
    """BatchNorm over axis 1 of (N, C) or (N, C, H, W). Training mode normalises with the
    batch mean and the biased batch variance (as torch; only its running variance is
    unbiased), evaluation mode with the module's running statistics."""
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
    if training:
        mean, var = x.mean(axis=axes), x.var(axis=axes, ddof=0)
    else:
        mean, var = arr(bn.running_mean), arr(bn.running_var)
    xhat = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + bn.eps)
    return xhat * arr(bn.weight).reshape(shape) + arr(bn.bias).reshape(shape)


def pool_hw(x, kind):
    if kind == "avg":
        return x.mean(axis=(2, 3))
    if kind == "max":
        return x.max(axis=(2, 3))
    if kind == "lp":
        return np.sqrt((x**2).sum(axis=(2, 3)))
    m = x.max(axis=(2, 3), keepdims=True)  # lse, shifted for stability
    return (m + np.log(np.exp(x - m).sum(axis=(2, 3), keepdims=True)))[:, :, 0, 0]


def channel_gate(x, ca, pools):
    """Mc = sigmoid(sum_p W1 relu(W0 p + b0) + b1), returned as (N, C, 1, 1)."""
    w0, b0, w1, b1 = (arr(t) for t in (ca.fc1.weight, ca.fc1.bias, ca.fc2.weight, ca.fc2.bias))
    logits = sum(relu(pool_hw(x, p) @ w0.T + b0) @ w1.T + b1 for p in pools)
    return sigmoid(logits)[:, :, None, None]


def spatial_logits(x, sa):
    """conv([max_c; mean_c]) (or conv(conv1x1(x))), the spatial map before BN: (N, 1, H, W)."""
    if sa.compress is not None:
        pooled = conv2d(x, arr(sa.compress.weight), arr(sa.compress.bias))
    else:
        pooled = np.concatenate([x.max(axis=1, keepdims=True), x.mean(axis=1, keepdims=True)], 1)
    k = sa.conv.weight.shape[-1]
    bias = None if sa.conv.bias is None else arr(sa.conv.bias)
    return conv2d(pooled, arr(sa.conv.weight), bias, padding=k // 2)


def spatial_gate(x, sa, *, training=False):
    """Ms = sigmoid(BN(conv([max_c; mean_c]))) or its conv1x1 / no-BN variants."""
    s = spatial_logits(x, sa)
    if sa.bn is not None:
        s = batchnorm(s, sa.bn, training=training)
    return sigmoid(s)


def cbam(x, m, *, training=False):
    pools = m.channel.pool_types
    if m.spatial is None:
        return x * channel_gate(x, m.channel, pools)
    if m.arrangement == "channel-spatial":
        x1 = x * channel_gate(x, m.channel, pools)
        return x1 * spatial_gate(x1, m.spatial, training=training)
    if m.arrangement == "spatial-channel":
        x1 = x * spatial_gate(x, m.spatial, training=training)
        return x1 * channel_gate(x1, m.channel, pools)
    return x * channel_gate(x, m.channel, pools) * spatial_gate(x, m.spatial, training=training)


def bam(x, m, *, r, d, training=False):
    """BAM, Park et al. Eq. (1)-(4), with the module's documented choices:
    F' = F + F * sigmoid(Mc(F) + Ms(F)), both maps broadcast to C x H x W.

    Mc(F) = BN(W1 relu(W0 AvgPool(F) + b0)): W0 C -> C/r with bias b0, W1 C/r -> C without
    bias (a BatchNorm follows). Ms(F) = BN(f3(f2(f1(f0(F))))): f0 a 1x1 conv C -> C/r, f1
    and f2 3x3 convs with dilation d and padding d (the map keeps its H x W), f3 a 1x1 conv
    C/r -> 1; BN and ReLU after f0, f1 and f2; no conv bias. ``r`` and ``d`` are the
    paper's symbols, given here, not read from the module. The weights are read by their
    documented names: ``fc1`` (W0, b0), ``fc2`` (W1), ``channel_bn``, and the spatial
    branch's ``spatial.<i>`` positions 0, 3, 6, 9 (f0..f3) and 1, 4, 7, 10 (their BNs)."""
    c = x.shape[1]
    h = max(1, c // r)
    p = dict(m.named_parameters())
    f = [f"spatial.{i}.weight" for i in (0, 3, 6, 9)]
    bns = [f"spatial.{i}" for i in (1, 4, 7, 10)]
    names = {"fc1.weight", "fc1.bias", "fc2.weight", "channel_bn.weight", "channel_bn.bias"}
    names |= {*f, *(f"{b}.{k}" for b in bns for k in ("weight", "bias"))}
    assert set(p) == names, sorted(set(p) ^ names)  # exactly these parameters: no biases
    shapes = [(h, c, 1, 1), (h, h, 3, 3), (h, h, 3, 3), (1, h, 1, 1)]
    assert [tuple(p[n].shape) for n in f] == shapes
    w0, b0, w1 = arr(p["fc1.weight"]), arr(p["fc1.bias"]), arr(p["fc2.weight"])
    assert w0.shape == (h, c) and w1.shape == (c, h)
    f0, f1, f2, f3 = (arr(p[n]) for n in f)
    mods = dict(m.named_modules())
    bn0, bn1, bn2, bn3 = (mods[b] for b in bns)

    def norm(z, b):
        return batchnorm(z, b, training=training)

    mc = norm(relu(x.mean(axis=(2, 3)) @ w0.T + b0) @ w1.T, mods["channel_bn"])  # (N, C)
    s = relu(norm(conv2d(x, f0), bn0))  # (N, C/r, H, W)
    s = relu(norm(conv2d(s, f1, padding=d, dilation=d), bn1))
    s = relu(norm(conv2d(s, f2, padding=d, dilation=d), bn2))
    ms = norm(conv2d(s, f3), bn3)  # (N, 1, H, W)
    return x + x * sigmoid(mc[:, :, None, None] + ms)


def selective_kernel(x, m, *, training=False):
    """SK: V = sum_m softmax_m(A_m z) * U_m (batch statistics in every BN when training)."""
    feats = []
    for i, branch in enumerate(m.branches):
        conv, bn = branch[0], branch[1]
        u = conv2d(
            x,
            arr(conv.weight),
            stride=conv.stride[0],
            padding=i + 1,
            dilation=i + 1,
            groups=conv.groups,
        )
        feats.append(relu(batchnorm(u, bn, training=training)))
    s = sum(feats).mean(axis=(2, 3))  # (N, C)
    z = relu(batchnorm(s @ arr(m.fc_reduce.weight)[:, :, 0, 0].T, m.bn, training=training))
    logits = z @ arr(m.fc_select.weight)[:, :, 0, 0].T  # (N, M*C)
    n_b, c = len(feats), feats[0].shape[1]
    logits = logits.reshape(-1, n_b, c)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    a = e / e.sum(axis=1, keepdims=True)
    return sum(a[:, i, :, None, None] * feats[i] for i in range(n_b))


def split_attention(x, m, *, training=False):
    """ResNeSt split attention, with the r-softmax written as explicit loops (batch
    statistics in every BN when training)."""
    r, k, c = m.radix, m.groups, m.out_channels
    conv = m.conv
    u = relu(
        batchnorm(
            conv2d(
                x,
                arr(conv.weight),
                stride=conv.stride[0],
                padding=conv.padding[0],
                groups=conv.groups,
            ),
            m.bn0,
            training=training,
        )
    )
    splits = [u[:, i * c : (i + 1) * c] for i in range(r)]
    gap = sum(splits).mean(axis=(2, 3), keepdims=True)
    fc1 = conv2d(gap, arr(m.fc1.weight), arr(m.fc1.bias), groups=k)  # (N, inter, 1, 1)
    h = relu(batchnorm(fc1, m.bn1, training=training))
    logits = conv2d(h, arr(m.fc2.weight), arr(m.fc2.bias), groups=k)[:, :, 0, 0]  # (N, R*C)
    weights = np.zeros((x.shape[0], r, c))
    cg = c // k  # channels per cardinal group; fc2 lays its outputs out [group][radix][cg]
    for g in range(k):
        for j in range(cg):
            idx = [g * r * cg + ri * cg + j for ri in range(r)]
            v = logits[:, idx]
            if r == 1:
                w = sigmoid(v)
            else:
                e = np.exp(v - v.max(axis=1, keepdims=True))
                w = e / e.sum(axis=1, keepdims=True)
            weights[:, :, g * cg + j] = w
    return sum(weights[:, i, :, None, None] * splits[i] for i in range(r))


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and BatchNorm statistics, so no term is hidden by an init value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
    return module
