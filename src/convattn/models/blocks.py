"""Residual blocks. Attention gates sit where the CBAM paper puts them (Fig. 3): on the
output of the block's last BatchNorm, before the residual addition and the final ReLU.

Paper: Woo et al., "CBAM", ECCV 2018, https://arxiv.org/abs/1807.06521, Sec. 3 and Fig. 3.
``BasicBlock`` and ``Bottleneck`` follow He et al., "Deep Residual Learning", CVPR 2016,
with the stride on the 3x3 convolution (torchvision's "v1.5", as the CBAM authors' code).
``Bottleneck`` with ``groups > 1`` is ResNeXt's block (Xie et al., CVPR 2017). The 3x3
convolution is swapped by :class:`SKBottleneck` (SKNet) and :class:`SplitBottleneck`
(ResNeSt). Module names match torchvision's, so its weights load directly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import SelectiveKernel, SplitAttentionConv, create_attention
from ..layers.factory import AttnLayer
from ..layers.fused_cbam import has_hooks

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "PadShortcut",
    "ResidualBlock",
    "SKBottleneck",
    "SplitBottleneck",
    "make_shortcut",
]


def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class PadShortcut(nn.Module):
    """He et al.'s CIFAR shortcut "option A": subsample by ``stride`` and zero-pad the new
    channels; no parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = out_channels - in_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))  # (N, C, h, w) -> (N, C + extra, h, w)


def make_shortcut(kind: str, cin: int, cout: int, stride: int) -> nn.Module | None:
    """The projection shortcut when shape changes: "conv" (1x1 strided conv + BN),
    "avg" (ResNet-D: average-pool, then 1x1 conv + BN) or "pad" (CIFAR option A)."""
    if stride == 1 and cin == cout:
        return None
    if kind == "conv":
        return nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
    if kind == "avg":
        pool: nn.Module = nn.Identity()
        if stride > 1:
            pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
        return nn.Sequential(pool, conv1x1(cin, cout), nn.BatchNorm2d(cout))
    if kind == "pad":
        return PadShortcut(cin, cout, stride)
    raise ValueError(f"unknown shortcut {kind!r}; valid: 'conv', 'avg', 'pad'")


def _attention(attn_layer: AttnLayer, channels: int, attn_kwargs: dict[str, Any] | None):
    return create_attention(attn_layer, channels, **(attn_kwargs or {})) or nn.Identity()


class ResidualBlock(nn.Module):
    """What :class:`BasicBlock` and :class:`Bottleneck` share: the constructor's signature,
    the attention on the output of the last BatchNorm, the shortcut, and the tail
    ``relu(attn(last_bn(out)) + shortcut)``. Subclasses build their layers in ``_build``
    and compute the last convolution's output in ``_body``.

    Attention modules with a ``forward_residual`` method (CBAM, channel attention, SE)
    compute the tail themselves, with their fused kernels folding the last BatchNorm, the
    addition and the ReLU into the attention's passes (see
    :mod:`convattn.layers.fused_cbam`); the modules and their state-dict keys are the same.
    """

    expansion = 1
    relu: nn.ReLU

    def __init__(
        self,
        inplanes: int,
        planes: int,
        *,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        attn_layer: AttnLayer = None,
        attn_kwargs: dict[str, Any] | None = None,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        self._build(inplanes, planes, stride, groups, base_width, stride_in_1x1)
        self.attn = _attention(attn_layer, planes * self.expansion, attn_kwargs)
        self.downsample = downsample

    def _build(
        self,
        inplanes: int,
        planes: int,
        stride: int,
        groups: int,
        base_width: int,
        stride_in_1x1: bool,
    ) -> None:
        raise NotImplementedError

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolution's output (before ``last_bn``)."""
        raise NotImplementedError

    @property
    def last_bn(self) -> nn.Module:
        raise NotImplementedError

    def _tail(self, out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """``relu(attn(last_bn(out)) + shortcut)``."""
        fused = getattr(self.attn, "forward_residual", None)
        if fused is not None and not has_hooks(self.relu):
            return fused(out, shortcut, norm=self.last_bn)
        return self.relu(self.attn(self.last_bn(out)) + shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self._tail(self._body(x), shortcut)


class BasicBlock(ResidualBlock):
    """Two 3x3 convolutions; attention on ``planes`` channels after ``bn2``."""

    expansion = 1

    def _build(
        self,
        inplanes: int,
        planes: int,
        stride: int,
        groups: int,
        base_width: int,
        stride_in_1x1: bool,
    ) -> None:
        if groups != 1 or base_width != 64 or stride_in_1x1:
            raise ValueError(
                "BasicBlock supports only groups=1, base_width=64 and stride_in_1x1=False"
            )
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)

    @property
    def last_bn(self) -> nn.Module:
        return self.bn2

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.bn1(self.conv1(x))))


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand; attention on ``4 * planes``
    channels after ``bn3``. Subclasses swap the 3x3 stage via ``_build_mid``/``_mid``.

    ``stride_in_1x1=True`` moves the stride to the first 1x1 convolution, the original
    (Caffe) ResNet layout: same parameters, fewer multiply-adds. The CBAM paper's GFLOPs
    for ResNet and ResNeXt are those of this layout, while the authors' code (and the
    default here) strides in the 3x3.
    """

    expansion = 4

    def _build(
        self,
        inplanes: int,
        planes: int,
        stride: int,
        groups: int,
        base_width: int,
        stride_in_1x1: bool,
    ) -> None:
        width = int(planes * base_width / 64) * groups
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(inplanes, width, s1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self._build_mid(width, s3, groups)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)

    def _build_mid(self, width: int, stride: int, groups: int) -> None:
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)

    def _mid(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn2(self.conv2(x)))

    @property
    def last_bn(self) -> nn.Module:
        return self.bn3

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self._mid(self.relu(self.bn1(self.conv1(x)))))


class SKBottleneck(Bottleneck):
    """SKNet bottleneck: the 3x3 convolution becomes a two-branch SelectiveKernel
    (Li et al., CVPR 2019; SKNet-50 uses ResNeXt-50 32x4d widths, groups 32, r = 16,
    L = 32)."""

    def _build_mid(self, width: int, stride: int, groups: int) -> None:
        self.sk = SelectiveKernel(width, width, stride=stride, groups=groups)

    def _mid(self, x: torch.Tensor) -> torch.Tensor:
        return self.sk(x)  # each branch has its own BN and ReLU


class SplitBottleneck(Bottleneck):
    """ResNeSt bottleneck: split-attention 3x3 (radix 2), with ResNeSt's "avd": when the
    block strides, the split-attention convolution runs at stride 1 and a 3x3 average pool
    (padding 1) after it applies the stride (Zhang et al., 2020, Sec. 5.1). Blocks at
    stride 1 have no pool, the first block of the network included (the reference code
    builds its first stage with ``is_first=False``)."""

    radix = 2

    def _build_mid(self, width: int, stride: int, groups: int) -> None:
        avd = stride > 1
        self.splat = SplitAttentionConv(
            width, width, stride=1 if avd else stride, groups=groups, radix=self.radix
        )
        self.avd = nn.AvgPool2d(3, stride, padding=1) if avd else nn.Identity()

    def _mid(self, x: torch.Tensor) -> torch.Tensor:
        return self.avd(self.splat(x))
