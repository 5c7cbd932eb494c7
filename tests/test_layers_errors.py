"""Bad arguments fail at construction and bad inputs at forward, with clear messages."""

from __future__ import annotations

import pytest
import torch

from convattn.layers import (
    BAM,
    CBAM,
    ChannelAttention,
    SelectiveKernel,
    SpatialAttention,
    SplitAttentionConv,
    SqueezeExcite,
    attention_names,
    create_attention,
    get_attention,
)


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: ChannelAttention(0), "channels must be >= 1"),
        (lambda: ChannelAttention(16, reduction=0), "reduction must be >= 1"),
        (lambda: ChannelAttention(16, pool_types=()), "non-empty"),
        (lambda: ChannelAttention(16, pool_types=("avg", "median")), "unknown pool type"),
        (lambda: ChannelAttention(16, pool_types=("avg", "avg")), "duplicates"),
        (lambda: SqueezeExcite(-4), "channels must be >= 1"),
        (lambda: SpatialAttention(kernel_size=4), "must be odd"),
        (lambda: SpatialAttention(kernel_size=0), "kernel_size must be >= 1"),
        (lambda: SpatialAttention(pooling="median"), "unknown spatial pooling"),
        (lambda: SpatialAttention(pooling="conv1x1"), "needs channels"),
        (lambda: CBAM(16, arrangement="sideways"), "unknown arrangement"),
        (lambda: CBAM(16, kernel_size=6), "must be odd"),
        (lambda: BAM(16, dilation=0), "dilation must be >= 1"),
        (lambda: SelectiveKernel(16, 24, groups=5), "divisible by groups"),
        (lambda: SelectiveKernel(16, 16, branches=0), "branches must be >= 1"),
        (lambda: SplitAttentionConv(16, 16, radix=0), "radix must be >= 1"),
        (lambda: SplitAttentionConv(18, 16, radix=4), "divisible by groups \\* radix"),
        (lambda: SplitAttentionConv(16, 16, kernel_size=2), "must be odd"),
    ],
)
def test_bad_arguments_raise_value_error_at_construction(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_non_integer_channels_raise_type_error():
    with pytest.raises(TypeError, match="channels must be an int"):
        CBAM(16.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "module",
    [
        ChannelAttention(16),
        SqueezeExcite(16),
        SpatialAttention(16),
        CBAM(16),
        BAM(16),
        SelectiveKernel(16, 16),
        SplitAttentionConv(16, 16),
    ],
    ids=lambda m: type(m).__name__,
)
def test_wrong_input_shapes_name_expected_and_received(module):
    with pytest.raises(ValueError, match=r"\(N, 16, H, W\).*\(16, 8, 8\)"):
        module(torch.randn(16, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, 16, H, W\).*\(2, 12, 8, 8\)"):
        module(torch.randn(2, 12, 8, 8))


def test_factory_resolves_names_aliases_classes_and_none():
    assert get_attention("cbam") is CBAM
    assert get_attention("CBAM") is CBAM
    assert get_attention("squeeze-excite") is SqueezeExcite
    assert get_attention(BAM) is BAM
    assert get_attention(None) is None and get_attention("none") is None
    m = create_attention("cbam", 32, reduction=8, kernel_size=3)
    assert isinstance(m, CBAM) and m.channel.fc1.out_features == 4
    assert m.spatial.conv.kernel_size == (3, 3)
    assert create_attention(None, 32) is None


def test_factory_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown attention 'cbma'") as err:
        get_attention("cbma")
    for name in ("se", "cbam", "bam"):
        assert name in str(err.value)
    assert set(attention_names()) >= {"se", "cbam", "bam", "channel"}


def test_factory_rejects_non_callables():
    with pytest.raises(TypeError):
        get_attention(3)  # type: ignore[arg-type]
