"""Attention modules: one idea per file, all sharing ``(channels, *, ...)`` signatures."""

from . import fused_cbam
from .bam import BAM
from .cbam import ARRANGEMENTS, CBAM
from .channel import POOL_TYPES, ChannelAttention
from .factory import (
    ATTENTIONS,
    AttnLayer,
    attention_names,
    create_attention,
    get_attention,
    set_impl,
)
from .fused_cbam import IMPLS
from .se import SqueezeExcite
from .selective_kernel import SelectiveKernel
from .spatial import SPATIAL_POOLINGS, SpatialAttention
from .split_attn import SplitAttentionConv, radix_softmax

__all__ = [
    "ARRANGEMENTS",
    "ATTENTIONS",
    "BAM",
    "CBAM",
    "IMPLS",
    "POOL_TYPES",
    "SPATIAL_POOLINGS",
    "AttnLayer",
    "ChannelAttention",
    "SelectiveKernel",
    "SpatialAttention",
    "SplitAttentionConv",
    "SqueezeExcite",
    "attention_names",
    "create_attention",
    "fused_cbam",
    "get_attention",
    "radix_softmax",
    "set_impl",
]
