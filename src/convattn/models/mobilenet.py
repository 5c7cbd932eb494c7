"""MobileNet v1 with optional attention after both convolutions of every block.

Paper: Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile
Vision Applications", 2017, https://arxiv.org/abs/1704.04861, Table 1 (a 3x3/2 stem and
13 depthwise-separable blocks) with width multiplier alpha.

Attention placement: the CBAM paper does not say where it puts CBAM in MobileNet; its
figures decide. The parameter counts (4.23 M -> 5.07 M with SE or CBAM at alpha = 1) need
two modules in each of the 13 blocks, one on the depthwise width and one on the pointwise
output width. Its GFLOPs (0.569 -> 0.576) then single out where the first one sits: on the
block's input, before the depthwise convolution (0.5759 GMACs; after the depthwise
convolution, at the strided resolution, it would be 0.5746). So each block is
``attn_in -> depthwise conv-BN-ReLU -> pointwise conv-BN -> attn_pw -> ReLU``, the second
module on the BatchNorm output before the ReLU as in the ResNet blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..layers import create_attention, get_attention
from ..layers.factory import AttnLayer
from ._base import Backbone, FeatureInfo, init_weights

__all__ = ["DepthwiseSeparable", "MobileNetV1"]

# (output channels, stride) of the 13 depthwise-separable blocks, Table 1 of the paper.
_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)]
_BLOCKS += [(512, 1)] * 5 + [(1024, 2), (1024, 1)]


class DepthwiseSeparable(nn.Module):
    """[attn] then 3x3 depthwise conv-BN-ReLU, then 1x1 pointwise conv-BN-[attn]-ReLU."""

    def __init__(
        self,
        cin: int,
        cout: int,
        *,
        stride: int = 1,
        attn_layer: AttnLayer = None,
    ) -> None:
        super().__init__()
        self.attn_in = create_attention(attn_layer, cin) or nn.Identity()
        self.conv_dw = nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False)
        self.bn_dw = nn.BatchNorm2d(cin)
        self.conv_pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(cout)
        self.attn_pw = create_attention(attn_layer, cout) or nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn_dw(self.conv_dw(self.attn_in(x))))
        return self.relu(self.attn_pw(self.bn_pw(self.conv_pw(x))))


class MobileNetV1(Backbone):
    """MobileNet v1; stages ``layer1..layer5`` end at strides 2, 4, 8, 16 and 32.

    Args:
        width_mult: alpha, multiplies every width (``int(c * alpha)``, as the paper).
        attn_layer: attention before every depthwise and after every pointwise conv (a
            name or a factory ``f(channels)``).
        num_classes, in_chans, drop_rate, features_only, out_indices: as
            :class:`~convattn.models.resnet.ResNet`.
    """

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        width_mult: float = 1.0,
        attn_layer: AttnLayer = None,
        drop_rate: float = 0.0,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        stem, attn = int(32 * width_mult), get_attention(attn_layer)
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
        )
        stages: list[list[nn.Module]] = [[]]
        cin, reduction, info = stem, 2, []
        for cout, stride in _BLOCKS:
            cout = int(cout * width_mult)
            if stride == 2:  # a stride closes the current stage
                info.append(FeatureInfo(f"layer{len(stages)}", cin, reduction))
                stages.append([])
                reduction *= 2
            block = DepthwiseSeparable(cin, cout, stride=stride, attn_layer=attn)
            stages[-1].append(block)
            cin = cout
        info.append(FeatureInfo(f"layer{len(stages)}", cin, reduction))
        for i, blocks in enumerate(stages):
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        init_weights(self)
        self._finish(
            info,
            num_classes=num_classes,
            drop_rate=drop_rate,
            features_only=features_only,
            out_indices=out_indices,
        )

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)
