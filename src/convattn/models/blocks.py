"""Residual blocks. Attention gates sit where the CBAM paper puts them (Fig. 3): on the
output of the block's last BatchNorm, before the residual addition and the final ReLU.

Paper: Woo et al., "CBAM", ECCV 2018, https://arxiv.org/abs/1807.06521, Sec. 3 and Fig. 3.
``BasicBlock`` and ``Bottleneck`` follow He et al., "Deep Residual Learning", CVPR 2016,
with the stride on the 3x3 convolution (torchvision's "v1.5", as the CBAM authors' code).
``Bottleneck`` with ``groups > 1`` is ResNeXt's block (Xie et al., CVPR 2017); its 3x3
stage (the "middle", :func:`make_middle`) is a plain convolution, a selective kernel
(SKNet) or a split-attention convolution (ResNeSt). Module names match torchvision's and
the reference implementations', so their weights load directly.

Every block ends with :func:`convattn.fused.residual_tail`, which is
``relu(attn(last_bn(out)) + shortcut)``, computed by the fused kernels where they apply.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..fused import residual_tail
from ..layers import SelectiveKernel, SplitAttentionConv

__all__ = [
    "MIDDLES",
    "BasicBlock",
    "Bottleneck",
    "PadShortcut",
    "make_middle",
    "make_shortcut",
]

#: The kinds of a bottleneck's 3x3 stage.
MIDDLES = ("conv", "sk", "splat")
AttnFactory = Callable[[int], nn.Module] | None


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


def make_middle(kind: str, width: int, stride: int, groups: int) -> dict[str, nn.Module]:
    """A bottleneck's 3x3 stage on ``width`` channels, as named modules applied in order.

    - "conv": ``conv2`` (3x3, grouped for ResNeXt), ``bn2``, ``act2`` (ReLU).
    - "sk": ``sk``, a two-branch SelectiveKernel (Li et al., CVPR 2019; each branch has its
      BN and ReLU; SKNet-50 uses groups 32, r = 16, L = 32).
    - "splat": ``splat``, ResNeSt's split attention (radix 2), then ``avd``: when the block
      strides, the split attention runs at stride 1 and a 3x3 average pool (padding 1)
      applies the stride (Zhang et al., 2020, Sec. 5.1); blocks at stride 1 have no pool,
      the network's first block included (the reference builds its first stage with
      ``is_first=False``).
    """
    if kind == "conv":
        conv = conv3x3(width, width, stride, groups)
        return {"conv2": conv, "bn2": nn.BatchNorm2d(width), "act2": nn.ReLU(inplace=True)}
    if kind == "sk":
        return {"sk": SelectiveKernel(width, width, stride=stride, groups=groups)}
    if kind == "splat":
        splat = SplitAttentionConv(width, width, stride=1, groups=groups, radix=2)
        avd = nn.AvgPool2d(3, stride, padding=1) if stride > 1 else nn.Identity()
        return {"splat": splat, "avd": avd}
    raise ValueError(f"unknown bottleneck middle {kind!r}; valid: {', '.join(MIDDLES)}")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; attention on ``planes`` channels after ``bn2``."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        *,
        stride: int = 1,
        downsample: nn.Module | None = None,
        attn_layer: AttnFactory = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.attn = nn.Identity() if attn_layer is None else attn_layer(planes)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        return residual_tail(out, shortcut, norm=self.bn2, attn=self.attn, relu=self.relu)


class Bottleneck(nn.Module):
    """1x1 reduce, the 3x3 middle (:func:`make_middle`), 1x1 expand; attention on
    ``4 * planes`` channels after ``bn3``.

    ``stride_in_1x1=True`` moves the stride to the first 1x1 convolution, the original
    (Caffe) ResNet layout: same parameters, fewer multiply-adds. The CBAM paper's GFLOPs
    for ResNet and ResNeXt are those of this layout, while the authors' code (and the
    default here) strides in the 3x3.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        *,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        stride_in_1x1: bool = False,
        middle: str = "conv",
        attn_layer: AttnFactory = None,
    ) -> None:
        super().__init__()
        width = int(planes * base_width / 64) * groups
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(inplanes, width, s1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        mods = make_middle(middle, width, s3, groups)
        for name, module in mods.items():
            self.add_module(name, module)
        self.middle = tuple(mods)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.attn = nn.Identity() if attn_layer is None else attn_layer(planes * self.expansion)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        for name in self.middle:  # conv2, bn2, act2 | sk | splat, avd
            out = self._modules[name](out)
        out = self.conv3(out)
        return residual_tail(out, shortcut, norm=self.bn3, attn=self.attn, relu=self.relu)
