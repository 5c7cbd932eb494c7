"""CBAM: Convolutional Block Attention Module.

Paper: Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018,
https://arxiv.org/abs/1807.06521, Eq. (1): ``F' = Mc(F) * F``, ``F'' = Ms(F') * F'``.

All of the paper's ablation variants are arguments of the one module:
- Table 1 (channel pooling): ``pool_types``, ``spatial=False``.
- Table 2 (spatial branch): ``spatial_pooling`` ("avgmax" or "conv1x1"), ``kernel_size``.
- Table 3 (arrangement): ``arrangement`` is "channel-spatial" (the paper's, default),
  "spatial-channel" (``F' = Ms(F) * F``, ``F'' = Mc(F') * F'``) or "parallel". The paper
  does not say how the parallel maps are combined; here both are computed from the same
  input and multiplied onto it, ``F'' = Mc(F) * Ms(F) * F`` (each gate keeps its sigmoid).

Deviations from the paper's equations are those of the authors' code and are switchable:
``spatial_norm=True`` (BatchNorm in the spatial branch, gate starting at 0.5) and the
spatial pooling order max-then-mean; see :mod:`convattn.layers.spatial`. With
``spatial_norm=True`` the BatchNorm needs more than one value per batch in training mode
(N * H * W > 1), as every BatchNorm; evaluation mode and ``spatial_norm=False`` take any
input.

Implementations (``impl``): "eager" composes the branch modules' operations; "fused" runs
the fused kernels of :mod:`convattn.fused` (same math, fewer memory passes, only small
tensors saved for backward: C++ on CPU, Triton on CUDA) wherever they apply and the eager
path elsewhere (e.g. lp/lse pooling, conv1x1 spatial pooling, tracing and export); "auto"
(default) is "fused" where that is expected to be the faster of the two. The kernels plug
in at one hook point, :mod:`convattn.layers._accel`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .._validate import check_choice
from ._accel import IMPLS, accelerated
from ._checks import check_feature_map
from .channel import ChannelAttention
from .spatial import SpatialAttention

__all__ = ["ARRANGEMENTS", "CBAM"]

ARRANGEMENTS = ("channel-spatial", "spatial-channel", "parallel")


class CBAM(nn.Module):
    """Channel then spatial attention on an (N, C, H, W) map; output has the input's shape.

    Args:
        channels: C, the number of input channels.
        reduction: r of the channel MLP.
        pool_types: channel-attention pools (subset of avg, max, lp, lse).
        kernel_size: k of the spatial convolution (7 in the paper, 3 in its ablation).
        spatial: ``False`` keeps the channel attention only.
        arrangement: "channel-spatial", "spatial-channel" or "parallel".
        spatial_pooling: "avgmax" or "conv1x1".
        spatial_norm: BatchNorm in the spatial branch (authors' code) or not (paper).
        impl: "auto", "eager" or "fused" (see the module docstring).
    """

    def __init__(
        self,
        channels: int,
        *,
        reduction: int = 16,
        pool_types: Sequence[str] = ("avg", "max"),
        kernel_size: int = 7,
        spatial: bool = True,
        arrangement: str = "channel-spatial",
        spatial_pooling: str = "avgmax",
        spatial_norm: bool = True,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        self.impl = check_choice("impl", impl, IMPLS)
        self.arrangement = check_choice("arrangement", arrangement, ARRANGEMENTS)
        self.channels = channels
        self.channel = ChannelAttention(channels, reduction=reduction, pool_types=pool_types)
        self.spatial: SpatialAttention | None = None
        if spatial:
            self.spatial = SpatialAttention(
                channels, kernel_size=kernel_size, pooling=spatial_pooling, norm=spatial_norm
            )

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The two maps ``forward`` multiplies in, by the eager operations: the channel gate
        Mc (N, C, 1, 1) and the spatial gate Ms (N, 1, H, W) (``None`` without the spatial
        branch), each computed from the input it sees in this arrangement."""
        check_feature_map(x, self.channels, "CBAM")
        mc = self.channel._gate(x)
        if self.spatial is None:
            return mc, None
        if self.arrangement == "channel-spatial":
            return mc, self.spatial._gate(x * mc)
        if self.arrangement == "spatial-channel":
            ms = self.spatial._gate(x)
            return self.channel._gate(x * ms), ms
        return mc, self.spatial._gate(x)  # parallel: both from x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.channels, "CBAM")
        if self.impl != "eager" and (y := accelerated(self, x)) is not None:
            return y
        channel, spatial = self.channel._gate, None if self.spatial is None else self.spatial._gate
        if spatial is None:
            return x * channel(x)
        if self.arrangement == "channel-spatial":
            x = x * channel(x)
            return x * spatial(x)
        if self.arrangement == "spatial-channel":
            x = x * spatial(x)
            return x * channel(x)
        return x * channel(x) * spatial(x)  # parallel

    def extra_repr(self) -> str:
        return f"arrangement={self.arrangement!r}, impl={self.impl!r}"
