"""Selective Kernel convolution.

Paper: Li, Wang, Hu, Yang, "Selective Kernel Networks", CVPR 2019,
https://arxiv.org/abs/1903.06586, Sec. 3.1: split into M branches with different
receptive fields, fuse by summation, squeeze (global average pooling), a compact feature
``z = ReLU(BN(W s))`` of width ``d = max(C / r, L)``, one FC per branch, softmax across the
branches per channel, and the weighted sum ``V = sum_m a_m * U_m``.

As in the paper, the 5x5 branch is a 3x3 convolution with dilation 2 (branch m uses
dilation m + 1), every branch is conv-BN-ReLU, and the selection FCs have no bias. This
module replaces a bottleneck's 3x3 convolution (so it takes stride and groups) rather than
gating a block's output.

In training mode the BatchNorm of the compact feature sees one value per sample, so it
needs N > 1, as every BatchNorm; evaluation mode takes any N.
"""

from __future__ import annotations

import torch
from torch import nn

from .._validate import check_positive
from ._checks import check_feature_map

__all__ = ["SelectiveKernel"]


def _check_groups(in_channels: int, out_channels: int, groups: int) -> None:
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"in_channels ({in_channels}) and out_channels ({out_channels}) must be "
            f"divisible by groups ({groups})"
        )


class SelectiveKernel(nn.Module):
    """SK convolution: M dilated 3x3 branches mixed by a per-channel softmax attention.

    Args:
        in_channels: input channels.
        out_channels: C, output channels of every branch.
        stride: stride of the branch convolutions.
        branches: M, the number of branches (dilations 1..M).
        groups: G, groups of the branch convolutions (32 in SKNet-50).
        reduction: r, the reduction ratio of the compact feature.
        min_dim: L, the minimum width of the compact feature.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        branches: int = 2,
        groups: int = 1,
        reduction: int = 16,
        min_dim: int = 32,
    ) -> None:
        super().__init__()
        for name, v in [("in_channels", in_channels), ("out_channels", out_channels)]:
            check_positive(name, v)
        for name, v in [("stride", stride), ("branches", branches), ("groups", groups)]:
            check_positive(name, v)
        check_positive("reduction", reduction)
        _check_groups(in_channels, out_channels, groups)
        self.in_channels, self.out_channels, self.num_branches = in_channels, out_channels, branches
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(
                    in_channels,
                    out_channels,
                    3,
                    stride=stride,
                    padding=m + 1,
                    dilation=m + 1,
                    groups=groups,
                    bias=False,
                ),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            )
            for m in range(branches)
        )
        d = max(out_channels // reduction, check_positive("min_dim", min_dim))
        self.fc_reduce = nn.Conv2d(out_channels, d, 1, bias=False)
        self.bn = nn.BatchNorm2d(d)
        self.fc_select = nn.Conv2d(d, out_channels * branches, 1, bias=False)

    def attention(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Branch weights, M x (N, C, H, W) -> (N, M, C, 1, 1), summing to 1 over M."""
        # mean(sum of branches) = sum of branch means: no (N, C, H, W) temporary.
        s = torch.stack([f.mean(dim=(2, 3), keepdim=True) for f in feats]).sum(0)  # (N, C, 1, 1)
        z = torch.relu(self.bn(self.fc_reduce(s)))  # (N, d, 1, 1)
        a = self.fc_select(z)  # (N, M*C, 1, 1)
        return a.view(a.shape[0], self.num_branches, self.out_channels, 1, 1).softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.in_channels, "SelectiveKernel")
        feats = [branch(x) for branch in self.branches]
        a = self.attention(feats)
        out = feats[0] * a[:, 0]  # summing branch by branch keeps the memory format
        for m in range(1, self.num_branches):
            out = out.addcmul_(feats[m], a[:, m])  # in place: one output tensor in all
        return out
