"""Spatial attention of CBAM, the "where" branch.

Paper: Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018,
https://arxiv.org/abs/1807.06521, Sec. 3, Eq. (3):
``Ms(F) = sigma(f^{7x7}([AvgPool_c(F); MaxPool_c(F)]))``.

Channel pooling: ``pooling="avgmax"`` stacks the max map first, then the mean map (the
authors' code's order, which their released weights depend on; the paper writes avg first).
``pooling="conv1x1"`` is the learned 1x1-convolution channel pooling of the paper's
Table 2 (C -> 1 map, with bias).

Normalisation: ``norm=True`` follows the authors' code: the k x k convolution has no bias
and is followed by ``BatchNorm2d(1, momentum=0.01)`` whose weight starts at 0, so every
spatial gate starts at sigmoid(0) = 0.5. ``norm=False`` is the paper's Eq. (3): a plain
convolution with bias and no BatchNorm.
"""

from __future__ import annotations

import torch
from torch import nn

from .._validate import check_choice, check_odd_kernel, check_positive
from ._checks import check_feature_map

__all__ = ["SPATIAL_POOLINGS", "SpatialAttention", "init_gates", "pool_channels"]

SPATIAL_POOLINGS = ("avgmax", "conv1x1")


def pool_channels(x: torch.Tensor) -> torch.Tensor:
    """[max over C; mean over C], (N, C, H, W) -> (N, 2, H, W), max first.

    The max is ``torch.max``'s, whose gradient goes to the first maximal channel (as in
    the fused kernels). ``amax`` would split it between ties by comparing the input with
    its maximum in backward; under ``torch.compile`` with bfloat16 autocast Inductor
    skips the bfloat16 rounding of ``x = F * Mc`` before the forward's reduction, so
    that comparison can find no maximum and the gradient becomes 0 / 0 = NaN."""
    top = x.max(dim=1, keepdim=True).values
    return torch.cat([top, x.mean(dim=1, keepdim=True)], dim=1)


class SpatialAttention(nn.Module):
    """CBAM spatial attention ``Ms``: reweights each position of an (N, C, H, W) map.

    Args:
        channels: C. Required for ``pooling="conv1x1"``; otherwise optional and, when
            given, checked against the input.
        kernel_size: k of the k x k convolution ``f^{kxk}`` (odd; the paper uses 7, and 3
            in its ablation).
        pooling: ``"avgmax"`` (the paper's choice) or ``"conv1x1"`` (Table 2 variant).
        norm: BatchNorm after the convolution (authors' code) or not (paper's equation).
    """

    def __init__(
        self,
        channels: int | None = None,
        *,
        kernel_size: int = 7,
        pooling: str = "avgmax",
        norm: bool = True,
    ) -> None:
        super().__init__()
        self.channels = None if channels is None else check_positive("channels", channels)
        self.kernel_size = check_odd_kernel(kernel_size)
        self.pooling = check_choice("spatial pooling", pooling, SPATIAL_POOLINGS)
        self.compress: nn.Conv2d | None = None
        if pooling == "conv1x1":
            if channels is None:
                raise ValueError("SpatialAttention(pooling='conv1x1') needs channels")
            self.compress = nn.Conv2d(channels, 1, kernel_size=1)
        in_maps = 2 if pooling == "avgmax" else 1
        self.conv = nn.Conv2d(in_maps, 1, kernel_size, padding=kernel_size // 2, bias=not norm)
        self.bn: nn.BatchNorm2d | None = None
        if norm:
            self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)
        self.reset_gate()

    def reset_gate(self) -> None:
        """The authors' start: a zero BatchNorm weight, so every gate is sigmoid(0) = 0.5."""
        if self.bn is not None:
            nn.init.zeros_(self.bn.weight)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Channel pooling, (N, C, H, W) -> (N, 2, H, W) or (N, 1, H, W)."""
        return pool_channels(x) if self.compress is None else self.compress(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid scores, (N, C, H, W) -> (N, 1, H, W)."""
        s = self.conv(self.pool(x))
        return s if self.bn is None else self.bn(s)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The attention map ``Ms(x)`` in [0, 1], (N, C, H, W) -> (N, 1, H, W)."""
        check_feature_map(x, self.channels, type(self).__name__)
        return self._gate(x)

    def _gate(self, x: torch.Tensor) -> torch.Tensor:  # x already checked
        return torch.sigmoid(self.logits(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)

    def extra_repr(self) -> str:
        return f"pooling={self.pooling!r}"


def init_gates(model: nn.Module) -> None:
    """Restore every spatial gate's own start in ``model`` (see
    :meth:`SpatialAttention.reset_gate`), after an initialisation of the whole model."""
    for m in model.modules():
        if isinstance(m, SpatialAttention):
            m.reset_gate()
