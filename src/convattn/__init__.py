"""convattn: attention-augmented CNNs (CBAM, SE, BAM, SK, ResNeSt), faithful and fast."""

from . import fused as fused  # registers the fused kernels with the layers
from ._version import __version__
from .layers import (
    BAM,
    CBAM,
    ChannelAttention,
    SelectiveKernel,
    SpatialAttention,
    SplitAttentionConv,
    SqueezeExcite,
    create_attention,
    get_attention,
)
from .models import (
    add_attention,
    create_model,
    list_models,
    load_checkpoint,
    profile,
)

__all__ = [
    "BAM",
    "CBAM",
    "ChannelAttention",
    "SelectiveKernel",
    "SpatialAttention",
    "SplitAttentionConv",
    "SqueezeExcite",
    "__version__",
    "add_attention",
    "create_attention",
    "create_model",
    "get_attention",
    "list_models",
    "load_checkpoint",
    "profile",
]
