"""Each attention module against a hand-worked example or the float64 NumPy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import reference as ref
from convattn.fused import fused_ops
from convattn.layers import (
    BAM,
    CBAM,
    ChannelAttention,
    SelectiveKernel,
    SpatialAttention,
    SplitAttentionConv,
    SqueezeExcite,
)
from convattn.layers.channel import pool_hw
from fused_spy import spy_fused

# The fused CPU kernels cover float64 CBAM, ChannelAttention and SE with avg/max pools and
# "avgmax" spatial pooling; each such test checks both implementations against the reference.
IMPLS = pytest.mark.parametrize("impl", ["eager", "fused"])


def _x(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the fused forward operator's calls, so that "fused" cannot silently run eager
    (and "eager" cannot run the kernels)."""
    return spy_fused(monkeypatch) or {"forward": 0}


def _pin(module, impl, fused_calls):
    """``module`` (returned) set to run ``impl``; skips "fused" without the extension."""
    if impl == "fused" and fused_ops() is None:
        pytest.skip("fused extension unavailable")
    module.impl = impl
    fused_calls["forward"] = 0
    return module


def _ran(impl, fused_calls):
    """Whether the one forward call since ``_pin`` ran the implementation pinned."""
    return fused_calls["forward"] == (1 if impl == "fused" else 0)


@IMPLS
def test_channel_attention_matches_hand_worked_example(impl, fused_calls):
    # Channel 0 holds [2, 1, 1, 1, 1, 1, 1, 0, 0]: avg 8/9, max 2. With r = 1, W0 = 0.5 I,
    # W1 = I and no biases each pooled value passes a scalar MLP, so
    # Mc_0 = sigmoid(0.5 * 8/9 + 0.5 * 2) = sigmoid(13/9) = 1 / (1 + 0.235883) = 0.809142.
    x = torch.tensor(
        [
            [[2.0, 1, 1], [1, 1, 1], [1, 0, 0]],  # avg 8/9, max 2
            [[3.0, 3, 3], [3, 3, 3], [3, 3, 3]],  # avg 3, max 3 -> sigmoid(3.0)
            [[-1.0, -2, -1], [-1, -1, -1], [-1, -1, -1]],  # relu kills both -> sigmoid(0)
        ]
    )[None]
    ca = _pin(ChannelAttention(3, reduction=1), impl, fused_calls)
    with torch.no_grad():
        ca.fc1.weight.copy_(0.5 * torch.eye(3))
        ca.fc2.weight.copy_(torch.eye(3))
        ca.fc1.bias.zero_()
        ca.fc2.bias.zero_()
    gate = ca.gate(x).flatten()
    assert gate[0].item() == pytest.approx(0.809142, abs=1e-6)
    assert gate[1].item() == pytest.approx(1 / (1 + math.exp(-3.0)), abs=1e-6)
    assert gate[2].item() == pytest.approx(0.5, abs=1e-7)
    # The output scales every position of a channel by its gate.
    by_hand = torch.tensor([0.809142, 1 / (1 + math.exp(-3.0)), 0.5])[:, None, None]
    torch.testing.assert_close(ca(x)[0], x[0] * by_hand, atol=3e-6, rtol=0)
    assert _ran(impl, fused_calls)


def test_spatial_attention_matches_hand_worked_example():
    # Two channels, one position of interest. With a 1x1 kernel [w_max, w_mean] = [1, 2],
    # no BatchNorm and bias -0.5, position (0, 0) has max 3, mean 2 -> sigmoid(3 + 4 - 0.5).
    sa = SpatialAttention(kernel_size=1, norm=False)
    with torch.no_grad():
        sa.conv.weight.copy_(torch.tensor([1.0, 2.0]).view(1, 2, 1, 1))
        sa.conv.bias.fill_(-0.5)
    x = torch.tensor([[[[3.0, 0.0]], [[1.0, -2.0]]]])  # (1, 2, 1, 2)
    gate = sa.gate(x).flatten()
    assert gate[0].item() == pytest.approx(1 / (1 + math.exp(-6.5)), abs=1e-7)
    assert gate[1].item() == pytest.approx(1 / (1 + math.exp(-(0.0 - 2.0 - 0.5))), abs=1e-7)


def _channel_attention_matches_reference(pools, impl, fused_calls):
    x = _x(3, 20, 5, 7)
    ca = ref.randomize_(ChannelAttention(20, reduction=4, pool_types=pools).double())
    want = x.numpy() * ref.channel_gate(x.numpy(), ca, pools)
    got = _pin(ca, impl, fused_calls)(x)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-10, atol=1e-12)
    assert _ran(impl, fused_calls)


@IMPLS
@pytest.mark.parametrize("pools", [("avg",), ("max",), ("avg", "max")])
def test_channel_attention_with_avg_max_pools_matches_reference(pools, impl, fused_calls):
    _channel_attention_matches_reference(pools, impl, fused_calls)


@pytest.mark.parametrize("pools", [("lp",), ("lse",), ("avg", "max", "lp", "lse")])
def test_channel_attention_with_lp_lse_pools_matches_reference(pools, fused_calls):
    _channel_attention_matches_reference(pools, "eager", fused_calls)  # no fused lp/lse


def test_lp_pool_value_and_gradient_equal_lp_pool2d_on_zero_and_nonzero_channels():
    # A post-ReLU map can have an all-zero channel: there sqrt(sum x^2) has an infinite
    # derivative and F.lp_pool2d gives the input gradient 0, elsewhere g * x / ||x||.
    x = torch.relu(_x(2, 4, 3, 5))
    x[0, 1] = 0.0
    x[1, 3] = 0.0
    x[1, 0] = 0.0
    x[1, 0, 2, 4] = 0.7  # a single non-zero value: gradient g at it
    x.requires_grad_()
    g = _x(2, 4, seed=2)
    got = pool_hw(x, "lp")
    (gx,) = torch.autograd.grad(got, x, g)
    want = F.lp_pool2d(x, 2, kernel_size=(3, 5)).flatten(1)
    (gx_want,) = torch.autograd.grad(want, x, g)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert torch.isfinite(gx).all()
    torch.testing.assert_close(gx, gx_want, rtol=1e-12, atol=1e-15)
    xn = x.detach().numpy()
    norm = np.sqrt((xn**2).sum(axis=(2, 3), keepdims=True))
    unit = np.divide(xn, norm, out=np.zeros_like(xn), where=norm > 0)
    by_hand = unit * g.numpy()[..., None, None]
    np.testing.assert_allclose(gx.numpy(), by_hand, rtol=1e-12, atol=1e-15)
    assert (gx[0, 1] == 0).all() and (gx[1, 3] == 0).all()
    assert gx[1, 0, 2, 4].item() == pytest.approx(g[1, 0].item(), rel=1e-12)


@IMPLS
def test_squeeze_excite_is_avg_pool_channel_attention(impl, fused_calls):
    x = _x(2, 32, 4, 4)
    se = ref.randomize_(SqueezeExcite(32).double())
    want = x.numpy() * ref.channel_gate(x.numpy(), se, ("avg",))
    got = _pin(se, impl, fused_calls)(x)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-10, atol=1e-12)
    assert _ran(impl, fused_calls)


@pytest.mark.parametrize("pooling", ["avgmax", "conv1x1"])
@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("kernel_size", [3, 7])
@pytest.mark.parametrize("training", [False, True])
def test_spatial_attention_matches_reference(pooling, norm, kernel_size, training):
    x = _x(2, 6, 9, 5)
    sa = ref.randomize_(
        SpatialAttention(6, kernel_size=kernel_size, pooling=pooling, norm=norm).double()
    )
    sa.train(training)
    want = x.numpy() * ref.spatial_gate(x.numpy(), sa, training=training)
    np.testing.assert_allclose(sa(x).detach().numpy(), want, rtol=1e-10, atol=1e-12)


@IMPLS
@pytest.mark.parametrize("arrangement", ["channel-spatial", "spatial-channel", "parallel"])
@pytest.mark.parametrize("spatial", [True, False])
@pytest.mark.parametrize("training", [False, True])
def test_cbam_matches_reference(arrangement, spatial, training, impl, fused_calls):
    x = _x(2, 32, 6, 8)
    m = ref.randomize_(CBAM(32, arrangement=arrangement, spatial=spatial).double())
    m.train(training)
    want = ref.cbam(x.numpy(), m, training=training)
    got = _pin(m, impl, fused_calls)(x)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-10, atol=1e-12)
    assert _ran(impl, fused_calls)


@IMPLS
@pytest.mark.parametrize("start", ["init", "random"])
def test_cbam_training_updates_spatial_running_stats_with_momentum_001(start, impl, fused_calls):
    # running = 0.99 * running + 0.01 * batch statistic of the spatial conv output s (over
    # N, H, W; the unbiased variance for running_var), s computed by the reference.
    m = CBAM(16).double().train()
    bn = m.spatial.bn
    mean0, var0 = 0.0, 1.0  # BatchNorm's initial running statistics
    if start == "random":  # random weights, running statistics away from 0 and 1
        ref.randomize_(m)
        mean0, var0 = bn.running_mean.item(), bn.running_var.item()
    x = _x(4, 16, 5, 5).numpy()
    s = ref.spatial_logits(x * ref.channel_gate(x, m.channel, ("avg", "max")), m.spatial)
    _pin(m, impl, fused_calls)(torch.from_numpy(x))
    assert _ran(impl, fused_calls)
    assert bn.running_mean.item() == pytest.approx(0.99 * mean0 + 0.01 * s.mean(), rel=1e-10)
    assert bn.running_var.item() == pytest.approx(0.99 * var0 + 0.01 * s.var(ddof=1), rel=1e-10)
    assert bn.num_batches_tracked.item() == 1


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("r,d", [(4, 4), (8, 2)])
def test_bam_matches_reference(r, d, training):
    x = _x(3, 32, 9, 9)
    m = ref.randomize_(BAM(32, reduction=r, dilation=d).double()).train(training)
    want = ref.bam(x.numpy(), m, r=r, d=d, training=training)
    np.testing.assert_allclose(m(x).detach().numpy(), want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("stride,groups,branches", [(1, 1, 2), (2, 4, 2), (1, 2, 3)])
def test_selective_kernel_matches_reference(stride, groups, branches, training):
    x = _x(3, 8, 7, 6)
    m = SelectiveKernel(8, 16, stride=stride, groups=groups, branches=branches, min_dim=4)
    m = ref.randomize_(m.double()).train(training)
    want = ref.selective_kernel(x.numpy(), m, training=training)
    np.testing.assert_allclose(m(x).detach().numpy(), want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("radix,groups,stride", [(2, 1, 1), (2, 2, 2), (4, 2, 1), (1, 2, 1)])
def test_split_attention_matches_reference(radix, groups, stride, training):
    x = _x(3, 16, 6, 5)
    m = SplitAttentionConv(16, 8, radix=radix, groups=groups, stride=stride, min_dim=4)
    m = ref.randomize_(m.double()).train(training)
    want = ref.split_attention(x.numpy(), m, training=training)
    np.testing.assert_allclose(m(x).detach().numpy(), want, rtol=1e-9, atol=1e-11)
