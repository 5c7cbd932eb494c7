"""Properties every attention module must have: shapes, dtypes, memory formats, gates in
[0, 1], gradients, parameter counts by formula, NaN handling."""

from __future__ import annotations

import pytest
import torch

import reference as ref
from convattn.layers import (
    BAM,
    CBAM,
    ChannelAttention,
    SelectiveKernel,
    SpatialAttention,
    SplitAttentionConv,
    SqueezeExcite,
    radix_softmax,
)

C = 16
MODULES = {
    "channel": lambda: ChannelAttention(C, reduction=4, pool_types=("avg", "max", "lp", "lse")),
    "se": lambda: SqueezeExcite(C, reduction=4),
    "spatial": lambda: SpatialAttention(C),
    "spatial_conv1x1": lambda: SpatialAttention(C, pooling="conv1x1", kernel_size=3),
    "cbam": lambda: CBAM(C, reduction=4),
    "cbam_spatial_channel": lambda: CBAM(C, reduction=4, arrangement="spatial-channel"),
    "cbam_parallel": lambda: CBAM(C, reduction=4, arrangement="parallel", spatial_norm=False),
    "bam": lambda: BAM(C, reduction=4),
    "sk": lambda: SelectiveKernel(C, C, groups=2, min_dim=4),
    "split": lambda: SplitAttentionConv(C, C, radix=2, groups=2, min_dim=4),
}
names = pytest.mark.parametrize("name", list(MODULES))


def _x(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


@names
@pytest.mark.parametrize("n,h,w", [(1, 1, 1), (1, 5, 3), (3, 1, 7), (2, 8, 8)])
def test_output_shape_for_any_batch_and_map_size(name, n, h, w):
    m = MODULES[name]().eval()
    out = m(_x(n, C, h, w))
    assert out.shape == (n, C, h, w)
    assert torch.isfinite(out).all()


@names
def test_training_mode_works_for_small_maps_with_batch_two(name):
    m = MODULES[name]().train()
    assert m(_x(2, C, 1, 1)).shape == (2, C, 1, 1)


@names
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtypes_agree_with_float32(name, dtype):
    m = ref.randomize_(MODULES[name]()).eval()
    x = _x(2, C, 6, 5)
    want = m(x)
    got = m.to(dtype)(x.to(dtype))
    assert got.dtype == dtype
    tol = 1e-5 if dtype == torch.float64 else 0.1
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)


@names
def test_channels_last_in_gives_channels_last_out_and_same_values(name):
    m = ref.randomize_(MODULES[name]()).eval()
    x = _x(2, C, 6, 5)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out = m(x_cl)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, m(x), atol=1e-6, rtol=1e-5)


@names
def test_contiguous_in_gives_contiguous_out(name):
    m = MODULES[name]().eval()
    assert m(_x(2, C, 6, 5)).is_contiguous()


@names
def test_every_parameter_receives_a_nonzero_gradient(name):
    # Random weights and statistics, so BN weights initialised at 0 do not block the path.
    m = ref.randomize_(MODULES[name]().double()).eval()
    x = _x(2, C, 6, 5, dtype=torch.float64)
    (m(x) * _x(2, C, 6, 5, dtype=torch.float64, seed=3)).sum().backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@names
def test_gradcheck_float64(name):
    m = ref.randomize_(MODULES[name]().double()).eval()
    x = _x(2, C, 4, 3, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-5)


@names
def test_nan_in_gives_nan_out_without_error(name):
    m = MODULES[name]().eval()
    x = _x(2, C, 5, 5)
    x[0, 0, 2, 2] = float("nan")
    out = m(x)
    assert torch.isnan(out).any()


@pytest.mark.parametrize("cls", [ChannelAttention, SqueezeExcite])
def test_channel_gates_lie_in_unit_interval(cls):
    m = ref.randomize_(cls(C, reduction=4))
    g = m.gate(_x(4, C, 5, 5) * 10)
    assert g.shape == (4, C, 1, 1)
    assert (g >= 0).all() and (g <= 1).all()


def test_spatial_gate_lies_in_unit_interval_and_starts_at_one_half():
    sa = SpatialAttention(C)
    x = _x(4, C, 5, 5) * 10
    torch.testing.assert_close(sa.train().gate(x), torch.full((4, 1, 5, 5), 0.5))
    g = ref.randomize_(sa).gate(x)
    assert (g >= 0).all() and (g <= 1).all()


def test_bam_gate_lies_in_unit_interval_and_output_is_residual():
    m = ref.randomize_(BAM(C, reduction=4)).eval()
    x = _x(2, C, 6, 6)
    g = m.gate(x)
    assert g.shape == x.shape and (g >= 0).all() and (g <= 1).all()
    torch.testing.assert_close(m(x), x * (1 + g))


def test_selective_kernel_branch_weights_sum_to_one():
    m = ref.randomize_(SelectiveKernel(C, C, branches=3, min_dim=4)).eval()
    x = _x(2, C, 6, 6)
    a = m.attention([b(x) for b in m.branches])
    assert a.shape == (2, 3, C, 1, 1)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(2, C, 1, 1))


def test_split_attention_radix_weights_sum_to_one_per_cardinal_group():
    logits = _x(3, 2 * 4 * 6, 1, 1)  # radix 4, groups 2, 12 channels
    w = radix_softmax(logits, radix=4, groups=2)
    assert w.shape == (3, 4, 12, 1, 1)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(3, 12, 1, 1))


def test_radix_one_split_attention_is_a_sigmoid_gate():
    m = ref.randomize_(SplitAttentionConv(C, C, radix=1, groups=2, min_dim=4)).eval()
    x = _x(2, C, 6, 6)
    u = torch.relu(m.bn0(m.conv(x)))
    gate = torch.sigmoid(m.fc2(torch.relu(m.bn1(m.fc1(u.mean(dim=(2, 3), keepdim=True))))))
    torch.testing.assert_close(m(x), u * gate)


# ---- parameter counts by formula ------------------------------------------------------


@pytest.mark.parametrize("c", [64, 256, 2048])
def test_cbam_parameter_count(c):
    h = c // 16
    mlp = 2 * c * h + h + c  # W0, b0, W1, b1
    assert sum(p.numel() for p in CBAM(c).parameters()) == mlp + 98 + 2  # 7x7x2 conv, BN
    assert sum(p.numel() for p in CBAM(c, spatial_norm=False).parameters()) == mlp + 98 + 1
    assert sum(p.numel() for p in CBAM(c, kernel_size=3).parameters()) == mlp + 18 + 2
    conv1x1 = CBAM(c, spatial_pooling="conv1x1")
    assert sum(p.numel() for p in conv1x1.parameters()) == mlp + (c + 1) + 49 + 2
    assert sum(p.numel() for p in SqueezeExcite(c).parameters()) == mlp


def test_hidden_width_rounds_up_to_one_unit():
    # channels=8, reduction=16 would leave 8 // 16 = 0 hidden units: we keep one.
    m = ChannelAttention(8, reduction=16)
    assert m.fc1.out_features == 1
    assert sum(p.numel() for p in m.parameters()) == 8 * 1 + 1 + 1 * 8 + 8


def test_bam_parameter_count():
    c, h = 64, 4
    channel = c * h + h + h * c + 2 * c  # fc1 (bias), fc2 (no bias), BN1d
    spatial = c * h + 2 * h + 2 * (9 * h * h + 2 * h) + h + 2  # convs without bias, BNs
    assert sum(p.numel() for p in BAM(c).parameters()) == channel + spatial


def test_selective_kernel_parameter_count():
    cin, c, m_, g, d = 64, 128, 2, 32, 32  # d = max(128 // 16, 32)
    want = m_ * (9 * cin * c // g + 2 * c) + c * d + 2 * d + d * c * m_
    got = SelectiveKernel(cin, c, groups=g).parameters()
    assert sum(p.numel() for p in got) == want


def test_split_attention_parameter_count():
    cin, c, r, k = 64, 64, 2, 1
    inter = max(cin * r // 4, 32)
    want = c * r * (cin // (k * r)) * 9 + 2 * c * r  # grouped conv, bn0
    want += inter * (c // k) + inter + 2 * inter  # fc1 + bias, bn1
    want += c * r * (inter // k) + c * r  # fc2 + bias
    got = SplitAttentionConv(cin, c, radix=r, groups=k).parameters()
    assert sum(p.numel() for p in got) == want
