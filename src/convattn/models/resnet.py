"""One ResNet class for every residual backbone of the CBAM paper and its family.

ResNet-18/34/50/101/152 (He et al., CVPR 2016), WideResNet-18 (every stage's width
multiplied, as the CBAM paper's WRN-18), ResNeXt (grouped 3x3, Xie et al., CVPR 2017),
SKNet-50 (``middle="sk"``), ResNeSt-50 (deep stem, average-pool shortcut,
``middle="splat"``; Zhang et al., 2020) and
the CIFAR ResNets (3x3 stem without max-pool; He et al.'s 6n+2 networks with the
parameter-free "option A" shortcut) differ only in constructor arguments.

Attention: ``attn_layer`` goes into every block (CBAM, SE: Woo et al., ECCV 2018,
Fig. 3); ``stage_attn_layer`` goes after every stage but the last (BAM: Park et al.,
BMVC 2018, Fig. 1), as the module ``layer<i>.attn`` (``layer<i>.bam`` in checkpoints of
earlier versions, renamed when they load). Each is a name or a factory ``f(channels)``
(e.g. ``functools.partial(CBAM, kernel_size=3)``; see :func:`convattn.layers.get_attention`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..layers import get_attention
from ..layers.factory import AttnLayer
from ._base import Backbone, FeatureInfo, init_weights
from .blocks import BasicBlock, Bottleneck, conv3x3, make_shortcut

__all__ = ["STEMS", "ResNet"]

STEMS = ("default", "deep", "cifar")


class ResNet(Backbone):
    """Residual network with pluggable block, stem, shortcut and attention.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: number of blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        num_classes: classifier outputs (ignored with ``features_only``).
        widths: ``planes`` of each stage before ``widen`` (block output is
            ``planes * block.expansion``).
        widen: multiplies every stage width (WideResNet-18 uses 1.5 or 2.0).
        stem: "default" (7x7/2 conv + 3x3/2 max-pool), "deep" (three 3x3 convs + max-pool)
            or "cifar" (one 3x3/1 conv, no pooling).
        stem_width: stem output channels ("deep": the first two convs have half of it).
        shortcut: projection shortcut "conv", "avg" (ResNet-D) or "pad" (CIFAR option A).
        groups, base_width: ResNeXt cardinality and width per group (bottlenecks).
        stride_in_1x1: stride in the bottleneck's first 1x1 conv (original ResNet layout,
            the one the CBAM paper's GFLOPs count) instead of the 3x3.
        middle: the bottleneck's 3x3 stage: "conv", "sk" (SKNet) or "splat" (ResNeSt).
        attn_layer: attention in every block (name, factory or None).
        stage_attn_layer: attention after every stage but the last (BAM).
        zero_init_last: zero the last BN of each block.
        attn_init: "authors" (the CBAM authors' initialisation of the attention layers,
            default), "pytorch" (PyTorch's defaults for them) or "authors-bn1" (the
            authors' with the spatial BatchNorm weight 1); see
            :func:`~convattn.models._base.init_weights`.
        drop_rate: dropout before the classifier.
        features_only, out_indices: return the outputs of these stages instead of logits.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        widths: Sequence[int] = (64, 128, 256, 512),
        widen: float = 1.0,
        stem: str = "default",
        stem_width: int = 64,
        shortcut: str = "conv",
        groups: int = 1,
        base_width: int = 64,
        stride_in_1x1: bool = False,
        middle: str = "conv",
        attn_layer: AttnLayer = None,
        stage_attn_layer: AttnLayer = None,
        zero_init_last: bool = False,
        attn_init: str = "authors",
        drop_rate: float = 0.0,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if len(layers) != len(widths) or not all(n >= 1 for n in layers):
            raise ValueError(f"layers {tuple(layers)} must give >= 1 block per stage {widths}")
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; valid: {', '.join(STEMS)}")
        make_block = _block_factory(
            block, groups, base_width, stride_in_1x1, middle, get_attention(attn_layer)
        )
        stage_attn = get_attention(stage_attn_layer)
        self._build_stem(stem, in_chans, stem_width)
        reduction = 1 if stem == "cifar" else 4
        inplanes, info = stem_width, []
        for i, (n, width) in enumerate(zip(layers, widths, strict=True)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            planes = round(width * widen)
            stage = _stage(make_block, block.expansion, inplanes, planes, n, stride, shortcut)
            inplanes = planes * block.expansion
            if i < len(layers) - 1 and stage_attn is not None:
                stage.add_module("attn", stage_attn(inplanes))
            setattr(self, f"layer{i + 1}", stage)
            info.append(FeatureInfo(f"layer{i + 1}", inplanes, reduction))
        init_weights(self, zero_init_last=zero_init_last, attn_init=attn_init)
        self._finish(
            info,
            num_classes=num_classes,
            drop_rate=drop_rate,
            features_only=features_only,
            out_indices=out_indices,
        )

    def _build_stem(self, stem: str, in_chans: int, width: int) -> None:
        if stem == "deep":
            half = width // 2
            self.conv1: nn.Module = nn.Sequential(
                conv3x3(in_chans, half, stride=2),
                nn.BatchNorm2d(half),
                nn.ReLU(inplace=True),
                conv3x3(half, half),
                nn.BatchNorm2d(half),
                nn.ReLU(inplace=True),
                conv3x3(half, width),
            )
        elif stem == "cifar":
            self.conv1 = conv3x3(in_chans, width)
        else:
            self.conv1 = nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if stem == "cifar" else nn.MaxPool2d(3, 2, padding=1)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


def _block_factory(
    block: type[BasicBlock | Bottleneck],
    groups: int,
    base_width: int,
    stride_in_1x1: bool,
    middle: str,
    attn: Callable[[int], nn.Module] | None,
) -> Callable[..., nn.Module]:
    """``block`` with the arguments every block of the network shares bound."""
    if block is BasicBlock:
        if (groups, base_width, stride_in_1x1, middle) != (1, 64, False, "conv"):
            raise ValueError(
                "BasicBlock networks take no groups, base_width, stride_in_1x1 or middle"
            )
        return functools.partial(BasicBlock, attn_layer=attn)
    if block is not Bottleneck:
        raise ValueError(f"block must be BasicBlock or Bottleneck, got {block!r}")
    return functools.partial(
        Bottleneck,
        groups=groups,
        base_width=base_width,
        stride_in_1x1=stride_in_1x1,
        middle=middle,
        attn_layer=attn,
    )


def _stage(
    make_block: Callable[..., nn.Module],
    expansion: int,
    inplanes: int,
    planes: int,
    n: int,
    stride: int,
    shortcut: str,
) -> nn.Sequential:
    """``n`` blocks named "0", "1", ...; the first strides and projects the shortcut."""
    blocks = nn.Sequential()
    for j in range(n):
        s = stride if j == 0 else 1
        down = make_shortcut(shortcut, inplanes, planes * expansion, s)
        blocks.add_module(str(j), make_block(inplanes, planes, stride=s, downsample=down))
        inplanes = planes * expansion
    return blocks
