"""convattn: attention-augmented CNNs (CBAM, SE, BAM, SK, ResNeSt), faithful and fast."""

from importlib.metadata import PackageNotFoundError, version

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

try:
    __version__ = version("convattn")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

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
