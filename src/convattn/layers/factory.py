"""The one place where attention names become module classes.

Shape-preserving gates (SE, CBAM, BAM, channel attention) plug into blocks by name;
SK and split attention replace a convolution and are block types in
:mod:`convattn.models`, so they are not listed here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

from torch import nn

from .bam import BAM
from .cbam import CBAM
from .channel import ChannelAttention
from .se import SqueezeExcite
from .spatial import SpatialAttention

__all__ = ["ATTENTIONS", "AttnLayer", "attention_names", "create_attention", "get_attention"]

#: What blocks accept as ``attn_layer``: a registered name, a module class or factory
#: called as ``f(channels, **kwargs)``, or ``None`` for no attention.
AttnLayer: TypeAlias = str | Callable[..., nn.Module] | None

ATTENTIONS: dict[str, Callable[..., nn.Module]] = {
    "se": SqueezeExcite,
    "cbam": CBAM,
    "bam": BAM,
    "channel": ChannelAttention,
    "spatial": SpatialAttention,
}
_ALIASES = {
    "squeeze_excite": "se",
    "senet": "se",
    "cbam_channel": "channel",
    "channel_attention": "channel",
    "ca": "channel",
    "spatial_attention": "spatial",
    "sa": "spatial",
}
_NONE = ("", "none", "identity")


def attention_names() -> list[str]:
    """Every name :func:`get_attention` accepts, canonical names first."""
    return [*ATTENTIONS, *_ALIASES]


def get_attention(attn: AttnLayer) -> Callable[..., nn.Module] | None:
    """Resolve ``attn`` to a module factory (or ``None`` for no attention).

    Args:
        attn: a name (case-insensitive; see :func:`attention_names`), ``None``/"none",
            or a class/callable, which is returned unchanged.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
        TypeError: for anything else.
    """
    if attn is None:
        return None
    if isinstance(attn, str):
        key = attn.lower().replace("-", "_")
        if key in _NONE:
            return None
        key = _ALIASES.get(key, key)
        if key not in ATTENTIONS:
            raise ValueError(
                f"unknown attention {attn!r}; valid: {', '.join(attention_names())} or None"
            )
        return ATTENTIONS[key]
    if callable(attn):
        return attn
    raise TypeError(f"attention must be a name, a callable or None, got {type(attn).__name__}")


def create_attention(attn: AttnLayer, channels: int, **kwargs: Any) -> nn.Module | None:
    """Build the attention module ``attn`` for ``channels`` channels (``None`` if none).

    Keyword arguments go to the module's constructor, e.g.
    ``create_attention("cbam", 256, reduction=8, kernel_size=3)``.
    """
    factory = get_attention(attn)
    return None if factory is None else factory(channels, **kwargs)
