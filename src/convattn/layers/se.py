"""Squeeze-and-excitation.

Paper: Hu, Shen, Sun, "Squeeze-and-Excitation Networks", CVPR 2018,
https://arxiv.org/abs/1709.01507, Eq. (2)-(4): global average pooling, FC (C -> C/r), ReLU,
FC (C/r -> C), sigmoid, channel-wise scale.

SE is CBAM's channel attention with average pooling alone (the CBAM paper's Table 1 "avg"
row), so it is implemented as exactly that; the FC layers have biases as in SENet. The fused
CPU kernels (``impl``, see :class:`convattn.layers.CBAM`) run it in one read and one write
of the input forward (per sample: pool, then scale from cache) and three passes backward.
"""

from __future__ import annotations

from .channel import ChannelAttention

__all__ = ["SqueezeExcite"]


class SqueezeExcite(ChannelAttention):
    """Squeeze-and-excitation gate on an (N, C, H, W) map.

    Args:
        channels: C, the number of input channels.
        reduction: r, the reduction ratio (hidden width ``max(1, C // r)``).
        impl: "auto", "eager" or "fused" implementation of ``forward``.
    """

    def __init__(self, channels: int, *, reduction: int = 16, impl: str = "auto") -> None:
        super().__init__(channels, reduction=reduction, pool_types=("avg",), impl=impl)
