"""Channel attention of CBAM, the "what" branch.

Paper: Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018,
https://arxiv.org/abs/1807.06521, Sec. 3, Eq. (2):
``Mc(F) = sigma(MLP(AvgPool(F)) + MLP(MaxPool(F)))``.

The MLP (``W0``: C -> C/r, ReLU, ``W1``: C/r -> C) is shared by every pooled vector and
has biases, as in the authors' code (their ImageNet parameter counts include them).
Besides the paper's average and max pooling, the authors' code offers LP pooling
(power 2, ``sqrt(sum x^2)``, with gradient 0 on an all-zero channel as ``F.lp_pool2d``)
and log-sum-exp pooling; any non-empty subset may be summed.

Deviations: pooling uses plain reductions (``mean``/``max``/``logsumexp`` over H, W)
instead of adaptive pooling modules, so the module exports to ONNX and works under AMP with
channels_last. The max is ``torch.max``'s over the flattened positions, whose gradient goes
to the first maximal position, as ``max_pool2d``'s and the fused kernels'; ``amax``, which
splits it between ties by comparing, gives NaN gradients under ``torch.compile`` with
bfloat16 autocast (see :func:`convattn.layers.spatial.pool_channels`).

``impl`` chooses between these eager operations and the fused CPU kernels of
:mod:`convattn.fused` for ``forward`` (see :class:`convattn.layers.CBAM`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_choice, check_positive
from ._accel import IMPLS, accelerated
from ._checks import check_feature_map, hidden_channels

__all__ = ["POOL_TYPES", "ChannelAttention", "pool_hw"]

POOL_TYPES = ("avg", "max", "lp", "lse")


def pool_hw(x: torch.Tensor, pool_type: str) -> torch.Tensor:
    """Pool (N, C, H, W) over H and W to (N, C)."""
    if pool_type == "avg":
        return x.mean(dim=(2, 3))
    if pool_type == "max":  # torch.max, not amax: see spatial.pool_channels
        return x.flatten(2).max(dim=2).values
    if pool_type == "lp":  # LP pooling with p = 2 over the whole map, as F.lp_pool2d
        return _sqrt_zero_grad_at_zero(x.square().sum(dim=(2, 3)))
    if pool_type == "lse":
        return torch.logsumexp(x, dim=(2, 3))
    raise ValueError(f"unknown pool type {pool_type!r}; valid: {POOL_TYPES}")


def _sqrt_zero_grad_at_zero(s: torch.Tensor) -> torch.Tensor:
    """``sqrt(s)`` for ``s >= 0`` with gradient 0 where ``s == 0``, as ``F.lp_pool2d`` (an
    all-zero channel, common after a ReLU, would otherwise get ``0 * inf = nan``). Plain
    ``where`` operations, so tracing, export and ``torch.compile`` see ordinary ops."""
    positive = s > 0
    return torch.where(positive, torch.where(positive, s, 1.0).sqrt(), 0.0)


def _check_pool_types(pool_types: Sequence[str]) -> tuple[str, ...]:
    if isinstance(pool_types, str):
        pool_types = (pool_types,)
    pool_types = tuple(pool_types)
    if not pool_types:
        raise ValueError(f"pool_types must be a non-empty subset of {POOL_TYPES}")
    for p in pool_types:
        check_choice("pool type", p, POOL_TYPES)
    if len(set(pool_types)) != len(pool_types):
        raise ValueError(f"pool_types has duplicates: {pool_types}")
    return pool_types


class ChannelAttention(nn.Module):
    """CBAM channel attention ``Mc``: reweights each channel of an (N, C, H, W) map.

    Args:
        channels: C, the number of input channels.
        reduction: r, the MLP's reduction ratio (hidden width ``max(1, C // r)``).
        pool_types: pools summed after the shared MLP; a non-empty subset of
            ``("avg", "max", "lp", "lse")``. ``("avg",)`` is squeeze-and-excitation.
        impl: "auto", "eager" or "fused" implementation of ``forward``.
    """

    def __init__(
        self,
        channels: int,
        *,
        reduction: int = 16,
        pool_types: Sequence[str] = ("avg", "max"),
        impl: str = "auto",
    ) -> None:
        super().__init__()
        self.impl = check_choice("impl", impl, IMPLS)
        self.channels = check_positive("channels", channels)
        self.pool_types = _check_pool_types(pool_types)
        hidden = hidden_channels(channels, reduction)
        self.fc1 = nn.Linear(channels, hidden)  # W0 (with bias b0)
        self.fc2 = nn.Linear(hidden, channels)  # W1 (with bias b1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid channel scores, (N, C, H, W) -> (N, C)."""
        pooled = torch.stack([pool_hw(x, p) for p in self.pool_types])  # (P, N, C)
        return self.fc2(F.relu(self.fc1(pooled))).sum(dim=0)  # (N, C)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The attention map ``Mc(x)`` in [0, 1], (N, C, H, W) -> (N, C, 1, 1)."""
        check_feature_map(x, self.channels, type(self).__name__)
        return self._gate(x)

    def _gate(self, x: torch.Tensor) -> torch.Tensor:  # x already checked
        return torch.sigmoid(self.logits(x))[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.channels, type(self).__name__)
        if self.impl != "eager" and (y := accelerated(self, x)) is not None:
            return y
        return x * self._gate(x)

    def extra_repr(self) -> str:
        return f"pool_types={self.pool_types}, impl={self.impl!r}"
