"""The one place where attention names become module classes.

Shape-preserving gates (SE, CBAM, BAM, channel attention) plug into blocks by name;
SK and split attention replace a convolution and are block types in
:mod:`convattn.models`, so they are not listed here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeAlias

from torch import nn

from .._validate import check_choice
from ._accel import IMPLS
from .bam import BAM
from .cbam import CBAM
from .channel import ChannelAttention
from .se import SqueezeExcite
from .spatial import SpatialAttention

__all__ = [
    "ATTENTIONS",
    "AttnLayer",
    "attention_names",
    "create_attention",
    "get_attention",
    "set_impl",
]

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


def _check_options(factory: Callable[..., nn.Module], options: dict[str, Any]) -> None:
    """Unknown options of a class are an error naming the valid ones (before any build)."""
    if not options or not isinstance(factory, type):
        return
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"{factory.__name__} has no option {', '.join(map(repr, unknown))} "
            f"(valid: {', '.join(valid)})"
        )


def get_attention(attn: AttnLayer, **options: Any) -> Callable[..., nn.Module] | None:
    """Resolve ``attn`` to a module factory called as ``f(channels)`` (or ``None``).

    Args:
        attn: a name (case-insensitive; see :func:`attention_names`), ``None``/"none",
            or a class/callable.
        **options: keyword arguments bound to the factory (``functools.partial``), e.g.
            ``get_attention("cbam", kernel_size=3)``; a class's unknown option is an error.

    Raises:
        ValueError: for an unknown name or option, listing the valid ones.
        TypeError: for anything else.
    """
    if attn is None:
        factory = None
    elif isinstance(attn, str):
        key = attn.lower().replace("-", "_")
        key = _ALIASES.get(key, key)
        if key not in _NONE and key not in ATTENTIONS:
            raise ValueError(
                f"unknown attention {attn!r}; valid: {', '.join(attention_names())} or None"
            )
        factory = None if key in _NONE else ATTENTIONS[key]
    elif callable(attn):
        factory = attn
    else:
        raise TypeError(f"attention must be a name, a callable or None, got {type(attn).__name__}")
    if factory is None:
        if options:
            raise ValueError(f"attention options {sorted(options)} given without an attention")
        return None
    _check_options(factory, options)
    return functools.partial(factory, **options) if options else factory


def create_attention(attn: AttnLayer, channels: int, **options: Any) -> nn.Module | None:
    """Build the attention module ``attn`` for ``channels`` channels (``None`` if none).

    Keyword arguments go to the module's constructor, e.g.
    ``create_attention("cbam", 256, reduction=8, kernel_size=3)``.
    """
    factory = get_attention(attn, **options)
    return None if factory is None else factory(channels)


def set_impl(model: nn.Module, impl: str) -> int:
    """Set ``impl`` ("auto", "eager" or "fused") on every attention module of ``model``
    that has implementations (CBAM, channel attention, SE); return how many."""
    check_choice("impl", impl, IMPLS)
    mods = [m for m in model.modules() if isinstance(m, CBAM | ChannelAttention)]
    for m in mods:
        m.impl = impl
    return len(mods)
