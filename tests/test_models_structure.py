"""The structure of ResNeSt-50 and SKNet-50, written from their papers and reference code.

Parameter counts cannot catch a mistake that adds no parameters (a pooling layer in the
wrong block, a stride in the wrong place), so these tests walk the built modules and
compare them with the architecture as published:

- ResNeSt-50 (Zhang et al., "ResNeSt: Split-Attention Networks", 2020, Sec. 4-5 and the
  reference implementation's ``resnest50``): radix 2, cardinality 1, bottleneck width 64;
  a deep stem of three 3x3 convolutions (3 -> 32 stride 2, 32 -> 32, 32 -> 64) and a 3x3
  max-pool; "avd": in a strided block the split-attention convolution runs at stride 1
  and a 3x3 average pool (stride 2, padding 1) after it applies the stride, and only
  strided blocks have it (the reference builds layer1 with ``is_first=False``);
  "avg_down" shortcuts: a 2x2 average pool (ceil mode, padding not counted) before a
  stride-1 1x1 convolution where the block strides.
- SKNet-50 (Li et al., "Selective Kernel Networks", CVPR 2019, Table 1): ResNeXt-50
  32x4d widths with every 3x3 convolution replaced by an SK unit of two branches (3x3,
  and 3x3 with dilation 2 for 5x5), groups 32, r = 16, L = 32; the standard 7x7 stem and
  1x1 strided projection shortcuts; the stride is on the SK branches.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convattn.layers import SelectiveKernel, SplitAttentionConv
from convattn.models import create_model

STAGES = (3, 4, 6, 3)
WIDTHS = (64, 128, 256, 512)  # bottleneck width of each stage (4x at the block output)


def _meta(name: str) -> nn.Module:
    with torch.device("meta"):
        return create_model(name)


def _blocks(model: nn.Module):
    for i, n in enumerate(STAGES):
        stage = getattr(model, f"layer{i + 1}")
        for j in range(n):
            yield i, j, stage[j]


def _avg_pools(module: nn.Module) -> list[nn.AvgPool2d]:
    return [m for m in module.modules() if isinstance(m, nn.AvgPool2d)]


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module if isinstance(m, nn.Conv2d)]


def test_resnest50_has_the_deep_stem():
    stem = create_model("resnest50").conv1
    shapes = [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in _convs(stem)]
    assert shapes == [(3, 32, (3, 3), (2, 2)), (32, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (1, 1))]
    model = _meta("resnest50")
    assert isinstance(model.maxpool, nn.MaxPool2d) and model.maxpool.stride == 2


def test_resnest50_average_pools_only_in_strided_blocks():
    model = _meta("resnest50")
    for i, j, block in _blocks(model):
        strided = i > 0 and j == 0
        body_pools = [
            p for p in _avg_pools(block) if p not in _avg_pools(block.downsample or nn.Identity())
        ]
        if strided:
            assert len(body_pools) == 1, f"layer{i + 1}.{j}"
            (pool,) = body_pools
            assert (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1), f"layer{i + 1}.{j}"
        else:
            assert body_pools == [], f"layer{i + 1}.{j} has {body_pools}"


def test_resnest50_split_attention_has_radix_2_cardinality_1_at_stride_1():
    model = _meta("resnest50")
    for i, _j, block in _blocks(model):
        splats = [m for m in block.modules() if isinstance(m, SplitAttentionConv)]
        assert len(splats) == 1
        (s,) = splats
        width = WIDTHS[i]
        assert (s.radix, s.groups) == (2, 1)
        assert (s.in_channels, s.out_channels) == (width, width)
        assert s.conv.stride == (1, 1) and s.conv.groups == 2  # cardinality * radix
        assert s.conv.out_channels == 2 * width
        assert s.fc1.out_channels == max(2 * width // 4, 32)


def test_resnest50_shortcuts_average_pool_before_a_stride_1_projection():
    model = _meta("resnest50")
    for i, j, block in _blocks(model):
        if j > 0:
            assert block.downsample is None
            continue
        pools = _avg_pools(block.downsample)
        convs = [m for m in block.downsample.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == 1 and convs[0].stride == (1, 1) and convs[0].kernel_size == (1, 1)
        assert convs[0].out_channels == 4 * WIDTHS[i]
        if i == 0:  # stride 1: nothing to pool
            assert pools == []
        else:
            (pool,) = pools
            assert (pool.kernel_size, pool.stride, pool.ceil_mode) == (2, 2, True)
            assert pool.count_include_pad is False


def test_skresnet50_selective_kernels_have_two_dilated_branches_and_groups_32():
    model = _meta("skresnet50")
    for i, j, block in _blocks(model):
        sks = [m for m in block.modules() if isinstance(m, SelectiveKernel)]
        assert len(sks) == 1
        (sk,) = sks
        width = 2 * WIDTHS[i]  # ResNeXt-50 32x4d: 128, 256, 512, 1024
        assert (sk.in_channels, sk.out_channels) == (width, width)
        convs = [b[0] for b in sk.branches]
        assert [c.dilation for c in convs] == [(1, 1), (2, 2)]
        assert all(c.kernel_size == (3, 3) and c.groups == 32 for c in convs)
        stride = 2 if i > 0 and j == 0 else 1
        assert all(c.stride == (stride, stride) for c in convs), f"layer{i + 1}.{j}"
        assert sk.fc_reduce.out_channels == max(width // 16, 32)


def test_skresnet50_has_the_plain_stem_and_projection_shortcuts_without_pooling():
    model = _meta("skresnet50")
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert _avg_pools(model) == []
    for i, j, block in _blocks(model):
        if j == 0:
            (conv,) = [m for m in block.downsample.modules() if isinstance(m, nn.Conv2d)]
            assert conv.stride == ((2, 2) if i > 0 else (1, 1))


@pytest.mark.parametrize("name", ["resnest50", "skresnet50"])
def test_stage_outputs_have_the_published_strides(name):
    model = create_model(name, features_only=True).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1:] for f in feats] == [
        (256, 16, 16),
        (512, 8, 8),
        (1024, 4, 4),
        (2048, 2, 2),
    ]


def test_initialisation_leaves_projection_shortcuts_at_pytorch_default_as_the_authors():
    # The authors' code re-initialises parameters whose name holds "conv" (Kaiming normal,
    # fan-out); "downsample.0.weight" does not, so it keeps PyTorch's default, uniform
    # within 1 / sqrt(fan_in). A Kaiming fan-out normal (std sqrt(2 / 256) = 0.088 here)
    # would exceed that bound (1 / 8) at about 16% of the 16,384 weights.
    torch.manual_seed(0)
    block = create_model("resnet50_cbam").layer1[0]
    shortcut = block.downsample[0].weight  # 64 -> 256, 1x1
    assert shortcut.abs().max().item() <= 1 / 8
    assert shortcut.std().item() == pytest.approx((1 / 8) / 3**0.5, rel=0.05)
    body = block.conv3.weight  # 64 -> 256, 1x1, Kaiming normal with fan-out 256
    assert body.std().item() == pytest.approx((2 / 256) ** 0.5, rel=0.05)
