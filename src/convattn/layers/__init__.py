"""Attention modules: one idea per file, all sharing ``(channels, *, ...)`` signatures."""

from ._accel import IMPLS, register_accelerated
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
from .se import SqueezeExcite
from .selective_kernel import SelectiveKernel
from .spatial import SPATIAL_POOLINGS, SpatialAttention, init_gates
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
    "get_attention",
    "init_gates",
    "radix_softmax",
    "register_accelerated",
    "set_impl",
]
