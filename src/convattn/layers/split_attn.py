"""Split attention convolution of ResNeSt.

Paper: Zhang et al., "ResNeSt: Split-Attention Networks", CVPRW 2022,
https://arxiv.org/abs/2004.08955, Sec. 3: inside each of the K cardinal groups the
features are split into R parts (one grouped convolution producing R * C channels); the
splits are summed, globally average-pooled, passed through FC -> BN -> ReLU (width
``max(in_channels * R / reduction_factor, 32)``, as the reference code) and an FC back to
R * C, and an r-softmax across the R splits of each cardinal group weighs the splits
(a sigmoid when R = 1).

The FCs are 1x1 convolutions with ``groups=K`` and biases, as in the reference code, so
its weights map onto this module one to one.

In training mode the attention's BatchNorm sees one value per sample, so it needs N > 1,
as every BatchNorm; evaluation mode takes any N. ``fc1``'s bias feeds that BatchNorm and
so does nothing; it is kept so reference weights load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from .._validate import check_odd_kernel, check_positive
from ._checks import check_feature_map

__all__ = ["SplitAttentionConv", "radix_softmax"]


def radix_softmax(a: torch.Tensor, radix: int, groups: int) -> torch.Tensor:
    """r-softmax: (N, R*C, 1, 1) logits laid out [group][radix][C/group] per cardinal
    group -> (N, R, C, 1, 1) weights laid out [radix][channel], softmax over R
    (sigmoid when R = 1)."""
    n = a.shape[0]
    if radix == 1:
        return torch.sigmoid(a).view(n, 1, -1, 1, 1)
    a = a.view(n, groups, radix, -1).transpose(1, 2)  # (N, R, K, C/K)
    return a.softmax(dim=1).reshape(n, radix, -1, 1, 1)


class SplitAttentionConv(nn.Module):
    """ResNeSt split-attention convolution (replaces a bottleneck's 3x3 conv).

    Args:
        in_channels: input channels.
        out_channels: C, output channels.
        kernel_size: kernel of the grouped convolution (odd).
        stride: its stride.
        groups: K, the cardinality.
        radix: R, splits per cardinal group (1 gives a sigmoid gate).
        reduction_factor: divides ``in_channels * R`` for the attention's hidden width.
        min_dim: minimum hidden width (32 in ResNeSt).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        radix: int = 2,
        reduction_factor: int = 4,
        min_dim: int = 32,
    ) -> None:
        super().__init__()
        for name, v in [("in_channels", in_channels), ("out_channels", out_channels)]:
            check_positive(name, v)
        for name, v in [("stride", stride), ("groups", groups), ("radix", radix)]:
            check_positive(name, v)
        check_odd_kernel(kernel_size)
        check_positive("reduction_factor", reduction_factor)
        if in_channels % (groups * radix) or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) must be divisible by groups * radix "
                f"({groups} * {radix}) and out_channels ({out_channels}) by groups ({groups})"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.radix, self.groups = radix, groups
        self.conv = nn.Conv2d(
            in_channels,
            out_channels * radix,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups * radix,
            bias=False,
        )
        self.bn0 = nn.BatchNorm2d(out_channels * radix)
        inter = max(in_channels * radix // reduction_factor, check_positive("min_dim", min_dim))
        self.fc1 = nn.Conv2d(out_channels, inter, 1, groups=groups)
        self.bn1 = nn.BatchNorm2d(inter)
        self.fc2 = nn.Conv2d(inter, out_channels * radix, 1, groups=groups)

    def attention(self, splits: list[torch.Tensor]) -> torch.Tensor:
        """Split weights, R x (N, C, H, W) -> (N, R, C, 1, 1)."""
        # mean(sum of splits) = sum of split means: no (N, C, H, W) temporary.
        gap = torch.stack([u.mean(dim=(2, 3), keepdim=True) for u in splits]).sum(0)  # (N, C, 1, 1)
        a = self.fc2(torch.relu(self.bn1(self.fc1(gap))))  # (N, R*C, 1, 1)
        return radix_softmax(a, self.radix, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.in_channels, "SplitAttentionConv")
        u = torch.relu(self.bn0(self.conv(x)))  # (N, R*C, H, W)
        splits = list(u.chunk(self.radix, dim=1))  # R x (N, C, H, W)
        a = self.attention(splits)
        out = splits[0] * a[:, 0]
        for r in range(1, self.radix):
            out = out.addcmul_(splits[r], a[:, r])  # in place: one output tensor in all
        return out
