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
    """BatchNorm over axis 1 of (N, C) or (N, C, H, W); batch statistics when training."""
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
    if training:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
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


def bam(x, m):
    """Eval-mode BAM: F + F * sigmoid(BN(MLP(avg F)) + BN(f3(f2(f1(f0 F)))))."""
    w0, b0, w1 = (arr(t) for t in (m.fc1.weight, m.fc1.bias, m.fc2.weight))
    b1 = 0.0 if m.fc2.bias is None else arr(m.fc2.bias)
    mc = batchnorm(relu(x.mean(axis=(2, 3)) @ w0.T + b0) @ w1.T + b1, m.channel_bn)
    s = x
    layers = list(m.spatial)
    for i, layer in enumerate(layers):
        if isinstance(layer, torch.nn.Conv2d):
            b = None if layer.bias is None else arr(layer.bias)
            d = layer.dilation[0]
            pad = d if layer.kernel_size[0] == 3 else 0
            s = conv2d(s, arr(layer.weight), b, padding=pad, dilation=d)
        elif isinstance(layer, torch.nn.BatchNorm2d):
            s = batchnorm(s, layer)
            if i + 1 < len(layers) and isinstance(layers[i + 1], torch.nn.ReLU):
                s = relu(s)
    return x + x * sigmoid(mc[:, :, None, None] + s)


def selective_kernel(x, m):
    """Eval-mode SK: V = sum_m softmax_m(A_m z) * U_m."""
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
        feats.append(relu(batchnorm(u, bn)))
    s = sum(feats).mean(axis=(2, 3))  # (N, C)
    z = relu(batchnorm(s @ arr(m.fc_reduce.weight)[:, :, 0, 0].T, m.bn))
    logits = z @ arr(m.fc_select.weight)[:, :, 0, 0].T  # (N, M*C)
    n_b, c = len(feats), feats[0].shape[1]
    logits = logits.reshape(-1, n_b, c)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    a = e / e.sum(axis=1, keepdims=True)
    return sum(a[:, i, :, None, None] * feats[i] for i in range(n_b))


def split_attention(x, m):
    """Eval-mode ResNeSt split attention, with the r-softmax written as explicit loops."""
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
        )
    )
    splits = [u[:, i * c : (i + 1) * c] for i in range(r)]
    gap = sum(splits).mean(axis=(2, 3), keepdims=True)
    h = relu(batchnorm(conv2d(gap, arr(m.fc1.weight), arr(m.fc1.bias), groups=k), m.bn1))
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
