"""Adding attention to models built elsewhere (torchvision, timm-style ResNets).

``add_attention(model, "cbam")`` finds every residual block (a module with ``conv1``,
``bn1``, ``conv2``, ``bn2`` and, for bottlenecks, ``conv3``/``bn3``) and replaces its last
BatchNorm by ``Sequential(bn, attention)``, which puts the attention exactly where the CBAM
paper does: after the last BN, before the residual addition. Pretrained weights keep their
keys (``layer1.0.bn3`` becomes ``layer1.0.bn3.0``) so load them *before* adding attention.

``placement="wrap"`` leaves every block untouched and wraps each stage (``layer1``...) as
``attention(in) -> stage -> attention(out)``, a common way to fine-tune a pretrained body.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..layers import create_attention
from ..layers.factory import AttnLayer

__all__ = ["add_attention", "wrap_with_attention"]


def _last_bn_name(block: nn.Module) -> str | None:
    names = dict(block.named_children())
    if all(n in names for n in ("conv1", "bn1", "conv2", "bn2")) and hasattr(block, "downsample"):
        last = "bn3" if "conv3" in names and "bn3" in names else "bn2"
        return last if isinstance(names[last], nn.BatchNorm2d) else None
    return None


def _stage_channels(stage: nn.Module) -> tuple[int, int]:
    convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)]
    if not convs or not bns:
        raise ValueError("cannot infer the channels of a stage without Conv2d and BatchNorm2d")
    return convs[0].in_channels, bns[-1].num_features


def wrap_with_attention(
    body: nn.Module, attn: AttnLayer, in_channels: int, out_channels: int, **kwargs: Any
) -> nn.Sequential:
    """``Sequential(attention(in_channels), body, attention(out_channels))``."""
    pre = create_attention(attn, in_channels, **kwargs)
    post = create_attention(attn, out_channels, **kwargs)
    if pre is None or post is None:
        raise ValueError("wrap_with_attention needs an attention, got None")
    return nn.Sequential(pre, body, post)


def add_attention(
    model: nn.Module, attn: AttnLayer, *, placement: str = "blocks", **kwargs: Any
) -> nn.Module:
    """Insert attention into a ResNet-like ``model`` in place and return it.

    Args:
        model: a torchvision or timm-style ResNet (or any model whose residual blocks
            have ``conv1/bn1/conv2/bn2[/conv3/bn3]`` and a ``downsample`` attribute).
        attn: attention name or class (see :func:`convattn.layers.get_attention`).
        placement: "blocks" (after every block's last BN) or "wrap" (around every stage
            named ``layer1``, ``layer2``, ...).
        **kwargs: attention arguments, e.g. ``reduction=16``.

    Raises:
        ValueError: when no residual block (or stage) is found.
    """
    if placement == "blocks":
        blocks = [m for m in model.modules() if _last_bn_name(m)]
        if not blocks:
            raise ValueError(f"no residual blocks found in {type(model).__name__}")
        for block in blocks:
            name = _last_bn_name(block)
            bn = getattr(block, name)
            setattr(
                block, name, nn.Sequential(bn, create_attention(attn, bn.num_features, **kwargs))
            )
        return model
    if placement == "wrap":
        stages = [n for n, _ in model.named_children() if n.startswith("layer")]
        if not stages:
            raise ValueError(f"no stages named layer1, layer2, ... in {type(model).__name__}")
        for name in stages:
            stage = getattr(model, name)
            setattr(
                model, name, wrap_with_attention(stage, attn, *_stage_channels(stage), **kwargs)
            )
        return model
    raise ValueError(f"unknown placement {placement!r}; valid: 'blocks', 'wrap'")
