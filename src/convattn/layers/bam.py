"""BAM: Bottleneck Attention Module.

Paper: Park, Woo, Lee, Kweon, "BAM: Bottleneck Attention Module", BMVC 2018,
https://arxiv.org/abs/1807.06514, Eq. (1)-(4):
``F' = F + F * sigma(Mc(F) + Ms(F))`` with
``Mc(F) = BN(MLP(AvgPool(F)))`` (MLP: C -> C/r -> C) and
``Ms(F) = BN(f3^{1x1}(f2^{3x3}(f1^{3x3}(f0^{1x1}(F)))))`` (dilated 3x3, d = 4).
Both maps are broadcast to C x H x W before the sum. BAM sits between stages, not in
every block.

Deviations and choices:
- The branches are summed, as in the paper; the authors' code multiplies them (and fails
  to construct on current PyTorch).
- Inside the spatial branch every convolution but the last is followed by BatchNorm and
  ReLU (the paper writes only the outer BN; the authors' code does this).
- Every layer that feeds a BatchNorm has no bias (the paper's ``b1`` and the spatial
  convolutions' biases): the BatchNorm subtracts the batch mean, so such a bias would
  receive no gradient and change nothing.
- The MLP's hidden layer uses ReLU, as the authors' code.
- The channel BatchNorm is on the MLP's output, as the paper's Eq. (2) writes it; the
  authors' code puts its channel BatchNorm on the hidden layer instead (Linear, BatchNorm1d
  over C/r, ReLU, Linear with bias) and has none on the output. Likewise its spatial
  branch ends with the 1x1 convolution (with bias) and no BatchNorm; we keep the paper's
  outer BatchNorm there too.
- Both BatchNorms run over the batch: in training mode an input with N = 1 and
  1 x 1 spatial size has a single value per channel and BatchNorm raises, as any
  BatchNorm does. Evaluation mode works for every N.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_positive
from ._checks import check_feature_map, hidden_channels

__all__ = ["BAM"]


class BAM(nn.Module):
    """Bottleneck attention: residual reweighting by a joint channel-spatial map.

    Args:
        channels: C, the number of input channels.
        reduction: r, the reduction ratio of both branches (hidden ``max(1, C // r)``).
        dilation: d, the dilation of the 3x3 convolutions of the spatial branch.
        num_dilated: number of dilated 3x3 convolutions (2 in the paper).
    """

    def __init__(
        self,
        channels: int,
        *,
        reduction: int = 16,
        dilation: int = 4,
        num_dilated: int = 2,
    ) -> None:
        super().__init__()
        self.channels = check_positive("channels", channels)
        check_positive("dilation", dilation)
        check_positive("num_dilated", num_dilated)
        hidden = hidden_channels(channels, reduction)
        # Channel branch: W0, ReLU, W1, BN.
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels, bias=False)  # BN follows
        self.channel_bn = nn.BatchNorm1d(channels)
        # Spatial branch: 1x1 reduce, dilated 3x3 convs, 1x1 to one map, BN.
        layers: list[nn.Module] = [
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
        ]
        for _ in range(num_dilated):
            layers += [
                nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.Conv2d(hidden, 1, 1, bias=False), nn.BatchNorm2d(1)]
        self.spatial = nn.Sequential(*layers)

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two maps before the sum: ``Mc(x)`` (N, C) and ``Ms(x)`` (N, 1, H, W)."""
        check_feature_map(x, self.channels, "BAM")
        mc = self.channel_bn(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))  # (N, C)
        return mc, self.spatial(x)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """``sigma(Mc(x) + Ms(x))``, (N, C, H, W) -> (N, C, H, W)."""
        mc, ms = self.branches(x)
        return torch.sigmoid(mc[:, :, None, None] + ms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + x * self.gate(x)
